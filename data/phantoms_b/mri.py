"""Family B brain MRI: T1, T1c, T2, FLAIR with a BraTS-style label map, drawn another way than
``data.phantoms.mri``.

Head, brain, ventricles and nuclei are randomly deformed star-shaped bodies rotated in 3D; the cortex is
a ribbon of the brain's signed distance, with sulci cut by a power-law noise field; tumours are smooth
unions of rough blobs (oedema with finger-like extensions), a ring-enhancing shell of the core and a
necrotic centre. Backgrounds differ: exactly zero with only the brain left (skull-stripped, as BraTS
data), exactly zero air around an unstripped head, or Rician noise everywhere. Each sequence has its own
intensity scale (T1 a few hundred, T2 up to ~4000), bias field and noise level.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data.phantoms.labels import MRI_LABELS, MRI_SEQUENCES
from data.phantoms_b.ct import ORIENTATIONS
from data.phantoms_b.shapes import GridB, StarBody, gaussian_random_field, largest_feret_mm, smooth_union
from data.study import Volume

__all__ = ["generate_mri_b", "BACKGROUNDS"]

BACKGROUNDS = ("skull-stripped", "zero air", "noisy")
_NEC, _EDEMA, _ENH = 1, 2, 3
_WM, _GM, _DGM, _CSF, _SKULL, _SCALP, _VENT = 10, 11, 12, 13, 14, 15, 16
_BRAIN = (_WM, _GM, _DGM)

# relative signal (T1, T1c, T2, FLAIR): ranges drawn per case
_SIGNAL = {
    _WM: ((0.80, 0.90), (0.80, 0.90), (0.30, 0.40), (0.40, 0.50)),
    _GM: ((0.55, 0.65), (0.57, 0.67), (0.50, 0.62), (0.55, 0.68)),
    _DGM: ((0.60, 0.70), (0.62, 0.72), (0.45, 0.55), (0.50, 0.60)),
    _CSF: ((0.10, 0.20), (0.10, 0.20), (0.90, 1.00), (0.05, 0.12)),
    _VENT: ((0.10, 0.20), (0.10, 0.20), (0.90, 1.00), (0.05, 0.12)),
    _SKULL: ((0.02, 0.06), (0.02, 0.06), (0.02, 0.06), (0.02, 0.06)),
    _SCALP: ((0.85, 1.00), (0.85, 1.00), (0.60, 0.80), (0.55, 0.75)),
    _NEC: ((0.15, 0.30), (0.18, 0.32), (0.85, 0.98), (0.35, 0.60)),
    _EDEMA: ((0.45, 0.55), (0.47, 0.57), (0.75, 0.90), (0.85, 1.00)),
    _ENH: ((0.45, 0.58), (0.95, 1.20), (0.60, 0.78), (0.65, 0.80)),
}
_SCALE = {"T1": (250.0, 1200.0), "T1c": (300.0, 2000.0), "T2": (600.0, 3600.0), "FLAIR": (150.0, 1500.0)}
_DESCRIPTION = {"T1": "AX T1 SE", "T1c": "AX T1 POST GD", "T2": "AX T2 TSE", "FLAIR": "AX T2 FLAIR"}


def generate_mri_b(seed: int) -> tuple[dict[str, Volume], np.ndarray, dict]:
    """One family B brain MRI: ``({sequence: Volume}, int16 label map, truth)`` with ``data.phantoms`` MRI truth keys."""
    rng = np.random.default_rng([seed, 0xB3A1])
    u = rng.uniform
    n = int(rng.choice([112, 128, 144]))
    fov = u(200.0, 260.0)
    thickness = float(rng.choice([2.0, 3.0, 4.0, 5.0]))
    k = int(np.clip(round(u(140.0, 190.0) / thickness), 28, 80))
    spacing = (round(fov / n, 3), round(fov / n, 3), thickness)
    signs = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    shape = (n, n, k)
    aff = np.diag([signs[0] * spacing[0], signs[1] * spacing[1], signs[2] * spacing[2], 1.0])
    aff[:3, 3] = np.array([u(-8, 8), u(-12, 12), u(0, 20)]) - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    grid = GridB(shape, aff)
    background = str(rng.choice(BACKGROUNDS))

    t = np.zeros(shape, dtype=np.uint8)
    brain_radii = _draw_head(t, grid, rng)
    present = bool(rng.random() < 0.7)
    tumour = _draw_tumour(t, grid, rng, brain_radii) if present else None

    labels = np.where(t <= 3, t, 0).astype(np.int16)
    counts = np.bincount(labels.ravel(), minlength=4)
    vml = grid.voxel_volume_ml
    whole = labels > 0
    truth = {
        "kind": "mri", "seed": int(seed), "shape": list(shape), "spacing_mm": [float(v) for v in spacing],
        "tumor_present": bool(whole.any()),
        "subregion_volumes_ml": {MRI_LABELS[v]: round(float(counts[v]) * vml, 3) for v in (1, 2, 3)},
        "whole_tumor_ml": round(float(whole.sum()) * vml, 3),
        "tumor_core_ml": round(float(counts[1] + counts[3]) * vml, 3),
        "enhancing": bool(counts[3] > 0), "necrosis": bool(counts[1] > 0),
        "hemisphere": None, "lobe": None, "centre_mm": None, "max_diameter_mm": 0.0,
    }
    if tumour is not None and whole.any():
        truth.update(tumour)
        truth["max_diameter_mm"] = round(largest_feret_mm(whole, grid.affine), 1)

    keep = np.isin(t, (*_BRAIN, _VENT, _NEC, _EDEMA, _ENH)) if background == "skull-stripped" else t > 0
    keep = ndimage.binary_closing(keep, iterations=2) & (t > 0) if background == "skull-stripped" else keep
    spacing_abs = tuple(abs(np.diag(aff)[:3]))
    bias = 1.0 + u(0.08, 0.25) * gaussian_random_field(shape, rng, beta=5.0, spacing=spacing_abs) / 2.5
    texture = gaussian_random_field(shape, rng, beta=2.0, spacing=spacing_abs)
    volumes: dict[str, Volume] = {}
    for q, seq in enumerate(MRI_SEQUENCES):
        lut = np.zeros(256, dtype=np.float32)
        for code, ranges in _SIGNAL.items():
            lut[code] = u(*ranges[q])
        img = ndimage.gaussian_filter(lut[t] * (1.0 + 0.03 * texture), sigma=u(0.3, 0.8)) * bias
        sigma = np.float32(u(0.01, 0.04))
        re = img + rng.standard_normal(shape, dtype=np.float32) * sigma
        im = rng.standard_normal(shape, dtype=np.float32) * sigma
        img = np.sqrt(re**2 + im**2)
        if background != "noisy":
            img = img * keep  # exactly zero outside what the scanner or the stripping kept
        arr = np.clip(np.rint(img * u(*_SCALE[seq])), 0, 4095).astype(np.int16)
        lo, hi = np.percentile(arr[arr > 0] if (arr > 0).any() else arr, [1.0, 99.5])
        volumes[seq] = Volume(
            array=arr, affine=grid.affine, modality="MR", body_part="BRAIN",
            window=(float((lo + hi) / 2), float(max(hi - lo, 1.0))), description=_DESCRIPTION[seq], sequence=seq,
            meta={"sequence": seq, "slice_thickness_mm": thickness, "field_strength_t": float(rng.choice([1.5, 3.0]))},
        )
    return volumes, labels, truth


def _draw_head(t: np.ndarray, grid: GridB, rng: np.random.Generator) -> np.ndarray:
    """Scalp, skull, CSF, cortex with sulci, white matter, nuclei, ventricles, falx; returns the brain's radii (mm)."""
    u = rng.uniform
    s = u(0.88, 1.1)
    head = StarBody.random(rng, (0, 0, 0), np.array([74.0, 94.0, 82.0]) * s * u(0.95, 1.05, 3), roughness=0.03, max_tilt_deg=8)
    d_head = head.sdf(grid)
    scalp, skull, csf = u(3.0, 7.0), u(4.0, 8.0), u(1.5, 4.0)
    t[d_head <= 0] = _SCALP
    t[d_head <= -scalp] = _SKULL
    t[d_head <= -(scalp + skull)] = _CSF
    brain_radii = head.radii_mm - (scalp + skull + csf)
    brain = StarBody(head.centre_mm, brain_radii, head.rotation, 0.03, head.freqs, head.phases)
    d_brain = brain.sdf(grid)
    folds = gaussian_random_field(grid.shape, rng, beta=1.5, spacing=tuple(abs(np.diag(grid.affine)[:3])))
    cortex = u(2.5, 4.0)
    t[(d_brain <= 0) & (t == _CSF)] = _GM
    t[(d_brain + 2.5 * folds <= -cortex) & (t == _GM)] = _WM
    t[(d_brain > -8.0) & (folds > u(0.9, 1.3)) & (t == _GM)] = _CSF  # sulci
    x, y, z = grid.axes_mm()
    rot = head.rotation
    mid = (rot[0, 0] * x + rot[1, 0] * y + rot[2, 0] * z)  # lateral coordinate in the head frame
    t[(np.abs(mid) < 1.5) & (z > 10.0) & np.isin(t, _BRAIN)] = _CSF  # falx
    for side in (-1.0, 1.0):
        nucleus = StarBody.random(rng, rot @ np.array([side * u(12, 18), u(-10, 0), u(0, 8)]), (u(8, 11), u(14, 20), u(9, 12)), roughness=0.1)
        box = nucleus.box(grid)
        if box is not None:
            v = t[box]
            v[(nucleus.sdf(grid, box) <= 0) & (v == _WM)] = _DGM
    vsize = u(0.7, 1.6)
    horns = [StarBody.random(rng, rot @ np.array([side * 8.0 * vsize**0.5, u(0, 10), u(10, 18)]), (5.0 * vsize, u(25, 35), 8.0 * vsize),
                             roughness=0.15) for side in (-1.0, 1.0)]
    vent = smooth_union(horns[0].sdf(grid), horns[1].sdf(grid), 3.0) <= 0
    t[vent & np.isin(t, _BRAIN)] = _VENT
    return brain_radii


def _draw_tumour(t: np.ndarray, grid: GridB, rng: np.random.Generator, brain: np.ndarray) -> dict:
    """Oedema (rough blobs in union), a ring-enhancing core and a necrotic centre in one hemisphere."""
    u = rng.uniform
    side = float(rng.choice([-1.0, 1.0]))
    for _ in range(50):
        c = np.array([side * u(15.0, 50.0), u(-60.0, 55.0), u(-15.0, 40.0)])
        if np.sum((c / brain) ** 2) < 0.5:
            break
    kind = str(rng.choice(["full", "no necrosis", "no enhancement"], p=[0.6, 0.25, 0.15]))
    r_ed = u(15.0, 35.0)
    blobs = [StarBody.random(rng, c, r_ed * u(0.75, 1.2, 3), roughness=0.3, max_tilt_deg=90, n_terms=7, max_freq=5.0)]
    for _ in range(int(rng.integers(1, 3))):
        off = rng.standard_normal(3)
        blobs.append(StarBody.random(rng, c + off / np.linalg.norm(off) * r_ed * u(0.5, 0.9), r_ed * u(0.35, 0.6, 3), roughness=0.3, max_tilt_deg=90))
    d_ed = blobs[0].sdf(grid)
    for b in blobs[1:]:
        d_ed = smooth_union(d_ed, b.sdf(grid), 6.0)
    t[(d_ed <= 0) & np.isin(t, _BRAIN)] = _EDEMA
    core = StarBody.random(rng, c + rng.normal(0, 2.0, 3), r_ed * u(0.35, 0.65) * u(0.8, 1.2, 3), roughness=0.15, max_tilt_deg=90)
    d_core = core.sdf(grid)
    in_tumour = np.isin(t, (_EDEMA, *_BRAIN))
    rim = u(2.5, 6.0)
    if kind == "full":
        t[(d_core <= 0) & in_tumour] = _ENH
        t[(d_core <= -rim) & (t == _ENH)] = _NEC
    elif kind == "no necrosis":
        t[(d_core <= 0) & in_tumour] = _ENH
    else:
        t[(d_core <= 0) & in_tumour] = _NEC
    x, y, zc = c
    lobe = "frontal" if y > 15.0 else ("occipital" if y < -40.0 else ("temporal" if zc < 0.0 else "parietal"))
    return {"hemisphere": "left" if side < 0 else "right", "lobe": lobe, "centre_mm": [round(float(v), 1) for v in c],
            "tumor_type": kind}

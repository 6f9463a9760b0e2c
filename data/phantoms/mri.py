"""Synthetic brain MRI: T1, T1c, T2 and FLAIR on one grid, with a BraTS-style tumour label map.

Head = scalp fat, skull, CSF, cortex (grey matter with sulci), white matter, deep grey nuclei, lateral
ventricles, a falx. Most cases carry a glioma-like tumour in one hemisphere: vasogenic oedema (bright on
T2 / FLAIR), an enhancing rim (bright on T1c) and a necrotic core (dark on T1, bright on T2); some
tumours have no necrosis or no enhancement, some cases have no tumour. Intensities get a smooth bias
field and Rician noise, stored as integers (0..~1500) as an MR scanner would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.phantoms.geometry import Grid, Superquadric, axial_affine, max_diameter_mm, paint
from data.phantoms.labels import MRI_LABELS, MRI_SEQUENCES
from data.study import Volume

__all__ = ["MRIOptions", "generate_mri"]

_NEC, _EDEMA, _ENH = 1, 2, 3
_WM, _GM, _DGM, _CSF, _SKULL, _SCALP = 10, 11, 12, 13, 14, 15
_BRAIN = (_WM, _GM, _DGM)

# Relative signal per tissue code for T1, T1c, T2, FLAIR.
_SIGNAL = {
    _WM: (0.75, 0.78, 0.35, 0.45), _GM: (0.55, 0.58, 0.55, 0.60), _DGM: (0.60, 0.62, 0.50, 0.55),
    _CSF: (0.15, 0.15, 1.00, 0.08), _SKULL: (0.04, 0.04, 0.04, 0.04), _SCALP: (0.95, 0.95, 0.70, 0.70),
    _NEC: (0.22, 0.24, 0.90, 0.45), _EDEMA: (0.50, 0.52, 0.82, 0.92), _ENH: (0.52, 1.05, 0.70, 0.72),
}


@dataclass
class MRIOptions:
    """What a brain MRI phantom may vary (``None`` = drawn from the seed).

    shape: (I, J, K); spacing: mm (in-plane x, y, slice), default 210–250 mm FOV and 150–200 mm coverage;
    tumor_rate: probability a tumour is present; noise: Rician noise sigma as a fraction of WM signal.
    """

    shape: tuple[int, int, int] = (128, 128, 64)
    spacing: tuple[float, float, float] | None = None
    tumor_rate: float = 0.8
    tumor: bool | None = None
    noise: float | None = None


def generate_mri(seed: int, options: MRIOptions | None = None) -> tuple[dict[str, Volume], np.ndarray, dict]:
    """One brain MRI phantom: ``({sequence: Volume}, label map int16, truth dict)``."""
    o = options or MRIOptions()
    rng = np.random.default_rng([seed, 0x3A1])
    u = rng.uniform
    shape = tuple(int(s) for s in o.shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"MRI shape must be (I, J, K) with every size >= 8, got {o.shape}.")
    if o.spacing is None:
        fov = u(210.0, 250.0)
        spacing = (round(fov / shape[0], 3), round(fov / shape[1], 3), round(u(150.0, 200.0) / shape[2], 2))
    else:
        spacing = tuple(float(s) for s in o.spacing)
    grid = Grid(shape, axial_affine(shape, spacing, (u(-5, 5), u(-8, 8), u(0, 15))))
    t = np.zeros(shape, dtype=np.uint8)
    s = u(0.9, 1.1)
    head = np.array([72.0, 92.0, 80.0]) * s * u(0.95, 1.05, 3)
    brain = head - np.array([10.0, 11.0, 10.0])
    ph = Superquadric.random_phases
    paint(t, grid, Superquadric((0, 0, 0), tuple(head), 2.0, 0, 0.02, ph(rng)), _SCALP)
    paint(t, grid, Superquadric((0, 0, 0), tuple(head - 4.0), 2.0, 0, 0.02, ph(rng)), _SKULL)
    paint(t, grid, Superquadric((0, 0, 0), tuple(brain + 3.0), 2.0, 0, 0.03, ph(rng)), _CSF)
    got = paint(t, grid, Superquadric((0, 0, 0), tuple(brain), 2.0, 0, 0.03, ph(rng)), _GM)
    paint(t, grid, Superquadric((0, 0, 0), tuple(brain - 4.0), 2.0, 0, 0.05, ph(rng)), _WM, only_in=(_GM,))
    _sulci_and_falx(t, grid, got, brain, rng)
    for side in (-1.0, 1.0):  # caudate / thalamus nuclei and lateral ventricles
        paint(t, grid, Superquadric((side * 14.0, -5.0, 5.0), (9.0, 18.0, 11.0), 2.0, side * 10, 0.1, ph(rng)), _DGM, only_in=(_WM,))
    vent = u(0.7, 1.6)
    for side in (-1.0, 1.0):
        paint(t, grid, Superquadric((side * 9.0 * vent**0.5, 5.0, 14.0), (5.5 * vent, 30.0, 9.0 * vent), 2.0, side * 8, 0.15, ph(rng)), _CSF, only_in=_BRAIN)

    present = o.tumor if o.tumor is not None else bool(rng.random() < o.tumor_rate)
    tumour = _draw_tumour(t, grid, rng, brain) if present else None

    labels = np.where(t <= 3, t, 0).astype(np.int16)
    counts = np.bincount(labels.ravel(), minlength=4)
    vml = grid.voxel_volume_ml
    sub = {MRI_LABELS[v]: round(float(counts[v]) * vml, 3) for v in (1, 2, 3)}
    whole = labels > 0
    truth = {
        "kind": "mri",
        "seed": int(seed),
        "shape": list(shape),
        "spacing_mm": [float(v) for v in spacing],
        "tumor_present": bool(whole.any()),
        "subregion_volumes_ml": sub,
        "whole_tumor_ml": round(float(whole.sum()) * vml, 3),
        "tumor_core_ml": round(float(counts[1] + counts[3]) * vml, 3),
        "enhancing": bool(counts[3] > 0),
        "necrosis": bool(counts[1] > 0),
        "hemisphere": None,
        "lobe": None,
        "centre_mm": None,
        "max_diameter_mm": 0.0,
    }
    if tumour is not None and whole.any():
        truth.update(tumour)
        truth["max_diameter_mm"] = round(max_diameter_mm(whole, grid.affine), 1)

    noise = float(o.noise) if o.noise is not None else float(u(0.012, 0.035))
    bias = _bias_field(shape, rng)
    volumes: dict[str, Volume] = {}
    for q, seq in enumerate(MRI_SEQUENCES):
        lut = np.zeros(256, dtype=np.float32)
        for code, sig in _SIGNAL.items():
            lut[code] = sig[q] * u(0.94, 1.06)
        img = ndimage.gaussian_filter(lut[t], sigma=0.5, truncate=2.5) * bias
        n1 = rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
        n2 = rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
        img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
        arr = np.clip(np.rint(img * 1000.0 * u(0.9, 1.1)), 0, 4095).astype(np.int16)
        lo, hi = np.percentile(arr[::2, ::2, ::2], [1.0, 99.5])
        volumes[seq] = Volume(
            array=arr, affine=grid.affine, modality="MR", body_part="BRAIN",
            window=(float((lo + hi) / 2), float(max(hi - lo, 1.0))),
            description=f"{seq} AX", sequence=seq,
            meta={"sequence": seq, "slice_thickness_mm": spacing[2], "field_strength_t": 1.5 if seed % 2 else 3.0},
        )
    return volumes, labels, truth


def _sulci_and_falx(t: np.ndarray, grid: Grid, got, brain: np.ndarray, rng: np.random.Generator) -> None:
    """CSF clefts in the outer cortex (a smooth 3D sinusoid pattern) and the interhemispheric fissure."""
    if got is None:
        return
    box, _ = got
    x, y, z = grid.coords(box)
    f = np.float32(rng.uniform(0.2, 0.3))
    a, b, c = (np.float32(v) for v in rng.uniform(0, 2 * np.pi, 3))
    pattern = np.sin(f * x + a) * np.sin(f * y + b) * np.sin(f * z + c)
    r = np.sqrt((x / brain[0]) ** 2 + (y / brain[1]) ** 2 + (z / brain[2]) ** 2)
    view = t[box]
    view[(pattern > 0.55) & (r > 0.82) & (view == _GM)] = _CSF
    falx = (np.abs(x) < 1.2 * abs(grid.step[0])) & (z > 15.0) & np.isin(view, _BRAIN)
    view[np.broadcast_to(falx, view.shape)] = _CSF


def _draw_tumour(t: np.ndarray, grid: Grid, rng: np.random.Generator, brain: np.ndarray) -> dict | None:
    """Oedema, enhancing rim and necrotic core around one centre in one hemisphere."""
    u = rng.uniform
    side = float(rng.choice([-1.0, 1.0]))
    for _ in range(50):
        c = np.array([side * u(18.0, 48.0), u(-65.0, 55.0), u(-20.0, 40.0)])
        if np.sum((c / brain) ** 2) < 0.55:
            break
    r_ed = u(14.0, 34.0)
    kind = rng.choice(["full", "no necrosis", "no enhancement"], p=[0.65, 0.2, 0.15])
    ph = Superquadric.random_phases
    paint(t, grid, Superquadric(tuple(c), tuple(r_ed * u(0.8, 1.2, 3)), 2.0, u(0, 180), 0.2, ph(rng)), _EDEMA, only_in=_BRAIN)
    r_e = r_ed * u(0.35, 0.7)
    if kind != "no enhancement":
        paint(t, grid, Superquadric(tuple(c), tuple(r_e * u(0.85, 1.15, 3)), 2.0, u(0, 180), 0.12, ph(rng)), _ENH, only_in=(_EDEMA,) + _BRAIN)
    if kind == "full":
        paint(t, grid, Superquadric(tuple(c), tuple(r_e * u(0.4, 0.7) * u(0.85, 1.15, 3)), 2.0, u(0, 180), 0.12, ph(rng)), _NEC, only_in=(_ENH,))
    elif kind == "no enhancement":  # non-enhancing tumour core: label it necrotic/non-enhancing as BraTS does
        paint(t, grid, Superquadric(tuple(c), tuple(r_e * u(0.85, 1.15, 3)), 2.0, u(0, 180), 0.12, ph(rng)), _NEC, only_in=(_EDEMA,))
    return {
        "hemisphere": "left" if side < 0 else "right",  # RAS: x < 0 is the patient's left
        "lobe": _lobe(c),
        "centre_mm": [round(float(v), 1) for v in c],
        "tumor_type": str(kind),
    }


def _lobe(c: np.ndarray) -> str:
    """Coarse lobe of a point (RAS mm, head centre at 0): frontal, parietal, temporal or occipital."""
    x, y, z = c
    if y > 15.0:
        return "frontal"
    if y < -40.0:
        return "occipital"
    if z < 0.0:
        return "temporal"
    return "parietal"


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative intensity inhomogeneity around 1 (±~15 %)."""
    coarse = 1.0 + 0.08 * rng.standard_normal((3, 3, 3)).astype(np.float32)
    return ndimage.zoom(coarse, [s / 3 for s in shape], order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1], : shape[2]]

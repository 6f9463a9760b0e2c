"""Synthetic abdominal / chest CT in Hounsfield units with an organ + lesion label map and ground truth.

Anatomy is drawn as deformed superquadrics in RAS millimetres around the diaphragm (z = 0 near the
dome): body wall (fat, muscle, ribs), lungs cut by the diaphragm domes, heart, descending aorta, spine,
liver, spleen, kidneys; then 0–3 of each lesion type (liver tumour, lung nodule, kidney cyst) inside its
organ. Contrast phase changes organ, vessel and lesion attenuation. Everything is vectorised numpy;
a default case (128×128×64) takes a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.phantoms.geometry import Grid, Superquadric, axial_affine, max_diameter_mm, paint
from data.phantoms.labels import CT_LABELS
from data.study import Volume

__all__ = ["CTOptions", "generate_ct", "PHASES", "BODY_REGIONS"]

PHASES = ("non-contrast", "arterial", "portal venous")
BODY_REGIONS = {"abdomen": -75.0, "chest": 75.0, "chest-abdomen": 0.0}  # FOV centre z (mm) per region

# Tissue codes beyond the label values 1..12 (never written to the label map).
_FAT, _MUSCLE, _VISCERAL, _RIB, _CANAL = 20, 21, 22, 23, 24
_LIVER, _SPLEEN, _LKID, _RKID, _LLUNG, _RLUNG, _HEART, _AORTA, _SPINE = range(1, 10)
_TUMOR, _NODULE, _CYST = 10, 11, 12

# Mean HU per tissue code for (non-contrast, arterial, portal venous).
_HU = {
    _LIVER: (58, 78, 112), _SPLEEN: (48, 128, 118), _LKID: (32, 175, 165), _RKID: (32, 175, 165),
    _LLUNG: (-860, -860, -860), _RLUNG: (-860, -860, -860), _HEART: (42, 250, 150), _AORTA: (42, 320, 172),
    _SPINE: (380, 380, 380), _FAT: (-100, -100, -100), _MUSCLE: (48, 55, 62), _VISCERAL: (22, 26, 30),
    _RIB: (620, 620, 620), _CANAL: (12, 12, 12),
}
# Liver tumour kinds: (non-contrast, arterial, portal venous) HU
_TUMOR_HU = {"hypovascular": (38, 52, 62), "hypervascular": (42, 150, 86)}
_LESION_ORGANS = {_TUMOR: (_LIVER,), _NODULE: (_LLUNG, _RLUNG), _CYST: (_LKID, _RKID)}
_LESION_RADIUS_MM = {_TUMOR: (6.0, 30.0), _NODULE: (3.5, 13.0), _CYST: (5.0, 16.0)}


@dataclass
class CTOptions:
    """What a CT phantom may vary. ``None`` means drawn at random from the seed.

    shape: (I, J, K) voxels; spacing_mm: (in-plane x, in-plane y, slice) — default draws a 340–420 mm
    field of view and 180–260 mm of coverage; phase: one of PHASES; body_region: a BODY_REGIONS key;
    lesion_rate: probability that each lesion type is present; max_lesions: most of one type;
    noise_hu: Gaussian noise standard deviation (HU); blur: partial-volume smoothing of edges.
    """

    shape: tuple[int, int, int] = (128, 128, 64)
    spacing: tuple[float, float, float] | None = None
    phase: str | None = None
    body_region: str | None = None
    lesion_rate: float = 0.5
    max_lesions: int = 3
    noise_hu: float | None = None
    blur: bool = True


def generate_ct(seed: int, options: CTOptions | None = None) -> tuple[Volume, np.ndarray, dict]:
    """One CT phantom: ``(volume in HU as int16, label map int16 on the same grid, truth dict)``."""
    o = options or CTOptions()
    rng = np.random.default_rng([seed, 0xC7])
    shape = tuple(int(s) for s in o.shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"CT shape must be (I, J, K) with every size >= 8, got {o.shape}.")
    if not 0 <= o.max_lesions <= 6 or not 0.0 <= o.lesion_rate <= 1.0:
        raise ValueError(f"max_lesions must be 0..6 and lesion_rate 0..1, got {o.max_lesions} and {o.lesion_rate}.")
    phase = o.phase or str(rng.choice(PHASES))
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}.")
    region = o.body_region or str(rng.choice(list(BODY_REGIONS)))
    if region not in BODY_REGIONS:
        raise ValueError(f"body_region must be one of {tuple(BODY_REGIONS)}, got {region!r}.")
    if o.spacing is None:
        fov = rng.uniform(340.0, 420.0)
        spacing = (round(fov / shape[0], 3), round(fov / shape[1], 3), round(rng.uniform(180.0, 260.0) / shape[2], 2))
    else:
        spacing = tuple(float(s) for s in o.spacing)
    centre_z = BODY_REGIONS[region] + rng.uniform(-15.0, 15.0)
    grid = Grid(shape, axial_affine(shape, spacing, (0.0, rng.uniform(-10, 10), centre_z)))

    tissue = np.zeros(shape, dtype=np.uint8)
    _draw_anatomy(tissue, grid, rng)
    lesions = _draw_lesions(tissue, grid, rng, o)

    p = PHASES.index(phase)
    lut = np.zeros(256, dtype=np.float32)
    lut[0] = -1000.0
    for code, hus in _HU.items():
        lut[code] = hus[p] + rng.uniform(-0.08, 0.08) * max(abs(hus[p]), 30)
    hu = lut[tissue]
    _add_texture(hu, tissue, rng)
    for les in lesions:
        box, mask = les.pop("_where")
        les["hu"] = round(les["hu"][p], 1)
        hu[box][mask] = les["hu"]
    if o.blur:
        hu = ndimage.gaussian_filter(hu, sigma=(0.6, 0.6, 0.4), mode="nearest", truncate=2.5)
    noise = float(o.noise_hu) if o.noise_hu is not None else float(rng.uniform(6.0, 22.0))
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
    array = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    labels = np.where(tissue <= 12, tissue, 0).astype(np.int16)
    counts = np.bincount(labels.ravel(), minlength=13)
    vml = grid.voxel_volume_ml
    thickness = spacing[2]
    region_word = {"abdomen": "ABD", "chest": "CHEST", "chest-abdomen": "CHEST-ABD"}[region]
    volume = Volume(
        array=array,
        affine=grid.affine,
        modality="CT",
        body_part={"abdomen": "ABDOMEN", "chest": "CHEST", "chest-abdomen": "CHEST"}[region],
        window=(40.0, 400.0) if region != "chest" else (-600.0, 1500.0),
        description=f"CT {region_word} {phase.upper()} {thickness:g}mm",
        meta={"phase": phase, "body_region": region, "slice_thickness_mm": thickness, "kvp": 120.0},
    )
    truth = {
        "kind": "ct",
        "seed": int(seed),
        "phase": phase,
        "body_region": region,
        "shape": list(shape),
        "spacing_mm": [float(s) for s in spacing],
        "noise_hu": round(noise, 2),
        "organ_volumes_ml": {CT_LABELS[v]: round(float(counts[v]) * vml, 3) for v in range(1, 10)},
        "organs_present": [CT_LABELS[v] for v in range(1, 10) if counts[v] > 0],
        "lesions": lesions,
        "lesion_counts": {CT_LABELS[c]: sum(1 for les in lesions if les["label"] == c) for c in (_TUMOR, _NODULE, _CYST)},
        "lesion_volumes_ml": {CT_LABELS[c]: round(float(counts[c]) * vml, 3) for c in (_TUMOR, _NODULE, _CYST)},
        "mean_hu": {"aorta": round(float(lut[_AORTA]), 1), "liver": round(float(lut[_LIVER]), 1)},  # before texture and noise
    }
    return volume, labels, truth


def _draw_anatomy(t: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Paint body wall and organs into the tissue map (codes above)."""
    u = rng.uniform
    s = u(0.85, 1.15)
    a, b = 160.0 * s * u(0.9, 1.1), 115.0 * s * u(0.9, 1.1)  # body semi-axes, lateral and AP (mm)
    fat = u(8.0, 35.0) * s
    ai, bi = a - fat - 14.0, b - fat - 14.0  # body cavity semi-axes
    full = (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    x, y, z = grid.coords(full)

    # Body wall: fat outside the muscle ring outside the cavity, constant along z (broadcast 2D masks).
    e_cav = (x / ai) ** 2 + (y / bi) ** 2
    t[((x / a) ** 2 + (y / b) ** 2)[..., 0] <= 1] = _FAT
    t[((x / (ai + 14)) ** 2 + (y / (bi + 14)) ** 2)[..., 0] <= 1] = _MUSCLE
    t[(e_cav[..., 0] <= 1)] = _VISCERAL

    # Ribs: bands along z inside the muscle ring, above the costal margin, not at the sternum.
    zr = u(5.0, 25.0)  # right dome top (mm); the left dome sits lower
    zl = zr - u(0.0, 18.0)
    ring = (e_cav > 1.0) & ((x / (ai + 9)) ** 2 + (y / (bi + 9)) ** 2 <= 1.0) & (np.abs(x) > 0.22 * ai)
    period, phase0 = u(26.0, 32.0), u(0.0, 30.0)
    # ribs run obliquely (lower in front), so one axial slice cuts several short arcs
    band = (np.mod(z - phase0 + 35.0 * (y / bi), period) < 0.3 * period) & (z + 35.0 * (y / bi) > zr - 110.0)
    t[ring & band] = _RIB

    # Lungs above the domes (domes fall 45 mm from their top towards the costophrenic recesses).
    def dome(zt, xc):
        return zt - 45.0 * np.minimum(((x - xc) / (0.55 * ai)) ** 2 + (y / (0.9 * bi)) ** 2, 1.6)

    for code, side, ztop in ((_RLUNG, 1.0, zr), (_LLUNG, -1.0, zl)):
        shape = Superquadric((side * 0.5 * ai, -0.05 * bi, ztop + 70.0), (0.43 * ai, 0.86 * bi, 125.0), 2.6, 0.0, 0.04, Superquadric.random_phases(rng))
        got = paint(t, grid, shape, code, only_in=(_VISCERAL,))
        if got is not None:
            box, m = got
            below = z[..., box[2]] < dome(ztop, side * 0.5 * ai)[box[0], box[1]]
            view = t[box]
            view[m & below] = _VISCERAL
    heart_c = (-0.15 * ai * u(0.8, 1.2), 0.32 * bi, zr + u(45.0, 65.0))
    heart = Superquadric(heart_c, (0.36 * ai * u(0.85, 1.25), 0.42 * bi * u(0.85, 1.15), 55.0 * u(0.9, 1.15)), 2.0, u(15, 35), 0.06, Superquadric.random_phases(rng))
    paint(t, grid, heart, _HEART, only_in=(_VISCERAL, _LLUNG, _RLUNG))

    y_spine = -bi + 22.0 * s
    r_aorta = u(10.0, 15.0)
    paint(t, grid, Superquadric((-0.12 * ai, y_spine + 22.0 * s + r_aorta, 0.0), (r_aorta, r_aorta, 600.0)), _AORTA, only_in=(_VISCERAL, _LLUNG, _RLUNG))
    r_vb = 17.0 * s
    vb = ((x / r_vb) ** 2 + ((y - y_spine) / r_vb) ** 2 <= 1.0)
    post = ((x / (r_vb * 0.9)) ** 2 + ((y - y_spine + 1.9 * r_vb) / (r_vb * 0.9)) ** 2 <= 1.0)
    canal = ((x / (0.45 * r_vb)) ** 2 + ((y - y_spine + 1.6 * r_vb) / (0.45 * r_vb)) ** 2 <= 1.0)
    disc = np.mod(z - u(0.0, 30.0), 30.0) < 6.0
    t[np.broadcast_to((vb & ~disc) | post, t.shape)] = _SPINE
    t[np.broadcast_to(canal, t.shape)] = _CANAL

    liver = Superquadric((0.42 * ai, 0.08 * bi, zr - 70.0 * u(0.9, 1.1)), (0.55 * ai * u(0.9, 1.1), 0.8 * bi * u(0.9, 1.1), 80.0 * u(0.85, 1.15)), 2.3, u(-12, 12), 0.08, Superquadric.random_phases(rng))
    paint(t, grid, liver, _LIVER, only_in=(_VISCERAL,))
    spleen = Superquadric((-0.62 * ai, -0.35 * bi, zl - u(35, 55)), (0.2 * ai * u(0.8, 1.3), 0.3 * bi * u(0.8, 1.2), 50.0 * u(0.8, 1.3)), 2.0, u(-40, -20), 0.08, Superquadric.random_phases(rng))
    paint(t, grid, spleen, _SPLEEN, only_in=(_VISCERAL,))
    for code, side, zt, yaw in ((_LKID, -1.0, zl - u(95, 120), 25.0), (_RKID, 1.0, zr - u(110, 135), -25.0)):
        kid = Superquadric((side * 0.52 * ai, y_spine + 22.0, zt), (28.0 * s * u(0.85, 1.15), 22.0 * s * u(0.85, 1.15), 52.0 * s * u(0.85, 1.15)), 2.0, yaw + u(-8, 8), 0.05, Superquadric.random_phases(rng))
        paint(t, grid, kid, code, only_in=(_VISCERAL, _LIVER, _SPLEEN))


def _draw_lesions(t: np.ndarray, grid: Grid, rng: np.random.Generator, o: CTOptions) -> list[dict]:
    """Place 0..max_lesions of each lesion type inside its organ, never touching each other."""
    lesions: list[dict] = []
    placed: list[tuple[np.ndarray, float]] = []  # (centre mm, reach mm)
    tumor_kind = str(rng.choice(list(_TUMOR_HU)))
    for code in (_TUMOR, _NODULE, _CYST):
        n = 0
        if rng.random() < o.lesion_rate and o.max_lesions > 0:
            n = int(rng.choice(np.arange(1, o.max_lesions + 1), p=_count_weights(o.max_lesions)))
        for _ in range(n):
            organs = _LESION_ORGANS[code]
            r = rng.uniform(*_LESION_RADIUS_MM[code])
            spot = _find_spot(t, grid, rng, organs, r, placed)
            if spot is None:
                continue
            centre, organ = spot
            shape = Superquadric(tuple(centre), tuple(r * rng.uniform(0.8, 1.2, 3)), 2.0, rng.uniform(0, 180), 0.1, Superquadric.random_phases(rng))
            got = paint(t, grid, shape, code, only_in=(organ,))
            if got is None:
                continue
            box, mask = got
            if mask.sum() < 4:  # too small to see: give the voxels back to the organ
                t[box][mask] = organ
                continue
            placed.append((centre, 1.35 * r))
            aff = grid.affine.copy()
            aff[:3, 3] = grid.affine[:3, :3] @ np.array([b.start for b in box]) + grid.affine[:3, 3]
            idx = np.argwhere(mask).mean(0) + [b.start for b in box]
            centre_mm = grid.affine[:3, :3] @ idx + grid.affine[:3, 3]
            lesions.append({
                "type": CT_LABELS[code],
                "label": code,
                "organ": CT_LABELS[organ],
                "centre_mm": [round(float(v), 1) for v in centre_mm],
                "centre_voxel": [int(round(float(v))) for v in idx],
                "max_diameter_mm": round(max_diameter_mm(mask, aff), 1),
                "volume_ml": round(float(mask.sum()) * grid.voxel_volume_ml, 3),
                "kind": tumor_kind if code == _TUMOR else ("solid" if code == _NODULE else "simple cyst"),
                "hu": None,
                "_where": (box, mask),
            })
    for les in lesions:
        les["hu"] = _lesion_hu(les["label"], tumor_kind, rng)
    return lesions


def _lesion_hu(code: int, tumor_kind: str, rng: np.random.Generator) -> list[float]:
    """Lesion attenuation (HU) for each phase in PHASES order."""
    if code == _TUMOR:
        return [float(v + rng.uniform(-8, 8)) for v in _TUMOR_HU[tumor_kind]]
    if code == _NODULE:
        v = float(rng.uniform(-10.0, 60.0))
        return [v, v, v]
    v = float(rng.uniform(0.0, 15.0))
    return [v, v, v]


def _count_weights(k: int) -> np.ndarray:
    w = np.array([0.55, 0.3, 0.15, 0.08, 0.04, 0.02][:k], dtype=np.float64)
    return w / w.sum()


def _find_spot(t, grid: Grid, rng, organs, r, placed, tries: int = 80):
    """A lesion centre (mm) well inside one of ``organs`` and away from earlier lesions, or None.

    Candidates come from a strided view of the tissue map (at most ~2M voxels), so large grids stay fast.
    """
    stride = tuple(max(1, int(np.ceil(s / c))) for s, c in zip(t.shape, (128, 128, 128)))
    coarse = t[:: stride[0], :: stride[1], :: stride[2]]
    vox = {c: np.argwhere(coarse == c) * np.array(stride) for c in organs}
    vox = {c: v for c, v in vox.items() if len(v)}
    if not vox:
        return None
    codes = list(vox)
    weights = np.array([len(vox[c]) for c in codes], dtype=np.float64)
    step = np.abs(grid.step)
    offsets = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)
    for _ in range(tries):
        organ = codes[int(rng.choice(len(codes), p=weights / weights.sum()))]
        ijk = vox[organ][rng.integers(len(vox[organ]))]
        probe = np.vstack([ijk, ijk + np.rint(offsets * (0.8 * r) / step).astype(int)])
        if np.any(probe < 0) or np.any(probe >= np.array(t.shape)):
            continue
        if np.any(t[tuple(probe.T)] != organ):
            continue
        centre = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]
        if all(np.linalg.norm(centre - c) > 1.35 * r + reach + 3.0 for c, reach in placed):
            return centre, organ
    return None


def _add_texture(hu: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> None:
    """Low-frequency heterogeneity (bowel / fat mottling, organ texture).

    A sum of three smooth 2D fields (ij, ik, jk planes) broadcast to 3D: as patchy as a 3D field to the
    eye, and far cheaper than upsampling a 3D one on a 512×512×300 grid.
    """
    n_i, n_j, n_k = hu.shape

    def smooth2d(a: int, b: int) -> np.ndarray:
        coarse = rng.standard_normal((max(2, a // 8), max(2, b // 8))).astype(np.float32)
        f = ndimage.zoom(coarse, (a / coarse.shape[0], b / coarse.shape[1]), order=1, grid_mode=True, mode="nearest")
        return f[:a, :b] / np.float32(np.sqrt(3.0))

    field = smooth2d(n_i, n_j)[:, :, None] + smooth2d(n_i, n_k)[:, None, :] + smooth2d(n_j, n_k)[None, :, :]
    amp = np.zeros(256, dtype=np.float32)
    amp[_VISCERAL], amp[_FAT], amp[_LIVER], amp[_SPLEEN], amp[_MUSCLE] = 35.0, 10.0, 4.0, 5.0, 5.0
    amp[_LLUNG] = amp[_RLUNG] = 25.0
    field *= amp[tissue]
    hu += field

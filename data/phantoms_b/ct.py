"""Family B CT: the same organs and lesions as ``data.phantoms.ct``, drawn another way.

Body contour: a per-slice polar radius with random harmonics (not an ellipse); habitus from thin (no
muscle, 3 mm of fat) to large (70 mm of fat), with a sector where organs lie against fat with no muscle
layer. Organs: smooth unions / differences of randomly deformed star-shaped bodies rotated in 3D
(``data.phantoms_b.shapes``); the diaphragm is a random height field; the aorta a wandering tube whose
place beside the spine varies; the spine a stack of vertebrae with a dense cortical shell (900–1400 HU)
and cancellous bone, or solid dense bodies, with discs and posterior arches; ribs are cortical tubes.
Bowel carries gas pockets. Attenuation depends on phase and tube voltage; texture is power-law 3D noise;
noise is spatially correlated. Grids vary in field of view, slice thickness and stored orientation
(LPS or RAS columns, ascending or descending slices).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data.phantoms.labels import CT_LABELS
from data.phantoms_b.shapes import GridB, StarBody, gaussian_random_field, largest_feret_mm, smooth_subtract, smooth_union
from data.study import Volume

__all__ = ["generate_ct_b", "PHASES_B", "ORIENTATIONS"]

PHASES_B = ("non-contrast", "arterial", "portal venous")
REGIONS_B = {"abdomen": -80.0, "chest": 70.0, "chest-abdomen": -5.0}  # coverage centre z (mm), diaphragm near 0
# stored axis signs of the voxel → RAS affine: (+) columns to the patient's right (RAS-stored), (-) slices descending
ORIENTATIONS = ((-1, -1, 1), (1, 1, 1), (-1, -1, -1), (1, -1, -1))

_LIVER, _SPLEEN, _LKID, _RKID, _LLUNG, _RLUNG, _HEART, _AORTA, _SPINE = range(1, 10)
_TUMOR, _NODULE, _CYST = 10, 11, 12
_FAT, _MUSCLE, _BOWEL, _RIB, _CANAL, _DISC, _GAS, _MARROW, _MEDIAST, _RIBMARROW = range(20, 30)
_LABEL_OF = np.zeros(256, dtype=np.int16)
_LABEL_OF[1:13] = np.arange(1, 13)
_LABEL_OF[_MARROW] = _SPINE  # cancellous bone of a vertebra is spine

# (non-contrast, arterial, portal venous) HU at 120 kV; iodine enhancement scales with tube voltage
_BASE = {_LIVER: (50, 65), _SPLEEN: (40, 52), _LKID: (26, 38), _RKID: (26, 38), _HEART: (32, 48), _AORTA: (32, 48)}
_ENHANCE = {  # added HU in (arterial, portal venous)
    _LIVER: ((8, 25), (45, 70)), _SPLEEN: ((50, 95), (55, 80)), _LKID: ((110, 180), (110, 160)), _RKID: ((110, 180), (110, 160)),
    _HEART: ((170, 300), (95, 150)), _AORTA: ((230, 400), (100, 165)),
}
_KVP_GAIN = {100.0: 1.25, 120.0: 1.0, 140.0: 0.85}


def generate_ct_b(seed: int) -> tuple[Volume, np.ndarray, dict]:
    """One family B CT: ``(volume in HU, int16 label map on its grid, truth)`` with ``data.phantoms`` CT truth keys."""
    rng = np.random.default_rng([seed, 0xB0C7])
    u = rng.uniform
    phase = str(rng.choice(PHASES_B))
    region = str(rng.choice(list(REGIONS_B)))
    habitus = str(rng.choice(["thin", "average", "large"], p=[0.3, 0.4, 0.3]))
    n = int(rng.choice([112, 128, 144]))
    size = {"thin": u(0.8, 0.92), "average": u(0.92, 1.05), "large": u(1.05, 1.2)}[habitus]
    fov = 2.0 * 150.0 * size * u(1.25, 1.5)  # the whole body in the field, with 4–25 % air around it
    thickness = float(rng.choice([1.5, 2.0, 2.5, 3.0, 5.0]))
    coverage = u(150.0, 260.0)
    k = int(np.clip(round(coverage / thickness), 32, 96))
    spacing = (round(fov / n, 3), round(fov / n, 3), thickness)
    signs = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    centre = np.array([u(-15, 15), u(-25, 10), REGIONS_B[region] + u(-20, 20)])
    shape = (n, n, k)
    aff = np.diag([signs[0] * spacing[0], signs[1] * spacing[1], signs[2] * spacing[2], 1.0])
    aff[:3, 3] = centre - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    grid = GridB(shape, aff)

    tissue = np.zeros(shape, dtype=np.uint8)
    _draw_body(tissue, grid, rng, habitus, size)
    lesions = _draw_lesions(tissue, grid, rng)

    kvp = float(rng.choice(list(_KVP_GAIN)))
    lut = _attenuation(phase, kvp, rng)
    hu = lut[tissue]
    _texture(hu, tissue, grid, rng)
    p = PHASES_B.index(phase)
    for les in lesions:
        where = les.pop("_where")
        les["hu"] = round(les["hu"][p], 1)
        hu[where] = les["hu"] + 6.0 * rng.standard_normal(int(where.sum())).astype(np.float32)
    sig = (u(0.5, 0.9), u(0.5, 0.9), u(0.2, 0.6))
    hu = ndimage.gaussian_filter(hu, sigma=sig, mode="nearest", truncate=2.0)
    noise = float(u(8.0, 30.0))
    grain = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=(0.8, 0.8, 0.3))
    hu += grain * np.float32(noise / (grain.std() + 1e-6))
    array = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    labels = _LABEL_OF[tissue]
    counts = np.bincount(labels.ravel(), minlength=13)
    vml = grid.voxel_volume_ml
    desc = {"non-contrast": "WO", "arterial": "ART", "portal venous": "PV"}[phase]
    volume = Volume(
        array=array, affine=grid.affine, modality="CT",
        body_part={"abdomen": "ABDOMEN", "chest": "CHEST", "chest-abdomen": "CHEST"}[region],
        window=(50.0, 350.0), description=f"{region.upper()} {desc} {thickness:g} B{int(rng.integers(20, 45))}f",
        meta={"phase": phase, "body_region": region, "slice_thickness_mm": thickness, "kvp": kvp},
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
        "mean_hu": {"aorta": round(float(lut[_AORTA]), 1), "liver": round(float(lut[_LIVER]), 1)},
    }
    return volume, labels, truth


def _draw_body(t: np.ndarray, grid: GridB, rng: np.random.Generator, habitus: str, size: float) -> None:
    """Body wall, spine, aorta, diaphragm, lungs, heart, liver, spleen, kidneys, bowel (tissue codes)."""
    u = rng.uniform
    x, y, z = grid.axes_mm()
    a, b = 150.0 * size * u(0.92, 1.08), 108.0 * size * u(0.9, 1.1)  # cavity + wall, lateral / AP (mm)
    theta = np.arctan2(y, x)[..., 0]  # (n, n)
    r2 = np.sqrt(x**2 + y**2)[..., 0]
    ellipse = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    harm = sum(u(-0.04, 0.04) * np.cos(m * theta + u(0, 2 * np.pi)) for m in range(2, 6))
    zfac = 1.0 + 0.05 * np.sin(z[0, 0] / u(50, 90) + u(0, 2 * np.pi))  # (K,)
    outer = (ellipse * (1.0 + harm))[..., None] * zfac[None, None, :]  # (n, n, K)
    fat0 = {"thin": u(3.0, 8.0), "average": u(12.0, 30.0), "large": u(40.0, 70.0)}[habitus]
    fat = fat0 * (1.0 + 0.45 * np.cos(theta - u(0, 2 * np.pi)))
    gap_dir, gap_w = u(0, 2 * np.pi), u(0.3, 0.9)  # a sector with no muscle: organs touch the fat
    muscle = u(4.0, 13.0) * (np.cos(theta - gap_dir) < np.cos(gap_w)) * (habitus != "thin" or rng.random() < 0.5)
    inner = outer - (fat + muscle)[..., None]
    rr = r2[..., None]
    t[rr <= outer] = _FAT
    t[rr <= (outer - fat[..., None])] = _MUSCLE
    cavity = rr <= inner
    t[cavity] = _BOWEL

    # Diaphragm: a height field with two domes (right higher as a rule) and random undulation.
    zr = u(-10.0, 25.0)
    zl = zr - u(-5.0, 22.0)
    s2 = (0.35 * a) ** 2
    undul = ndimage.zoom(rng.standard_normal((4, 4)), (grid.shape[0] / 4, grid.shape[1] / 4), order=3)[: grid.shape[0], : grid.shape[1]]
    xs, ys = np.broadcast_arrays(x[..., 0], y[..., 0])  # (n, n) each
    dome = np.maximum(zr - 70 + 70 * np.exp(-((xs - 0.45 * a) ** 2 + (ys + 0.05 * b) ** 2) / (2 * s2)),
                      zl - 70 + 70 * np.exp(-((xs + 0.45 * a) ** 2 + (ys + 0.05 * b) ** 2) / (2 * s2)))
    diaphragm = (dome + 5.0 * undul)[..., None]  # (n, n, 1): z of the diaphragm surface
    above = z > diaphragm

    # Spine: vertebral bodies (cortical shell + cancellous, or solid dense), discs, arch around the canal.
    r_vb = u(15.0, 23.0) * size ** 0.5
    mid = inner[..., grid.shape[2] // 2]
    back = (np.abs(xs) < 10.0) & (r2 <= mid) & (ys < 0)
    y_post = float(ys[back].min()) if back.any() else -0.7 * b  # the cavity's posterior wall at the midline
    ys_c = y_post + u(3.0, 8.0) + 0.85 * r_vb  # vertebral body centre (mm, RAS y)
    period, disc_h, z0 = u(26.0, 34.0), u(4.0, 8.0), u(0, 30)
    disc = (np.mod(z - z0, period) < disc_h)  # (1, 1, K)
    body2 = (xs / r_vb) ** 2 + ((ys - ys_c) / (0.85 * r_vb)) ** 2
    shell = max(1.5, 2.0 * abs(grid.affine[0, 0]))
    vb_out = (body2 <= 1.0)[..., None]
    vb_in = (((xs / (r_vb - shell)) ** 2 + ((ys - ys_c) / (0.85 * r_vb - shell)) ** 2) <= 1.0)[..., None]
    yc_canal = ys_c - 0.85 * r_vb - u(7.0, 10.0)
    rc = u(6.0, 9.0)
    dcanal = np.sqrt(xs**2 + (ys - yc_canal) ** 2)
    arch = ((dcanal > rc) & (dcanal < rc + u(5.0, 8.0)) & (ys < ys_c - 0.6 * r_vb)) | \
           ((np.abs(xs) < u(3.0, 5.0)) & (ys < yc_canal - rc) & (ys > yc_canal - rc - u(20.0, 32.0))) | \
           ((np.abs(ys - yc_canal) < 4.0) & (np.abs(xs) < rc + u(18.0, 28.0)) & (np.abs(xs) > rc))
    solid = rng.random() < 0.35
    inbody = rr <= outer
    t[inbody & vb_out & ~disc] = _SPINE
    if not solid:
        t[inbody & vb_in & ~disc] = _MARROW
    t[inbody & vb_out & disc] = _DISC
    t[inbody & arch[..., None] & ~disc] = _SPINE
    t[inbody & (dcanal <= rc)[..., None]] = _CANAL

    # Aorta: a tube left-anterior of the spine whose place wanders along z.
    r_ao = u(9.0, 16.0)
    zz = z[0, 0]
    xa = -r_vb * u(0.2, 1.1) + 6.0 * np.sin(zz / u(60, 120) + u(0, 6.3))  # (K,)
    ya = ys_c + 0.85 * r_vb + u(2.0, 14.0) + r_ao + 4.0 * np.sin(zz / u(60, 120) + u(0, 6.3))
    t[((x - xa) ** 2 + (y - ya) ** 2) <= r_ao**2] = _AORTA

    # Ribs: cortical tubes along the wall, descending anteriorly, above the costal margin.
    ring = np.abs(rr - (inner + 0.5 * np.minimum(muscle, 8.0)[..., None] + 3.0)) < 4.5
    front = (np.abs(xs) < 0.22 * a) & (ys > 0)
    slope, gap = u(25.0, 45.0), u(24.0, 32.0)
    zrib = z + slope * (ys / b)[..., None]
    band = np.abs(np.mod(zrib - u(0, 30), gap) - gap / 2) < u(4.0, 6.0)
    ribs = ring & band & ~front[..., None] & (zrib > diaphragm - 120.0) & inbody & ~np.isin(t, (_SPINE, _MARROW, _CANAL, _DISC))
    t[ribs] = _RIB
    t[ndimage.binary_erosion(ribs)] = _RIBMARROW

    # Lungs above the diaphragm, minus a mediastinum; the heart sits in it on the diaphragm.
    free = cavity & (t == _BOWEL)
    xm = u(-15.0, 5.0)
    mediast = (np.abs(xs - xm) < 10.0 + 18.0 * np.clip((ys - ys_c) / (0.9 * b), 0, 1))[..., None] & (y > ys_c - r_vb)
    lung = free & above & ~mediast
    t[lung & (x < xm)] = _LLUNG
    t[lung & (x >= xm)] = _RLUNG
    t[free & above & mediast] = _MEDIAST
    zh = float(np.median(dome[np.abs(xs + 40) < 20])) if np.any(np.abs(xs + 40) < 20) else zr
    heart = StarBody.random(rng, (xm - u(15, 40), 0.3 * b * size, zh + u(40, 60)), (u(45, 60) * size, u(40, 52) * size, u(45, 60)),
                            roughness=0.08, max_tilt_deg=30)
    _paint(t, grid, heart.sdf(grid) <= 0, _HEART, (_LLUNG, _RLUNG, _MEDIAST))

    below = cavity & ~above
    zr_c = float(np.median(dome[xs > 0.3 * a])) if np.any(xs > 0.3 * a) else zr
    zl_c = float(np.median(dome[xs < -0.3 * a])) if np.any(xs < -0.3 * a) else zl
    tilt = 20.0
    right_lobe = StarBody.random(rng, (0.42 * a, 0.05 * b, zr_c - u(55, 80)), (0.45 * a * u(0.85, 1.1), 0.62 * b * u(0.85, 1.1), u(65, 90)),
                                 roughness=0.12, max_tilt_deg=tilt)
    left_lobe = StarBody.random(rng, (-0.05 * a, 0.45 * b, zr_c - u(35, 55)), (0.3 * a * u(0.7, 1.2), 0.25 * b, u(30, 45)),
                                roughness=0.15, max_tilt_deg=tilt)
    liver = smooth_union(right_lobe.sdf(grid), left_lobe.sdf(grid), 18.0) <= 0
    _paint(t, grid, liver & below & (z < diaphragm - 2.0), _LIVER, (_BOWEL,))
    sp = StarBody.random(rng, (-0.62 * a * u(0.95, 1.12), -0.38 * b, zl_c - u(35, 60)), (0.22 * a * u(0.85, 1.25), 0.34 * b * u(0.85, 1.2), u(45, 70)),
                         roughness=0.1, max_tilt_deg=25)
    notch = StarBody.random(rng, sp.centre_mm + np.array([0.24 * a, 0.18 * b, 0.0]), sp.radii_mm * 0.6, roughness=0.05)
    spleen = smooth_subtract(sp.sdf(grid), notch.sdf(grid), 6.0) <= 0
    _paint(t, grid, spleen & below & (z < diaphragm - 2.0), _SPLEEN, (_BOWEL,))
    for code, side, zt in ((_LKID, -1.0, zl_c - u(85, 115)), (_RKID, 1.0, zr_c - u(105, 135))):
        c = np.array([side * (r_vb + u(35.0, 55.0)), ys_c + u(12.0, 28.0), zt])
        kid = StarBody.random(rng, c, (u(24, 32) * size ** 0.5, u(19, 25) * size ** 0.5, u(45, 60)), roughness=0.06, max_tilt_deg=25)
        hilum = StarBody.random(rng, c + np.array([-side * u(18, 24), u(2, 8), 0.0]), (12.0, 10.0, 18.0), roughness=0.05)
        _paint(t, grid, smooth_subtract(kid.sdf(grid), hilum.sdf(grid), 4.0) <= 0, code, (_BOWEL, _LIVER, _SPLEEN))

    gas = gaussian_random_field(grid.shape, rng, beta=3.0, spacing=tuple(abs(np.diag(grid.affine)[:3])))
    t[(t == _BOWEL) & (gas > np.float32(u(1.9, 2.4)))] = _GAS
    return {}


def _paint(t: np.ndarray, grid: GridB, mask: np.ndarray, code: int, only_in: tuple[int, ...]) -> None:
    t[mask & np.isin(t, only_in)] = code


def _attenuation(phase: str, kvp: float, rng: np.random.Generator) -> np.ndarray:
    """Mean HU per tissue code for this case's phase and tube voltage (a lookup table)."""
    u = rng.uniform
    lut = np.full(256, -1000.0, dtype=np.float32)
    gain = _KVP_GAIN[kvp]
    p = PHASES_B.index(phase)
    for code, base in _BASE.items():
        v = u(*base)
        if p:
            v += gain * u(*_ENHANCE[code][p - 1])
        lut[code] = v
    lut[_RKID] = lut[_LKID] + u(-6, 6)
    lut[_LLUNG] = lut[_RLUNG] = u(-900, -820)
    lut[_SPINE] = u(500.0, 700.0) if rng.random() < 0.5 else u(900.0, 1400.0)
    lut[_MARROW] = u(150.0, 350.0)
    lut[_RIB] = u(800.0, 1300.0)
    lut[_RIBMARROW] = u(200.0, 400.0)
    lut[_FAT] = u(-125.0, -80.0)
    lut[_MUSCLE] = u(35.0, 60.0) + (8.0 * gain if p else 0.0)
    lut[_BOWEL] = u(5.0, 40.0) + (15.0 * gain if p == 2 else 0.0)
    lut[_CANAL], lut[_DISC], lut[_GAS] = u(0.0, 20.0), u(70.0, 110.0), u(-990.0, -900.0)
    lut[_MEDIAST] = u(-90.0, -30.0)
    return lut


def _texture(hu: np.ndarray, tissue: np.ndarray, grid: GridB, rng: np.random.Generator) -> None:
    """Power-law 3D texture per tissue, lung vessels as thin ridges of a second field."""
    spacing = tuple(abs(np.diag(grid.affine)[:3]))
    field = gaussian_random_field(grid.shape, rng, beta=2.2, spacing=spacing)
    amp = np.zeros(256, dtype=np.float32)
    amp[_BOWEL], amp[_FAT], amp[_LIVER], amp[_SPLEEN], amp[_MUSCLE], amp[_MEDIAST] = 28.0, 12.0, 7.0, 9.0, 6.0, 20.0
    amp[_LLUNG] = amp[_RLUNG] = 30.0
    amp[_MARROW] = 60.0
    hu += field * amp[tissue]
    vessels = gaussian_random_field(grid.shape, rng, beta=3.5, spacing=spacing)
    lung = (tissue == _LLUNG) | (tissue == _RLUNG)
    hu[lung & (np.abs(vessels) < 0.04)] += np.float32(rng.uniform(600.0, 800.0))


def _draw_lesions(t: np.ndarray, grid: GridB, rng: np.random.Generator) -> list[dict]:
    """0–3 liver tumours, lung nodules (spiculated) and kidney cysts, each inside its organ."""
    organs = {_TUMOR: (_LIVER,), _NODULE: (_LLUNG, _RLUNG), _CYST: (_LKID, _RKID)}
    radius = {_TUMOR: (7.0, 28.0), _NODULE: (4.0, 12.0), _CYST: (6.0, 16.0)}
    rough = {_TUMOR: 0.2, _NODULE: 0.35, _CYST: 0.03}
    kind = str(rng.choice(["hypovascular", "hypervascular"]))
    spacing = tuple(abs(np.diag(grid.affine)[:3]))
    lesions = []
    for code in (_TUMOR, _NODULE, _CYST):
        n = int(rng.choice([0, 0, 1, 1, 2, 3]))
        depth = ndimage.distance_transform_edt(np.isin(t, organs[code]), sampling=spacing) if n else None
        for _ in range(n):
            r = rng.uniform(*radius[code])
            cand = np.argwhere(depth > 0.7 * r)
            cand = cand[np.isin(t[tuple(cand.T)], organs[code])] if len(cand) else cand  # not inside an earlier lesion
            if not len(cand):
                continue
            ijk = cand[rng.integers(len(cand))]
            organ = int(t[tuple(ijk)])
            depth[grid.box_around(grid.affine[:3, :3] @ ijk + grid.affine[:3, 3], 1.6 * r + 4.0) or (slice(0, 0),) * 3] = 0  # keep the next apart
            centre = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3]
            body = StarBody.random(rng, centre, r * rng.uniform(0.75, 1.25, 3), roughness=rough[code], max_tilt_deg=90,
                                   n_terms=9 if code == _NODULE else 5, max_freq=6.0 if code == _NODULE else 3.5)
            box = body.box(grid)
            if box is None:
                continue
            m = (body.sdf(grid, box) <= 0) & (t[box] == organ)
            if m.sum() < 4:
                continue
            where = np.zeros(t.shape, dtype=bool)
            where[box] = m
            t[where] = code
            idx = np.argwhere(where).mean(0)
            cmm = grid.affine[:3, :3] @ idx + grid.affine[:3, 3]
            lesions.append({
                "type": CT_LABELS[code], "label": code, "organ": CT_LABELS[organ],
                "centre_mm": [round(float(v), 1) for v in cmm], "centre_voxel": [int(round(float(v))) for v in idx],
                "max_diameter_mm": round(largest_feret_mm(where, grid.affine), 1),
                "volume_ml": round(float(m.sum()) * grid.voxel_volume_ml, 3),
                "kind": kind if code == _TUMOR else ("solid" if code == _NODULE else "simple cyst"),
                "hu": _lesion_hu(code, kind, rng), "_where": where,
            })
    return lesions


def _lesion_hu(code: int, kind: str, rng: np.random.Generator) -> list[float]:
    """Lesion HU per phase (PHASES_B order)."""
    u = rng.uniform
    if code == _TUMOR:
        if kind == "hypovascular":
            return [u(25, 45), u(35, 55), u(45, 70)]
        return [u(35, 50), u(130, 190), u(70, 100)]
    if code == _NODULE:
        v = u(-20.0, 70.0)
        return [v, v, v]
    v = u(-5.0, 18.0)
    return [v, v, v]

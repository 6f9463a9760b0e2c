"""Synthetic PA chest radiographs (DX) with independent multi-label findings and a measured CTR.

The picture is an attenuation map turned into a detector image: body soft tissue, lungs (air), heart and
mediastinum, spine, clavicles, posterior ribs, diaphragm domes, vessel markings. Findings —
cardiomegaly, pleural effusion, nodule, pneumothorax, consolidation — are each present with their own
probability, with side, size, position and density drawn per case, so a classifier has to look.
Positioning (rotation, shift, scale, inspiration), exposure and noise vary. The cardiothoracic ratio is
measured from the drawn heart and lung masks, not copied from the sampled value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.phantoms.labels import CXR_FINDINGS
from data.study import Volume

__all__ = ["CXROptions", "generate_cxr"]


@dataclass
class CXROptions:
    """What a chest radiograph phantom may vary.

    shape: (columns, rows) pixels; pixel_spacing_mm: detector pixel size (default: a 380–430 mm field);
    prevalence: probability of each finding; findings: force some findings on (names) — the rest are then
    absent unless ``prevalence`` is also used via ``random_others``; noise: detector noise (fraction).
    """

    shape: tuple[int, int] = (256, 256)
    pixel_spacing_mm: float | None = None
    prevalence: float = 0.3
    findings: tuple[str, ...] | None = None
    random_others: bool = False
    noise: float | None = None


def generate_cxr(seed: int, options: CXROptions | None = None) -> tuple[Volume, dict]:
    """One radiograph: ``(Volume (I=columns, J=rows, 1) uint 12-bit values as int16, truth dict)``."""
    o = options or CXROptions()
    rng = np.random.default_rng([seed, 0xC59])
    u = rng.uniform
    if len(o.shape) != 2:
        raise ValueError(f"CXR shape must be (columns, rows), got {o.shape}.")
    ncol, nrow = (int(s) for s in o.shape)
    if min(ncol, nrow) < 32:
        raise ValueError(f"CXR shape must be at least 32×32 pixels, got {o.shape}.")
    ps = float(o.pixel_spacing_mm) if o.pixel_spacing_mm else u(380.0, 430.0) / max(ncol, nrow)
    present = _choose_findings(o, rng)

    # Patient frame (mm): x to the patient's left = image right (PA display), y downwards (inferior).
    ang = np.radians(u(-4.0, 4.0))
    scale = u(0.92, 1.08)
    jj, ii = np.mgrid[0:nrow, 0:ncol].astype(np.float32)
    cx, cy = (ncol - 1) / 2 + u(-0.04, 0.04) * ncol, (nrow - 1) / 2 + u(-0.03, 0.05) * nrow
    px, py = (ii - cx) * ps / scale, (jj - cy) * ps / scale
    x = np.cos(ang) * px + np.sin(ang) * py
    y = -np.sin(ang) * px + np.cos(ang) * py

    half_w = u(140.0, 175.0)  # half the chest wall width (mm)
    lung_top, dome_r = -u(150.0, 175.0), u(70.0, 115.0)  # inspiration varies lung height
    dome_l = dome_r + u(5.0, 20.0)
    body = (np.abs(x) < half_w + 20.0 - 0.0008 * np.maximum(-y - 120.0, 0) ** 2 * 3) | ((np.abs(x) < 55.0) & (y < -120))
    att = body.astype(np.float32) * 1.0
    lungs = {}
    for side, dome in (("right", dome_r), ("left", dome_l)):
        sgn = -1.0 if side == "right" else 1.0
        xc, hw = sgn * (half_w * 0.5 + 8.0), half_w * 0.5 - 6.0
        yc, hh = (lung_top + dome) / 2, (dome - lung_top) / 2 + 25.0
        shape = np.abs((x - xc) / hw) ** 2.4 + np.abs((y - yc) / hh) ** 2.4 <= 1.0
        dome_y = dome - 40.0 * (1.0 - np.clip(((x - xc) / hw) ** 2, 0, 1)) + 15.0
        lungs[side] = shape & (y < dome_y) & (np.abs(x) > 22.0)
    lung_any = lungs["right"] | lungs["left"]
    thorax_px = _width_px(lung_any)

    cardiomegaly = "cardiomegaly" in present
    ctr_target = u(0.53, 0.66) if cardiomegaly else u(0.38, 0.48)
    hw_mm = ctr_target * thorax_px * ps / scale / 2
    hh_mm = hw_mm * u(0.75, 0.9)
    hxc, hyc = hw_mm * u(0.25, 0.4), (dome_r + dome_l) / 2 - hh_mm * 0.8
    heart = ((x - hxc) / hw_mm) ** 2 + ((y - hyc) / hh_mm) ** 2 <= 1.0
    mediast = (np.abs(x - 5.0) < u(22.0, 32.0)) & (y < hyc)
    abdomen = body & ~lung_any & (y > min(dome_r, dome_l) - 40.0) & ~heart & ~mediast

    lung_w = 0.72 * u(0.9, 1.1)
    att -= lung_w * lung_any
    markings = _markings((nrow, ncol), rng, ps) * (1.0 - np.clip(np.abs(x) / (half_w + 1.0), 0, 1)) * lung_any
    att += 0.16 * markings
    att[heart] = 1.25
    att[mediast & ~lung_any] += 0.2
    att[abdomen] += 0.25
    att += 0.18 * (np.abs(x) < 17.0) * body  # spine through the mediastinum
    att += _ribs_and_clavicles(x, y, half_w, lung_top, rng) * body

    truth_details: dict = {}
    lat: dict[str, str | None] = {f: None for f in CXR_FINDINGS}
    if "pleural effusion" in present:
        lat["pleural effusion"], truth_details["pleural effusion"] = _effusion(att, lungs, x, y, rng, ps)
    if "pneumothorax" in present:
        lat["pneumothorax"], truth_details["pneumothorax"] = _pneumothorax(att, lungs, rng, ps, lung_w)
    if "consolidation" in present:
        lat["consolidation"], truth_details["consolidation"] = _consolidation(att, lungs, heart, x, y, rng)
    if "nodule" in present:
        lat["nodule"], truth_details["nodule"] = _nodule(att, lungs, heart, x, y, rng, ps, scale)

    # Detector: brighter where more attenuating (MONOCHROME2), exposure and gamma vary.
    k = u(1.0, 1.6)
    img = 1.0 - np.exp(-k * np.clip(att, 0, None))
    img = ndimage.gaussian_filter(img, 0.7) ** u(0.8, 1.2)
    noise = float(o.noise) if o.noise is not None else u(0.008, 0.03)
    img = img + rng.standard_normal(img.shape).astype(np.float32) * noise
    img = np.clip(img * u(0.85, 1.0) + u(0.0, 0.05), 0, 1)
    array = np.rint(img * 4095).astype(np.int16).T  # (I=columns, J=rows)

    heart_px = _width_px(heart)
    ctr = heart_px / thorax_px
    findings = {f: f in present for f in CXR_FINDINGS}
    findings["cardiomegaly"] = bool(ctr > 0.5)
    # A projection has no 3D position. Use the grid data.load_study assigns a radiograph without
    # ImageOrientationPatient (pixel spacing on the diagonal, columns towards the patient's left), so a
    # generated case and the same case read back from DICOM carry the same affine.
    aff = np.diag([-ps, -ps, 1.0, 1.0])
    volume = Volume(
        array=array[:, :, None], affine=aff, modality="DX", body_part="CHEST",
        window=(2048.0, 4096.0), description="CHEST PA",
        meta={"view": "PA", "pixel_spacing_mm": ps},
    )
    truth = {
        "kind": "cxr",
        "seed": int(seed),
        "shape": [ncol, nrow],
        "pixel_spacing_mm": round(ps, 4),
        "view": "PA",
        "findings": findings,
        "labels": [f for f in CXR_FINDINGS if findings[f]],
        "normal": not any(findings.values()),
        "laterality": lat,
        "ctr": round(float(ctr), 3),
        "heart_width_mm": round(heart_px * ps, 1),
        "thorax_width_mm": round(thorax_px * ps, 1),
        "details": truth_details,
    }
    return volume, truth


def _choose_findings(o: CXROptions, rng: np.random.Generator) -> set[str]:
    draws = {f: bool(rng.random() < o.prevalence) for f in CXR_FINDINGS}  # always drawn: stable seeds
    if o.findings is None:
        return {f for f, on in draws.items() if on}
    unknown = set(o.findings) - set(CXR_FINDINGS)
    if unknown:
        raise ValueError(f"findings must be among {CXR_FINDINGS}, got {sorted(unknown)}.")
    forced = set(o.findings)
    return forced | ({f for f, on in draws.items() if on} if o.random_others else set())


def _width_px(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if len(cols) else 1


def _markings(shape, rng, ps) -> np.ndarray:
    """Branching-vessel-like texture: band-passed noise, ridges kept."""
    n = rng.standard_normal(shape).astype(np.float32)
    s = 2.0 / ps * 1.5
    band = ndimage.gaussian_filter(n, s) - ndimage.gaussian_filter(n, 3 * s)
    return np.clip(band / (band.std() + 1e-6) - 0.5, 0, None)


def _ribs_and_clavicles(x, y, half_w, lung_top, rng) -> np.ndarray:
    out = np.zeros_like(x)
    gap, thick = rng.uniform(22.0, 27.0), rng.uniform(7.0, 10.0)
    for n in range(10):
        y0 = lung_top + 10.0 + n * gap
        curve = y0 + 30.0 * (np.abs(x) / half_w) ** 2 - 12.0 * (np.abs(x) / half_w)
        out += 0.14 * ((np.abs(y - curve) < thick / 2) & (np.abs(x) > 25.0) & (np.abs(x) < half_w))
    clav = lung_top + rng.uniform(5.0, 25.0) - 0.18 * np.abs(x)
    out += 0.35 * ((np.abs(y - clav) < 6.0) & (np.abs(x) > 15.0) & (np.abs(x) < 0.8 * half_w))
    return out


def _side(rng, lungs, both_ok=False) -> str:
    return str(rng.choice(["left", "right", "bilateral"] if both_ok else ["left", "right"], p=[0.4, 0.4, 0.2] if both_ok else None))


def _effusion(att, lungs, x, y, rng, ps):
    side = _side(rng, lungs, both_ok=True)
    out = {}
    for s in (["left", "right"] if side == "bilateral" else [side]):
        m = lungs[s]
        rows = np.flatnonzero(m.any(axis=1))
        top, bottom = rows[0], rows[-1]
        frac = rng.uniform(0.15, 0.45)
        level = bottom - frac * (bottom - top)
        lateral = np.abs(x) / (np.abs(x[m]).max() + 1e-6)
        meniscus = level * ps - 25.0 * lateral * rng.uniform(0.6, 1.2)  # fluid climbs laterally
        fluid = m & (np.arange(att.shape[0])[:, None] * ps > meniscus)
        att[fluid] += rng.uniform(0.55, 0.75)
        out[s] = {"height_fraction": round(float(frac), 3)}
    return side, out


def _pneumothorax(att, lungs, rng, ps, lung_w):
    side = _side(rng, lungs)
    m = lungs[side]
    dist = ndimage.distance_transform_edt(m) * ps
    depth = rng.uniform(12.0, 40.0)
    cols = np.flatnonzero(m.any(axis=0))
    mid = (cols[0] + cols[-1]) / 2
    lateral_half = (np.arange(m.shape[1])[None, :] > mid) if side == "left" else (np.arange(m.shape[1])[None, :] < mid)
    rows = np.flatnonzero(m.any(axis=1))
    upper = np.arange(m.shape[0])[:, None] < rows[0] + 0.75 * (rows[-1] - rows[0])
    gas = m & (dist < depth) & (lateral_half | (np.arange(m.shape[0])[:, None] < rows[0] + 0.3 * (rows[-1] - rows[0]))) & upper
    line = m & ~gas & ndimage.binary_dilation(gas, iterations=2) & upper
    att[gas] = att[gas] * 0.0 + (1.0 - lung_w) - 0.12  # no lung markings, darker than lung
    att[line] += 0.3
    att[m & ~gas] += 0.08  # partly collapsed lung is a little denser
    return side, {"depth_mm": round(float(depth), 1)}


def _zone(y_c, m):
    rows = np.flatnonzero(m.any(axis=1))
    f = (y_c - rows[0]) / max(rows[-1] - rows[0], 1)
    return "upper" if f < 0.33 else ("middle" if f < 0.66 else "lower")


def _consolidation(att, lungs, heart, x, y, rng):
    side = _side(rng, lungs)
    m = lungs[side] & ~heart
    pts = np.argwhere(m)
    r0, c0 = pts[rng.integers(len(pts))]
    rad = rng.uniform(25.0, 55.0)
    blob = ((x - x[r0, c0]) ** 2 + (y - y[r0, c0]) ** 2) < rad**2
    texture = ndimage.gaussian_filter(rng.standard_normal(att.shape).astype(np.float32), 3.0)
    patch = m & blob & (texture > -0.2 * texture.std())
    patch = ndimage.binary_closing(patch, iterations=2) & m
    att[patch] += rng.uniform(0.4, 0.65)
    return side, {"zone": _zone(r0, lungs[side]), "area_fraction": round(float(patch.sum() / max(lungs[side].sum(), 1)), 3)}


def _nodule(att, lungs, heart, x, y, rng, ps, scale):
    side = _side(rng, lungs)
    m = ndimage.binary_erosion(lungs[side] & ~heart, iterations=max(1, int(12.0 / ps)))
    if not m.any():
        m = lungs[side]
    pts = np.argwhere(m)
    r0, c0 = pts[rng.integers(len(pts))]
    d = rng.uniform(9.0, 30.0)
    disc = ((x - x[r0, c0]) ** 2 + (y - y[r0, c0]) ** 2) <= (d / 2) ** 2
    att[disc] += rng.uniform(0.35, 0.7)
    return side, {"diameter_mm": round(float(d), 1), "centre_px": [int(c0), int(r0)], "zone": _zone(r0, lungs[side])}

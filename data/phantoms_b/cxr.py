"""Family B frontal chest radiographs: the same five findings as ``data.phantoms.cxr``, drawn another way.

Lungs and heart are closed curves with a random polar radius (not superellipses); lung texture is a
power-law noise field (not vessel ridges); the film varies in exposure, gamma, contrast, sharpness
(blurred or edge-enhanced processing), collimation (bright or black shutters), a lead side marker,
field of view, patient size and position, and the air outside the body is not always dark.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data.phantoms.labels import CXR_FINDINGS
from data.phantoms_b.shapes import gaussian_random_field
from data.study import Volume

__all__ = ["generate_cxr_b"]

_SHAPES = ((256, 256), (240, 288), (288, 256), (224, 256), (256, 320))


def generate_cxr_b(seed: int) -> tuple[Volume, dict]:
    """One family B radiograph: ``(Volume (I=columns, J=rows, 1), truth)`` with ``data.phantoms`` CXR truth keys."""
    rng = np.random.default_rng([seed, 0xBC59])
    u = rng.uniform
    ncol, nrow = _SHAPES[int(rng.integers(len(_SHAPES)))]
    ps = u(350.0, 450.0) / max(ncol, nrow)
    present = {f for f in CXR_FINDINGS if rng.random() < 0.35}

    ang = np.radians(u(-6.0, 6.0))
    size = u(0.85, 1.2)
    jj, ii = np.mgrid[0:nrow, 0:ncol].astype(np.float32)
    cx, cy = (ncol - 1) / 2 + u(-0.06, 0.06) * ncol, (nrow - 1) / 2 + u(-0.02, 0.08) * nrow
    px, py = (ii - cx) * ps, (jj - cy) * ps
    x = (np.cos(ang) * px + np.sin(ang) * py) / size  # patient frame (mm at size 1): x to the patient's left
    y = (-np.sin(ang) * px + np.cos(ang) * py) / size  # y to the feet

    half_w = u(135.0, 170.0)
    top, base = -u(140.0, 170.0), u(75.0, 120.0)
    theta = np.arctan2(y, x)
    body = np.hypot(x / (half_w + u(15, 30)), (y - 40.0) / 330.0) * _polar_noise(theta, rng, 0.03) <= 1.0
    body |= (np.abs(x) < u(45, 60)) & (y < top + 20)  # neck
    lungs = {}
    for side, sgn in (("right", -1.0), ("left", 1.0)):
        xc, yc = sgn * half_w * u(0.45, 0.55), (top + base) / 2 + 10.0
        hw, hh = half_w * u(0.42, 0.5), (base - top) / 2 + 20.0
        phi = np.arctan2(y - yc, x - xc)
        rad = np.hypot((x - xc) / hw, (y - yc) / hh) * _polar_noise(phi, rng, 0.06)
        dome = base + (8.0 if side == "left" else 0.0) - u(25.0, 45.0) * np.clip(1.0 - ((x - xc) / hw) ** 2, 0, 1)
        lungs[side] = (rad <= 1.0) & (y < dome) & (sgn * x > u(18.0, 28.0))
    lung_any = lungs["right"] | lungs["left"]
    thorax_px = _width_px(lung_any)

    ctr_goal = u(0.53, 0.68) if "cardiomegaly" in present else u(0.36, 0.47)
    hw_mm = ctr_goal * thorax_px * ps / size / 2.0
    hxc, hyc = hw_mm * u(0.2, 0.4), base - 30.0 - hw_mm * u(0.45, 0.65)  # resting on the left dome, overlapping the lungs
    heart = np.hypot((x - hxc) / hw_mm, (y - hyc) / (hw_mm * u(0.7, 0.9))) * _polar_noise(np.arctan2(y - hyc, x - hxc), rng, 0.05) <= 1.0
    mediast = (np.abs(x - u(-5, 10)) < u(20.0, 35.0)) & (y < hyc) & body

    att = body.astype(np.float32) * u(0.8, 1.1)
    lung_w = u(0.55, 0.8)
    att -= lung_w * lung_any
    texture = gaussian_random_field((nrow, ncol), rng, beta=u(2.3, 3.3))
    att += u(0.04, 0.12) * texture * lung_any
    att[heart] = u(1.1, 1.35)
    att[mediast & ~lung_any] += u(0.1, 0.3)
    att += u(0.1, 0.25) * ((np.abs(x) < u(14, 20)) & body)  # spine
    att += _ribs(x, y, half_w, top, rng) * body
    abdomen = body & ~lung_any & ~heart & (y > base - 30.0)
    att[abdomen] += u(0.15, 0.35)

    lat: dict[str, str | None] = {f: None for f in CXR_FINDINGS}
    details: dict = {}
    if "pleural effusion" in present:
        lat["pleural effusion"], details["pleural effusion"] = _effusion(att, lungs, x, y, rng)
    if "pneumothorax" in present:
        lat["pneumothorax"], details["pneumothorax"] = _pneumothorax(att, lungs, x, y, rng, ps, lung_w, texture)
    if "consolidation" in present:
        lat["consolidation"], details["consolidation"] = _consolidation(att, lungs, heart, rng, ps)
    if "nodule" in present:
        lat["nodule"], details["nodule"] = _nodule(att, lungs, heart, x, y, rng)

    img = _film(att, body, rng)
    array = np.rint(np.clip(img, 0, 1) * 4095).astype(np.int16).T  # (I=columns, J=rows)
    ctr = _width_px(heart) / thorax_px
    findings = {f: f in present for f in CXR_FINDINGS}
    findings["cardiomegaly"] = bool(ctr > 0.5)
    aff = np.diag([-ps, -ps, 1.0, 1.0])  # the grid data.load_study gives a radiograph without ImageOrientationPatient
    volume = Volume(array=array[:, :, None], affine=aff, modality="DX", body_part="CHEST", window=(2048.0, 4096.0),
                    description="CHEST PA", meta={"view": "PA", "pixel_spacing_mm": ps})
    truth = {
        "kind": "cxr", "seed": int(seed), "shape": [ncol, nrow], "pixel_spacing_mm": round(ps, 4), "view": "PA",
        "findings": findings, "labels": [f for f in CXR_FINDINGS if findings[f]], "normal": not any(findings.values()),
        "laterality": lat, "ctr": round(float(ctr), 3), "heart_width_mm": round(_width_px(heart) * ps, 1),
        "thorax_width_mm": round(thorax_px * ps, 1), "details": details,
    }
    return volume, truth


def _polar_noise(phi: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    """``1 + amp * (random harmonics of the angle)``: divides a radius so the outline wanders."""
    out = np.ones_like(phi)
    for m in range(2, 6):
        out += amp * rng.uniform(-1, 1) * np.cos(m * phi + rng.uniform(0, 2 * np.pi)) / 2.0
    return out


def _width_px(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if len(cols) else 1


def _ribs(x, y, half_w, top, rng) -> np.ndarray:
    out = np.zeros_like(x)
    gap, thick = rng.uniform(20.0, 30.0), rng.uniform(6.0, 12.0)
    amp = rng.uniform(0.06, 0.18)
    for n in range(int(rng.integers(8, 12))):
        curve = top + 5.0 + n * gap + rng.uniform(20, 40) * np.sin(np.clip(np.abs(x) / half_w, 0, 1) * np.pi / 2) ** 2
        out += amp * ((np.abs(y - curve) < thick / 2) & (np.abs(x) > 22.0) & (np.abs(x) < half_w * 1.05))
    clav = top + rng.uniform(0.0, 25.0) - rng.uniform(0.1, 0.25) * np.abs(x)
    out += rng.uniform(0.2, 0.45) * ((np.abs(y - clav) < rng.uniform(4.0, 7.0)) & (np.abs(x) > 12.0) & (np.abs(x) < 0.85 * half_w))
    return out


def _side(rng, both_ok: bool) -> str:
    return str(rng.choice(["left", "right", "bilateral"], p=[0.4, 0.4, 0.2]) if both_ok else rng.choice(["left", "right"]))


def _effusion(att, lungs, x, y, rng):
    side = _side(rng, True)
    out = {}
    for s in (["left", "right"] if side == "bilateral" else [side]):
        m = lungs[s]
        ys = y[m]
        frac = rng.uniform(0.12, 0.45)
        level = ys.max() - frac * (ys.max() - ys.min())
        lateral = np.abs(x) / (np.abs(x[m]).max() + 1e-6)
        fluid = m & (y > level - rng.uniform(10.0, 35.0) * lateral**2)  # meniscus climbing laterally
        att[fluid] += rng.uniform(0.45, 0.8) * np.clip((y[fluid] - level + 40.0) / 40.0, 0.4, 1.0)
        out[s] = {"height_fraction": round(float(frac), 3)}
    return side, out


def _pneumothorax(att, lungs, x, y, rng, ps, lung_w, texture):
    side = _side(rng, False)
    m = lungs[side]
    depth = rng.uniform(10.0, 45.0)
    dist = ndimage.distance_transform_edt(m) * ps
    ys = y[m]
    apex = y < ys.min() + rng.uniform(0.4, 0.7) * (ys.max() - ys.min())
    gas = m & (dist < depth) & apex
    att[gas] -= rng.uniform(0.08, 0.15) + 0.1 * texture[gas]  # no lung markings: texture removed, darker
    line = m & ~gas & ndimage.binary_dilation(gas, iterations=1) & apex
    att[line] += rng.uniform(0.15, 0.35)
    return side, {"depth_mm": round(float(depth), 1)}


def _zone(r: int, m: np.ndarray) -> str:
    rows = np.flatnonzero(m.any(axis=1))
    f = (r - rows[0]) / max(rows[-1] - rows[0], 1)
    return "upper" if f < 0.33 else ("middle" if f < 0.66 else "lower")


def _consolidation(att, lungs, heart, rng, ps):
    side = _side(rng, False)
    m = lungs[side] & ~heart
    pts = np.argwhere(m)
    r0, c0 = pts[rng.integers(len(pts))]
    blob = gaussian_random_field(att.shape, rng, beta=3.0)
    rr, cc = np.mgrid[0 : att.shape[0], 0 : att.shape[1]]
    near = np.hypot(rr - r0, cc - c0) * ps < rng.uniform(30.0, 65.0)
    patch = m & near & (blob > blob[near].mean() - 0.3)
    att[patch] += rng.uniform(0.35, 0.7) * np.clip(1.0 + 0.3 * blob[patch], 0.5, 1.3)
    return side, {"zone": _zone(int(r0), lungs[side]), "area_fraction": round(float(patch.sum() / max(lungs[side].sum(), 1)), 3)}


def _nodule(att, lungs, heart, x, y, rng):
    side = _side(rng, False)
    m = ndimage.binary_erosion(lungs[side] & ~heart, iterations=6)
    m = m if m.any() else lungs[side]
    pts = np.argwhere(m)
    r0, c0 = pts[rng.integers(len(pts))]
    d = rng.uniform(8.0, 32.0)
    phi = np.arctan2(y - y[r0, c0], x - x[r0, c0])
    disc = np.hypot(x - x[r0, c0], y - y[r0, c0]) * _polar_noise(phi, rng, 0.25) <= d / 2
    att[disc] += rng.uniform(0.3, 0.75)
    return side, {"diameter_mm": round(float(d), 1), "centre_px": [int(c0), int(r0)], "zone": _zone(int(r0), lungs[side])}


def _film(att: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Attenuation → a processed film in 0..1: exposure, gamma, contrast, sharpness, collimation, a marker."""
    u = rng.uniform
    img = 1.0 - np.exp(-u(0.7, 2.2) * np.clip(att, 0, None))
    img = img + u(0.0, 0.25) * ~body  # air outside the body is not always black
    if rng.random() < 0.5:
        img = ndimage.gaussian_filter(img, u(0.8, 2.0))
    else:  # edge-enhanced processing (unsharp mask)
        img = img + u(0.3, 1.0) * (img - ndimage.gaussian_filter(img, u(2.0, 5.0)))
    img = np.clip(img, 0, None) ** u(0.6, 1.5)
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * u(0.7, 1.0) + u(0.0, 0.1)
    img = img + rng.standard_normal(img.shape).astype(np.float32) * u(0.005, 0.04)
    nrow, ncol = img.shape
    shutter = u(0.9, 1.0) if rng.random() < 0.5 else u(0.0, 0.05)
    for edge in range(4):
        w = int(u(0.0, 0.08) * (nrow if edge < 2 else ncol))
        if w:
            sl = [(slice(0, w), slice(None)), (slice(nrow - w, nrow), slice(None)), (slice(None), slice(0, w)), (slice(None), slice(ncol - w, ncol))][edge]
            img[sl] = shutter
    r0, c0 = int(u(0.05, 0.15) * nrow), int(u(0.05, 0.85) * ncol)
    h = max(6, nrow // 20)
    img[r0 : r0 + h, c0 : c0 + 2] = 1.0  # a lead "L" marker: burnt white
    img[r0 + h - 2 : r0 + h, c0 : c0 + h // 2 + 2] = 1.0
    return img

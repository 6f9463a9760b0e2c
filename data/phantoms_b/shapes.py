"""Family B's shape and texture primitives: signed-distance fields of randomly deformed star-shaped
bodies, smooth unions and differences of them, height-field surfaces, and Gaussian random fields.

Family A (``data.phantoms.geometry``) draws superquadrics with a sinusoidal wobble, rotated about z
only, and sums 2D fields for texture. Family B measures shapes as signed distances (mm, negative
inside) of bodies whose radius is a random smooth function of direction, rotated in 3D, combined by
polynomial smooth-min; texture is 3D noise shaped in the Fourier domain (a power law), so a model
that learnt family A's look has nothing of it to key on here.

Grids are axis-aligned (any signs): a volume's affine is diagonal, possibly with flipped axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["GridB", "StarBody", "random_rotation", "smooth_union", "smooth_subtract", "gaussian_random_field",
           "largest_feret_mm"]


@dataclass
class GridB:
    """An axis-aligned grid: ``shape`` (I, J, K) and a diagonal voxel → RAS mm ``affine`` (signs free)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.prod(np.diag(self.affine)[:3]))) / 1000.0

    def axes_mm(self, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable RAS coordinates ``x (n,1,1)``, ``y (1,m,1)``, ``z (1,1,p)`` (float32 mm) of ``box``."""
        box = box or tuple(slice(0, s) for s in self.shape)
        out = []
        for a, sl in enumerate(box):
            idx = np.arange(sl.start, sl.stop, dtype=np.float32)
            v = np.float32(self.affine[a, 3]) + np.float32(self.affine[a, a]) * idx
            shape = [1, 1, 1]
            shape[a] = len(idx)
            out.append(v.reshape(shape))
        return out[0], out[1], out[2]

    def box_around(self, centre_mm, reach_mm: float) -> tuple[slice, slice, slice] | None:
        """Index slices covering a cube of half-side ``reach_mm`` around ``centre_mm`` (None when off-grid)."""
        lo, hi = [], []
        for a in range(3):
            step, origin = self.affine[a, a], self.affine[a, 3]
            ends = sorted(((centre_mm[a] - reach_mm - origin) / step, (centre_mm[a] + reach_mm - origin) / step))
            lo.append(max(0, int(np.floor(ends[0]))))
            hi.append(min(self.shape[a], int(np.ceil(ends[1])) + 1))
        if any(h <= l for l, h in zip(lo, hi)):
            return None
        return tuple(slice(l, h) for l, h in zip(lo, hi))


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A 3x3 rotation about a random axis by up to ``max_deg`` degrees (Rodrigues' formula)."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis) + 1e-12
    ang = np.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)


@dataclass
class StarBody:
    """A star-shaped body: ``|q| <= 1 + roughness * f(q / |q|)`` with ``q = R^T (p - centre) / radii``.

    ``f`` is a sum of ``n_terms`` cosines of random directions (frequencies 1.2–3.5 on the unit sphere),
    normalised to peak about 1: a smooth random surface. ``sdf`` returns an approximate signed distance
    in mm (the radial excess times the smallest radius), good enough for shells and unions.
    """

    centre_mm: np.ndarray
    radii_mm: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    roughness: float = 0.0
    freqs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    phases: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def random(cls, rng: np.random.Generator, centre_mm, radii_mm, *, roughness: float, max_tilt_deg: float = 25.0,
               n_terms: int = 5, max_freq: float = 3.5) -> "StarBody":
        dirs = rng.standard_normal((n_terms, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        freqs = dirs * rng.uniform(1.2, max_freq, (n_terms, 1))
        return cls(np.asarray(centre_mm, dtype=np.float64), np.asarray(radii_mm, dtype=np.float64),
                   random_rotation(rng, max_tilt_deg), float(roughness), freqs, rng.uniform(0, 2 * np.pi, n_terms))

    @property
    def reach_mm(self) -> float:
        """Radius of a sphere around the centre that holds the whole body."""
        return float(self.radii_mm.max() * (1.0 + abs(self.roughness)) + 1.0)

    def sdf(self, grid: GridB, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) on ``box`` of ``grid`` (whole grid by default)."""
        x, y, z = grid.axes_mm(box)
        c = self.centre_mm.astype(np.float32)
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        r = self.rotation.T.astype(np.float32)  # world → body frame
        inv = (1.0 / self.radii_mm).astype(np.float32)
        qx = (r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz) * inv[0]
        qy = (r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz) * inv[1]
        qz = (r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz) * inv[2]
        rho = np.sqrt(qx * qx + qy * qy + qz * qz) + np.float32(1e-6)
        bound = np.float32(1.0)
        if self.roughness and len(self.phases):
            nx, ny, nz = qx / rho, qy / rho, qz / rho
            f = np.zeros(np.broadcast_shapes(qx.shape, qy.shape, qz.shape), dtype=np.float32)
            for w, ph in zip(self.freqs.astype(np.float32), self.phases.astype(np.float32)):
                f += np.cos(w[0] * nx + w[1] * ny + w[2] * nz + ph)
            bound = np.float32(1.0) + np.float32(self.roughness) * f / np.float32(np.sqrt(len(self.phases)))
        return (rho - bound) * np.float32(self.radii_mm.min())

    def box(self, grid: GridB) -> tuple[slice, slice, slice] | None:
        return grid.box_around(self.centre_mm, self.reach_mm)


def smooth_union(a: np.ndarray, b: np.ndarray, k_mm: float) -> np.ndarray:
    """Polynomial smooth minimum of two signed distances (blends over ``k_mm``): organs of several lobes."""
    h = np.clip(0.5 + 0.5 * (b - a) / k_mm, 0.0, 1.0)
    return b * (1 - h) + a * h - k_mm * h * (1 - h)


def smooth_subtract(a: np.ndarray, b: np.ndarray, k_mm: float) -> np.ndarray:
    """``a`` with ``b`` carved out, blended over ``k_mm`` (a kidney's hilum, a spleen's concave face)."""
    return -smooth_union(-a, b, k_mm) if k_mm > 0 else np.maximum(a, -b)


def gaussian_random_field(shape: tuple[int, ...], rng: np.random.Generator, *, beta: float, cutoff: float = 0.0,
                          spacing=None) -> np.ndarray:
    """Zero-mean, unit-variance noise with power spectrum ``1 / f^beta`` (FFT-shaped; numpy.fft does the work).

    beta 0 is white noise, 2–3 is cloudy texture; ``cutoff`` (cycles / mm) removes frequencies above it
    (spatially correlated CT noise)."""
    spacing = spacing or (1.0,) * len(shape)
    white = rng.standard_normal(shape).astype(np.float32)
    spec = np.fft.rfftn(white)
    freqs = np.meshgrid(*[np.fft.fftfreq(n, d) for n, d in zip(shape[:-1], spacing[:-1])],
                        np.fft.rfftfreq(shape[-1], spacing[-1]), indexing="ij", sparse=True)
    f = np.sqrt(sum(q.astype(np.float32) ** 2 for q in freqs))
    f[(0,) * len(shape)] = np.inf
    gain = f ** np.float32(-beta / 2.0)
    if cutoff:
        gain = gain * np.exp(-((f / np.float32(cutoff)) ** 2))
    out = np.fft.irfftn(spec * gain, s=shape).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-6)


def largest_feret_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (mm) between two voxel centres of ``mask``, brute force over its surface voxels
    (written here so family B's truth does not reuse family A's measuring code)."""
    from scipy import ndimage

    surface = mask & ~ndimage.binary_erosion(mask)
    pts = np.argwhere(surface).astype(np.float64)
    if len(pts) == 0:
        return 0.0
    pts = pts @ np.asarray(affine, dtype=np.float64)[:3, :3].T
    if len(pts) > 3000:
        pts = pts[np.random.default_rng(0).choice(len(pts), 3000, replace=False)]
    best = 0.0
    for i in range(0, len(pts), 500):
        d = ((pts[i:i + 500, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d.max()))
    return float(np.sqrt(best))

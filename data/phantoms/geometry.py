"""Shapes on a voxel grid for the phantom generators: the grid, deformed superquadrics, measurements.

Every shape is evaluated only inside its bounding box (index slices), so drawing stays fast on a
512×512×300 grid. Coordinates are RAS millimetres; grids are axis-aligned (diagonal affine with
signs), which is what the generators build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Grid", "axial_affine", "Superquadric", "max_diameter_mm", "paint"]


def axial_affine(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], centre_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel → RAS affine of a standard axial DICOM stack centred on ``centre_mm``.

    ``i`` (column) runs to the patient's left, ``j`` (row) to posterior, ``k`` (slice) to superior:
    DICOM ImageOrientationPatient ``1\\0\\0\\0\\1\\0`` in LPS, i.e. columns ``(-sx, 0, 0)``, ``(0, -sy, 0)``,
    ``(0, 0, sz)`` in RAS.
    """
    sx, sy, sz = (float(s) for s in spacing_mm)
    aff = np.diag([-sx, -sy, sz, 1.0])
    half = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    aff[:3, 3] = np.asarray(centre_mm, dtype=np.float64) - aff[:3, :3] @ half
    return aff


@dataclass
class Grid:
    """An axis-aligned voxel grid: ``shape`` (I, J, K) and a diagonal ``affine`` voxel → RAS mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def step(self) -> np.ndarray:
        """Signed mm per voxel along i, j, k (the affine's diagonal)."""
        return np.diag(self.affine)[:3].copy()

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.prod(self.step))) / 1000.0

    def axis_mm(self, axis: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """RAS coordinate (mm) of voxel centres along one axis, indices ``lo:hi``."""
        hi = self.shape[axis] if hi is None else hi
        return self.affine[axis, 3] + self.step[axis] * np.arange(lo, hi, dtype=np.float32)

    def index_of(self, point_mm) -> np.ndarray:
        """Nearest voxel index (may lie outside the grid) of an RAS point."""
        p = np.asarray(point_mm, dtype=np.float64)
        return np.rint((p - self.affine[:3, 3]) / self.step).astype(int)

    def box(self, centre_mm, half_extent_mm) -> tuple[slice, slice, slice] | None:
        """Index slices covering ``centre ± half_extent`` (mm), clipped to the grid; None if outside."""
        c = np.asarray(centre_mm, dtype=np.float64)
        h = np.abs(np.asarray(half_extent_mm, dtype=np.float64))
        a = (c - h - self.affine[:3, 3]) / self.step
        b = (c + h - self.affine[:3, 3]) / self.step
        lo = np.floor(np.minimum(a, b)).astype(int)
        hi = np.ceil(np.maximum(a, b)).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(l), int(h_)) for l, h_ in zip(lo, hi))

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable RAS coordinates ``x (n,1,1), y (1,m,1), z (1,1,p)`` of a box, float32 mm."""
        x = self.axis_mm(0, box[0].start, box[0].stop)[:, None, None]
        y = self.axis_mm(1, box[1].start, box[1].stop)[None, :, None]
        z = self.axis_mm(2, box[2].start, box[2].stop)[None, None, :]
        return x, y, z


@dataclass
class Superquadric:
    """A smoothly deformed superquadric: ``Σ |u_a / r_a|^p <= (1 + wobble(u))^p``.

    centre_mm: RAS centre; radii_mm: semi-axes along the (rotated) x, y, z; exponent: 2 is an
    ellipsoid, larger is boxier; yaw_deg: rotation about the z axis; wobble: amplitude (fraction of the
    radius) of a smooth low-frequency surface deformation whose phases come from ``phases``.
    """

    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    exponent: float = 2.0
    yaw_deg: float = 0.0
    wobble: float = 0.0
    phases: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def random_phases(cls, rng: np.random.Generator) -> tuple[float, float, float]:
        return tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 3))

    def mask(self, grid: Grid) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """``(box, inside)``: index slices and a boolean array of the shape inside them (None if off-grid)."""
        r = np.asarray(self.radii_mm, dtype=np.float64)
        grow = 1.0 + 1.5 * abs(self.wobble)  # the wobble term below reaches at most 1.5 × its amplitude
        half = r * grow
        if self.yaw_deg:
            half[:2] = r[:2].max() * grow
        box = grid.box(self.centre_mm, half)
        if box is None:
            return None
        x, y, z = grid.coords(box)
        x = x - np.float32(self.centre_mm[0])
        y = y - np.float32(self.centre_mm[1])
        z = z - np.float32(self.centre_mm[2])
        if self.yaw_deg:
            c, s = np.float32(np.cos(np.radians(self.yaw_deg))), np.float32(np.sin(np.radians(self.yaw_deg)))
            x, y = c * x + s * y, -s * x + c * y  # (n, m, 1) each
        p = np.float32(self.exponent)
        ux, uy, uz = x / np.float32(r[0]), y / np.float32(r[1]), z / np.float32(r[2])
        d = np.abs(ux) ** p + np.abs(uy) ** p + np.abs(uz) ** p
        if self.wobble:
            a, b, g = (np.float32(v) for v in self.phases)
            w = np.float32(self.wobble)
            bound = 1.0 + w * (np.sin(np.float32(2.3) * ux + a) * np.sin(np.float32(1.9) * uy + b) + np.float32(0.5) * np.sin(np.float32(2.7) * uz + g))
            inside = d <= bound**p
        else:
            inside = d <= 1.0
        return box, np.broadcast_to(inside, tuple(s.stop - s.start for s in box))


def paint(tissue: np.ndarray, grid: Grid, shape: Superquadric, code: int, *, only_in: tuple[int, ...] | None = None):
    """Write ``code`` into ``tissue`` inside ``shape`` (restricted to voxels whose code is in ``only_in``).

    Returns ``(box, painted)`` — index slices and the painted-voxel mask inside them — or None when
    nothing was painted.
    """
    got = shape.mask(grid)
    if got is None:
        return None
    box, inside = got
    view = tissue[box]
    if only_in is not None:
        inside = inside & np.isin(view, np.asarray(only_in, dtype=view.dtype))
    if not inside.any():
        return None
    view[inside] = code
    return box, inside


def max_diameter_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (mm) between two voxel centres of ``mask`` (maximum Feret diameter), 0 if empty.

    Uses the convex hull of the voxel centres, so it is exact on the voxel grid and fast for large masks.
    """
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return 0.0
    pts = idx @ np.asarray(affine, dtype=np.float64)[:3, :3].T
    if len(idx) > 4:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # flat (single slice or line) lesions: fall back to all points
            pts = pts[:: max(1, len(pts) // 2000)] if len(pts) > 4000 else pts
    diff = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())

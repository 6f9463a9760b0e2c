"""Plausible geometry: voxel sizes, orientations and affines that display and measure.

Every format's reader checks what it reads (DICOM pixel spacing at the top level and in functional
groups, NIfTI and ITK affines) and :func:`validate_volume` checks every loaded volume once more before
it leaves ingest: a spacing of 0, NaN, infinity or 1e308 mm, collinear or missing axes and singular
affines are repaired (1 mm voxels, an axial orientation, the origin at 0) with a warning the viewer
shows, so a loaded study always displays; a volume with no voxels or an unusable channel count is
refused.
"""

from __future__ import annotations

import math

import numpy as np

from data.errors import IngestError
from data.study import Volume

__all__ = ["SPACING_RANGE_MM", "ORIGIN_LIMIT_MM", "plausible_spacing", "unit_orientation", "checked_affine",
           "validate_volume"]

SPACING_RANGE_MM = (1e-4, 1e4)  # 0.1 µm (microscopy) to 10 m
ORIGIN_LIMIT_MM = 1e6
_MAX_CONDITION = 1e4  # of the unit-column direction matrix: shear up to ~89.99°
_AXES = "ijk"


def plausible_spacing(value: float) -> bool:
    """Whether ``value`` mm is a finite voxel size in :data:`SPACING_RANGE_MM`."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(v) and SPACING_RANGE_MM[0] <= v <= SPACING_RANGE_MM[1]


def unit_orientation(values: np.ndarray | None) -> np.ndarray | None:
    """Image Orientation ``(6,)`` (row then column direction cosines) normalised, or ``None`` when a
    vector is not finite, nearly zero, or the two are nearly parallel."""
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (6,) or not np.all(np.isfinite(v)):
        return None
    row, col = v[:3], v[3:]
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if not (1e-3 < nr < 1e3 and 1e-3 < nc < 1e3):
        return None
    row, col = row / nr, col / nc
    if float(np.linalg.norm(np.cross(row, col))) < 1e-3:
        return None
    return np.concatenate([row, col])


def checked_affine(affine: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``affine`` (4, 4) voxel → RAS mm with implausible parts repaired, and a warning per repair."""
    a = np.array(affine, dtype=np.float64)
    warnings: list[str] = []
    with np.errstate(all="ignore"):
        m, origin = a[:3, :3], a[:3, 3]
        norms = np.linalg.norm(m, axis=0)
        spacing = []
        for axis, norm in enumerate(norms):
            if plausible_spacing(norm):
                spacing.append(float(norm))
            else:
                spacing.append(1.0)
                warnings.append(f"voxel size along {_AXES[axis]} is {float(norm):.3g} mm, expected "
                                f"{SPACING_RANGE_MM[0]:g} to {SPACING_RANGE_MM[1]:g} mm: 1 mm is assumed; measurements "
                                "are not in mm.")
        directions = m / np.where(norms > 0, norms, 1.0)
        usable = bool(np.all(np.isfinite(directions)) and np.all(norms > 0))
        if usable:
            try:
                usable = float(np.linalg.cond(directions)) < _MAX_CONDITION
            except np.linalg.LinAlgError:
                usable = False
        if not usable:
            directions = np.diag([-1.0, -1.0, 1.0])
            warnings.append("voxel axes are missing, not finite or collinear (singular affine): an axial orientation "
                            "is assumed; left/right and measurements may be wrong.")
        if not (np.all(np.isfinite(origin)) and np.all(np.abs(origin) <= ORIGIN_LIMIT_MM)):
            origin = np.zeros(3)
            warnings.append(f"image position is not finite or beyond {ORIGIN_LIMIT_MM:g} mm: placed at the origin.")
    if not warnings and np.array_equal(a[3], [0.0, 0.0, 0.0, 1.0]):
        return a, []
    out = np.eye(4)
    out[:3, :3] = directions * np.asarray(spacing)
    out[:3, 3] = origin
    return out, warnings


def validate_volume(volume: Volume, name: str | None = None) -> list[str]:
    """Check a loaded volume displays: repairs its affine in place and returns the warnings; raises
    :class:`IngestError` (``name``: the file) for one with no voxels or other than 1 or 3 channels."""
    shape = volume.array.shape
    if any(int(s) < 1 for s in shape):
        raise IngestError(f"image has no voxels (shape {tuple(int(s) for s in shape)}); nothing to display.", name)
    if volume.array.ndim == 4 and shape[3] != 3:
        raise IngestError(f"image has {shape[3]} channels per voxel, expected 1 (grey) or 3 (RGB).", name)
    if volume.array.dtype.kind not in "biuf":
        raise IngestError(f"image values are of type {volume.array.dtype}, expected numbers.", name)
    affine, warnings = checked_affine(volume.affine)
    volume.affine = affine
    return warnings

"""Where DICOM frames sit: ordering along the slice normal, splitting repeated positions, the RAS affine and
the spacing checks (gaps, uneven steps, gantry tilt).

The affine maps ``(i=column, j=row, k=slice)`` to RAS mm: DICOM's LPS position
``P + i·Δcol·r + j·Δrow·c + k·step`` (PS3.3 C.7.6.2.1.1) with x and y negated.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from data.dicom import DicomFile, header_value
from data.geometry import plausible_spacing

__all__ = ["Frame", "LPS_TO_RAS", "order_frames", "frame_affine", "positive"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NEEDS_GEOMETRY = {"CT", "MR", "PT", "NM"}  # modalities whose images must carry position and spacing


@dataclass(slots=True)
class Frame:
    """One 2D frame of a file with its plane geometry (LPS) and rescale."""

    file: DicomFile
    index: int  # frame number within its file
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float


def order_frames(part: list[Frame]) -> list[tuple[list[Frame], list[str]]]:
    """Order by position along the normal; split repeated positions into volumes."""
    placed = part[0].orientation is not None and all(fr.position is not None for fr in part)
    if not placed or len(part) == 1:
        part = sorted(part, key=lambda fr: (fr.file.order, fr.file.name, fr.index))
        warns = [] if len(part) == 1 else [f"{len(part)} images have no slice position: ordered by instance / frame "
                                           "number; slice spacing is not known."]
        return [(part, warns)]
    normal = np.cross(part[0].orientation[:3], part[0].orientation[3:])
    dist = [round(float(fr.position @ normal), 2) for fr in part]
    order = sorted(range(len(part)), key=lambda i: (dist[i], part[i].file.order, part[i].file.name, part[i].index))
    counts = Counter(dist)
    repeats = set(counts.values())
    if repeats == {1}:
        return [([part[i] for i in order], [])]
    if len(repeats) == 1:  # every position holds m images: m volumes (time points, echoes, repeats)
        m = repeats.pop()
        groups: list[list[Frame]] = [[] for _ in range(m)]
        seen: Counter = Counter()
        for i in sorted(range(len(part)), key=lambda i: (part[i].file.order, part[i].file.name, part[i].index, dist[i])):
            groups[seen[dist[i]]].append(part[i])
            seen[dist[i]] += 1
        warn = f"{m} images at every slice position (time points, echoes or repeats): split into {m} volumes."
        return [(sorted(g, key=lambda fr: float(fr.position @ normal)), [warn]) for g in groups]
    kept, dropped, seen_d = [], 0, set()
    for i in order:
        if dist[i] in seen_d:
            dropped += 1
            continue
        seen_d.add(dist[i])
        kept.append(part[i])
    return [(kept, [f"{dropped} images repeat a slice position already loaded and were dropped."])]


def frame_affine(stack: list[Frame]) -> tuple[np.ndarray, list[str], dict]:
    """RAS affine of ordered frames, geometry warnings and facts for ``Volume.meta``."""
    first, f0 = stack[0], stack[0].file
    modality, warnings, meta = f0.modality, [], {}
    orientation = first.orientation
    meta["orientation_assumed"] = orientation is None
    if orientation is None:
        orientation = np.array([1.0, 0, 0, 0, 1.0, 0])
        if modality in _NEEDS_GEOMETRY:
            warnings.append("no Image Orientation (Patient): an axial orientation is assumed.")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    spacing = first.pixel_spacing
    meta["spacing_source"] = f0.spacing_source if spacing is not None else "assumed"
    if spacing is None:
        spacing = (1.0, 1.0)
        if modality in _NEEDS_GEOMETRY:
            warnings.append("no Pixel Spacing: 1 mm pixels are assumed; measurements are not in mm.")
    thickness = _thickness(header_value(f0.ds, "SpacingBetweenSlices")) or _thickness(header_value(f0.ds, "SliceThickness")) \
        or 1.0
    positions = [fr.position for fr in stack]
    placed = all(p is not None for p in positions)
    origin = positions[0] if placed else np.zeros(3)
    step = normal * thickness
    if placed and len(stack) > 1:
        step, spacing_warnings = _slice_step(np.asarray(positions), normal)
        warnings.extend(spacing_warnings)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]  # i runs along a row: column spacing
    affine[:3, 1] = col_dir * spacing[0]  # j runs down a column: row spacing
    affine[:3, 2] = step
    affine[:3, 3] = origin
    meta["slice_thickness_mm"] = _thickness(header_value(f0.ds, "SliceThickness"))
    return LPS_TO_RAS @ affine, warnings, meta


def _slice_step(positions: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Median step vector between consecutive slices, with warnings for gaps, unevenness and tilt."""
    with np.errstate(all="ignore"):
        diffs = np.diff(positions, axis=0)  # (K-1, 3)
        dist = diffs @ normal
    median = float(np.median(dist)) if np.all(np.isfinite(dist)) else float("nan")
    if not plausible_spacing(median):
        return normal * 1.0, [f"slice positions do not give a usable slice spacing (median step {median:.3g} mm): "
                              "1 mm is assumed; measurements along the slice axis are not in mm."]
    step = np.median(diffs, axis=0)
    warnings = []
    tolerance = max(0.01 * median, 0.01)
    off = np.abs(dist - median) > tolerance
    if np.any(off):
        gaps = np.nonzero(dist > 1.5 * median)[0]
        for k in gaps[:5]:
            missing = int(round(dist[k] / median)) - 1
            warnings.append(f"gap between slices {k} and {k + 1}: {dist[k]:.2f} mm instead of {median:.2f} mm "
                            f"(about {missing} slice(s) missing); geometry uses the median spacing.")
        if len(gaps) > 5:
            warnings.append(f"{len(gaps) - 5} more gaps between slices.")
        if np.any(off & (dist <= 1.5 * median)):
            warnings.append(f"uneven slice spacing: steps from {dist.min():.3f} to {dist.max():.3f} mm "
                            f"(median {median:.3f} mm); geometry uses the median spacing.")
    cos = abs(float(step @ normal)) / max(float(np.linalg.norm(step)), 1e-9)
    tilt = math.degrees(math.acos(min(1.0, cos)))
    if tilt > 0.5:
        warnings.append(f"slices are sheared by {tilt:.1f}° (gantry tilt): the affine carries the shear; "
                        "resample before measuring along the slice axis.")
    return step, warnings


def _thickness(value) -> float | None:
    v = positive(value)
    return v if v is not None and plausible_spacing(v) else None


def positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if v > 0 and math.isfinite(v) else None

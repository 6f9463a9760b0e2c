"""Measurements on label maps: structure volumes (mL), lesion counts (connected components) and the
largest lesion diameter (mm, maximum Feret diameter, as the phantom ground truth defines it); and the
connected-component clean-up of a predicted map (hand-written with scipy: MONAI's
``KeepLargestConnectedComponent`` needs scikit-image, which the runtime does not ship)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from data.phantoms.geometry import max_diameter_mm
from data.study import Volume

__all__ = ["LesionStats", "structure_volume_ml", "lesion_stats", "drop_small_components", "keep_largest_component",
           "drop_detached_components", "mean_attenuation", "contrast_phase", "lesion_sides"]

_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connected, as radiologists count lesions


@dataclass
class LesionStats:
    """Connected components of one lesion label: count and largest diameter (mm) / volume (mL)."""

    count: int
    largest_diameter_mm: float
    total_volume_ml: float


def mean_attenuation(image: np.ndarray, labels: np.ndarray, value: int, *, min_voxels: int = 20) -> float | None:
    """Mean HU inside ``value`` eroded by one voxel (its rim mixes with the neighbours), the whole
    structure when erosion leaves too little; None when fewer than ``min_voxels`` voxels carry it."""
    mask = labels == value
    if np.count_nonzero(mask) < min_voxels:
        return None
    core = ndimage.binary_erosion(mask)
    return float(np.asarray(image, dtype=np.float32)[core if np.count_nonzero(core) >= min_voxels else mask].mean())


def contrast_phase(aorta_hu: float, liver_hu: float) -> str:
    """The contrast phase from the enhancement of the aorta and the liver, a hand-written rule (no library
    ships one): unenhanced blood reads ~40 HU, arterial-phase aorta 250-350 HU with an unenhanced liver,
    portal-venous aorta ~150-200 HU with the liver enhanced to ~100-120 HU. Delayed phases are not told
    apart from portal venous."""
    if aorta_hu < 100.0:
        return "non-contrast"
    if aorta_hu >= 220.0 and aorta_hu - liver_hu >= 120.0:
        return "arterial"
    return "portal venous"


def structure_volume_ml(labels: np.ndarray, value: int, grid: Volume) -> float:
    """Volume (mL) of the voxels equal to ``value`` on ``grid``'s voxel size."""
    return float(np.count_nonzero(labels == value)) * grid.voxel_volume_ml


def lesion_stats(labels: np.ndarray, value: int, grid: Volume, *, diameters_of: int = 3) -> LesionStats:
    """Component count and the largest maximum-Feret diameter among the ``diameters_of`` biggest
    components (a long thin lesion can out-measure a rounder, larger one)."""
    found = _components(labels, value)
    if found is None:
        return LesionStats(0, 0.0, 0.0)
    box, comps, count = found
    sizes = np.bincount(comps.ravel())[1:]
    biggest = np.argsort(sizes)[::-1][:diameters_of] + 1
    objects = ndimage.find_objects(comps)
    diameter = 0.0
    for lab in biggest:
        sub_box = objects[lab - 1]
        sub = comps[sub_box] == lab
        offset = np.eye(4)
        offset[:3, 3] = [b.start + s.start for b, s in zip(box, sub_box)]
        diameter = max(diameter, max_diameter_mm(sub, grid.affine @ offset))
    return LesionStats(int(count), diameter, float(sizes.sum()) * grid.voxel_volume_ml)


def lesion_sides(labels: np.ndarray, value: int, grid: Volume, midline_value: int | None = None) -> list[str]:
    """The sides of the body ("left", "right") the components of ``value`` lie on: each component's centre against
    the midline — the centre of ``midline_value``'s voxels (the spine) when the map has them, else RAS x = 0."""
    found = _components(labels, value)
    if found is None:
        return []
    box, comps, count = found
    affine = np.asarray(grid.affine, dtype=np.float64)
    midline = 0.0
    if midline_value is not None and np.any(labels == midline_value):
        centre = np.argwhere(labels == midline_value).mean(0)
        midline = float((affine @ np.append(centre, 1.0))[0])
    offset = np.array([b.start for b in box], dtype=np.float64)
    centres = ndimage.center_of_mass(comps > 0, comps, range(1, count + 1))
    sides = {"left" if float((affine @ np.append(np.asarray(c) + offset, 1.0))[0]) < midline else "right" for c in centres}
    return [s for s in ("left", "right") if s in sides]


def drop_small_components(labels: np.ndarray, value: int, min_voxels: int) -> int:
    """Set components of ``value`` smaller than ``min_voxels`` to background (in place); returns how
    many were dropped (specks left by resampling are not lesions)."""
    found = _components(labels, value) if min_voxels > 1 else None
    if found is None:
        return 0
    box, comps, _ = found
    return _drop_counted_under(labels, box, comps, np.bincount(comps.ravel()), min_voxels)


def drop_components_without(labels: np.ndarray, value: int, inside: np.ndarray, min_voxels: int) -> int:
    """Set components of ``value`` holding fewer than ``min_voxels`` voxels of the mask ``inside`` to
    background (in place); returns how many were dropped (a brain "tumour" of oedema alone, no core)."""
    found = _components(labels, value)
    if found is None:
        return 0
    box, comps, count = found
    return _drop_counted_under(labels, box, comps, np.bincount(comps[inside[box]].ravel(), minlength=count + 1), min_voxels)


def _drop_counted_under(labels: np.ndarray, box: tuple, comps: np.ndarray, counts: np.ndarray, min_voxels: int) -> int:
    """Zero, in ``labels[box]``, the components (numbered in ``comps``) whose ``counts`` fall under ``min_voxels``."""
    under = np.flatnonzero(counts < min_voxels)
    under = under[under > 0]
    if len(under):
        labels[box][np.isin(comps, under)] = 0
    return int(len(under))


def keep_largest_component(labels: np.ndarray, value: int) -> int:
    """Keep only the largest connected component of ``value`` (an organ is one piece); the other
    components become background (in place). Returns how many voxels were removed."""
    found = _components(labels, value)
    if found is None or found[2] <= 1:
        return 0
    box, comps, _ = found
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    stray = (comps > 0) & (comps != int(sizes.argmax()))
    labels[box][stray] = 0
    return int(stray.sum())


def drop_detached_components(labels: np.ndarray, value: int, parents: Sequence[int], gap_voxels: int = 1) -> int:
    """Set components of ``value`` that do not touch (within ``gap_voxels``) any voxel of ``parents``
    to background, in place: a liver tumour lies in the liver, a cyst in a kidney. Returns how many
    components were dropped."""
    found = _components(labels, value)
    if found is None:
        return 0
    box, comps, _ = found
    dropped = []
    for lab, sub_box in enumerate(ndimage.find_objects(comps), start=1):
        start = [b.start + c.start for b, c in zip(box, sub_box)]  # the component's box on the whole grid
        grown = tuple(slice(max(0, a - gap_voxels), a + (c.stop - c.start) + gap_voxels) for a, c in zip(start, sub_box))
        region = labels[grown]
        mask = np.zeros(region.shape, dtype=bool)
        mask[tuple(slice(a - g.start, a - g.start + (c.stop - c.start)) for a, g, c in zip(start, grown, sub_box))] = comps[sub_box] == lab
        near = ndimage.binary_dilation(mask, structure=_CONNECTIVITY, iterations=gap_voxels)
        if not np.isin(region[near], parents).any():
            dropped.append(lab)
    if dropped:
        labels[box][np.isin(comps, dropped)] = 0
    return len(dropped)


def _components(labels: np.ndarray, value: int) -> tuple[tuple[slice, ...], np.ndarray, int] | None:
    """26-connected components of ``value`` inside its bounding box: ``(box, component map, count)``."""
    box = _bounding_box(labels, value)
    if box is None:
        return None
    comps, count = ndimage.label(labels[box] == value, structure=_CONNECTIVITY)
    return box, comps, int(count)


def _bounding_box(labels: np.ndarray, value: int) -> tuple[slice, ...] | None:
    """Index box of the voxels equal to ``value`` (None when there are none)."""
    mask = labels == value
    axes = []
    for axis in range(labels.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(labels.ndim) if a != axis)))
        if hit.size == 0:
            return None
        axes.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(axes)

"""Display: window presets, windowing to 8-bit, and axial / coronal / sagittal reformats.

Reformats follow the radiological convention: axial and coronal views show the patient's right on the
viewer's left; axial has anterior at the top, coronal and sagittal superior at the top, sagittal
anterior on the left. They are taken from the volume reoriented to the closest RAS axes (nibabel), so
any acquisition orientation gives the same picture. Each comes with its pixel size in mm and display
aspect, or resampled to square pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.study import Volume

__all__ = ["WINDOW_PRESETS", "window", "window_for", "default_window", "percentile_window", "Reformat", "reformat",
           "PLANES", "native_axial_index"]

# (centre, width) in HU; common radiology defaults.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
PLANES = ("axial", "coronal", "sagittal")


@dataclass
class Reformat:
    """A 2D view: ``image`` ``(rows, cols)`` or ``(rows, cols, 3)``; pixel size in mm; aspect = height / width."""

    image: np.ndarray
    plane: str
    index: int  # slice index along the plane's normal in the RAS-reoriented volume (0 = right/posterior/inferior end)
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns)

    @property
    def aspect(self) -> float:
        """Display aspect of one pixel (height ÷ width), e.g. for ``imshow(aspect=...)``."""
        return self.pixel_spacing_mm[0] / self.pixel_spacing_mm[1]


def window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window to ``uint8``: ``center - width/2`` → 0, ``center + width/2`` → 255 (RGB uint8 passes through)."""
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}.")
    if array.dtype == np.uint8 and array.ndim >= 3 and array.shape[-1] == 3:
        return array
    lo = center - width / 2.0
    scaled = (np.asarray(array, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / width)
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def percentile_window(array: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """(centre, width) spanning the ``low``–``high`` percentiles (on at most ~1M sampled voxels)."""
    flat = np.asarray(array).ravel(order="K")
    sample = flat[:: max(1, flat.size // 1_000_000)]
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    return (lo + hi) / 2.0, hi - lo


def default_window(volume: Volume) -> tuple[float, float]:
    """The header's window if any, else CT abdomen, else the 1–99 percentile window."""
    if volume.window is not None:
        return volume.window
    if volume.modality == "CT":
        return WINDOW_PRESETS["abdomen"]
    return percentile_window(volume.array)


def window_for(volume: Volume, preset: str = "default") -> tuple[float, float]:
    """(centre, width) for a preset name (CT presets), ``"percentile"`` or ``"default"``."""
    if preset == "default":
        return default_window(volume)
    if preset == "percentile":
        return percentile_window(volume.array)
    if preset in WINDOW_PRESETS:
        return WINDOW_PRESETS[preset]
    raise ValueError(f"window preset must be one of {['default', 'percentile', *WINDOW_PRESETS]}, got {preset!r}.")


def reformat(volume: Volume, plane: str = "axial", index: int | None = None, *,
             square_pixels: bool = False) -> Reformat:
    """One slice of ``volume`` in ``plane`` (middle slice by default); 2D volumes give their native image.

    ``square_pixels=True`` resamples (linear) the coarser axis to the finer spacing, so aspect is 1.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}.")
    if volume.is_2d:
        image = np.swapaxes(volume.array[:, :, 0], 0, 1)  # (i, j) → (rows=j, cols=i)
        sx, sy, _ = volume.spacing
        out = Reformat(image=image, plane="native", index=0, pixel_spacing_mm=(sy, sx))
        return _square(out) if square_pixels else out
    array, spacing = _canonical(volume)
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    n = array.shape[axis]
    index = n // 2 if index is None else int(index)
    if not 0 <= index < n:
        raise ValueError(f"{plane} index must be in [0, {n - 1}], got {index}.")
    sx, sy, sz = spacing
    if plane == "axial":  # rows: anterior → posterior, columns: right → left
        image, px = np.swapaxes(array[::-1, ::-1, index], 0, 1), (sy, sx)
    elif plane == "coronal":  # rows: superior → inferior, columns: right → left
        image, px = np.swapaxes(array[::-1, index, ::-1], 0, 1), (sz, sx)
    else:  # sagittal: rows superior → inferior, columns anterior → posterior
        image, px = np.swapaxes(array[index, ::-1, ::-1], 0, 1), (sz, sy)
    out = Reformat(image=image, plane=plane, index=index, pixel_spacing_mm=(float(px[0]), float(px[1])))
    return _square(out) if square_pixels else out


def native_axial_index(volume: Volume, index: int) -> int | None:
    """The volume's own third-axis index ``k`` (``array[:, :, k]``) of the axial view's slice ``index``;
    None for a 2D image or a volume whose third axis is not the head–foot one (its axial view is a
    reformat across slices)."""
    from nibabel.orientations import io_orientation

    if volume.is_2d:
        return None
    ornt = io_orientation(volume.affine)
    if int(ornt[2, 0]) != 2:
        return None
    n = volume.shape[2]
    return int(index) if ornt[2, 1] > 0 else n - 1 - int(index)


def _canonical(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array flipped/transposed to the closest RAS axes (views), and its voxel size in mm."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(volume.affine)
    array = apply_orientation(volume.array, ornt)
    affine = volume.affine @ inv_ornt_aff(ornt, volume.shape)
    return array, tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


def _square(view: Reformat) -> Reformat:
    from scipy.ndimage import zoom

    row_mm, col_mm = view.pixel_spacing_mm
    target = min(row_mm, col_mm)
    factors = (row_mm / target, col_mm / target) + ((1.0,) if view.image.ndim == 3 else ())
    if all(abs(f - 1.0) < 1e-6 for f in factors):
        return view
    image = zoom(np.asarray(view.image), factors, order=1, mode="nearest", grid_mode=True)
    return Reformat(image=image, plane=view.plane, index=view.index, pixel_spacing_mm=(target, target))

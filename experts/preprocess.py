"""Input checks and grid changes shared by the experts (MONAI transforms under the hood).

Every expert moves its input onto the model's grid (RAS orientation, model spacing) with MONAI's
``Orientation`` + ``Spacing``, runs, and brings the label map back onto the input's own grid, so the
mask it returns lines up voxel for voxel with the volume the user gave.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from data.study import Volume
from experts.base import ExpertError

__all__ = ["check_volume", "to_model_grid", "labels_to_input_grid", "channel_argmax", "pick_device", "same_grid",
           "labels_onto_grid", "head_mask"]

# refuse inputs whose float32 copy alone would exceed this many voxels (~2 GB): a CT of 1024×1024×512
MAX_VOXELS = 512 * 1024 * 1024


def pick_device() -> torch.device:
    """CUDA when available, otherwise CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_volume(
    volume: Volume,
    expert: str,
    modalities: Sequence[str],
    *,
    min_extent_mm: float = 0.0,
    min_voxels: int = 8,
    max_voxels: int = MAX_VOXELS,
    two_d: bool | None = None,
    role: str = "input",
) -> None:
    """Raise ``ExpertError`` when ``volume`` cannot go through ``expert``: wrong modality, NaN/inf
    voxels, a colour image, too few voxels or too small a field of view (``min_extent_mm`` along every
    in-plane axis), too many voxels for memory, or 2D where 3D is needed (``two_d=False``) and back."""
    if not isinstance(volume, Volume):
        raise ExpertError(f"{expert}: the {role} must be a Volume, got {type(volume).__name__}.")
    if modalities and volume.modality not in modalities:
        raise ExpertError(
            f"{expert}: the {role} must be a {' or '.join(modalities)} image, got modality {volume.modality!r}; "
            f"choose a {'/'.join(modalities)} series."
        )
    if volume.array.ndim == 4:
        raise ExpertError(f"{expert}: the {role} must be greyscale, got a colour image with {volume.array.shape[3]} channels.")
    n = int(np.prod(volume.shape))
    if n > max_voxels:
        raise ExpertError(
            f"{expert}: the {role} has {n / 1e6:.0f} million voxels ({'x'.join(map(str, volume.shape))}), "
            f"more than the {max_voxels / 1e6:.0f} million this server handles; crop or downsample it first."
        )
    if two_d is True and not volume.is_2d:
        raise ExpertError(f"{expert}: expects a single 2D image, got a 3D volume of {volume.shape[2]} slices; pick one radiograph.")
    if two_d is False and min(volume.shape) < 2:
        raise ExpertError(f"{expert}: expects a 3D volume, got a 2D image of shape {volume.shape}; choose a 3D series.")
    if n < min_voxels or (two_d is False and min(volume.shape) < 8):
        raise ExpertError(f"{expert}: the {role} of shape {volume.shape} is too small; it needs at least 8 voxels along each axis.")
    extent = np.asarray(volume.shape[:2], dtype=float) * np.asarray(volume.spacing[:2])
    if min_extent_mm and extent.min() < min_extent_mm:
        raise ExpertError(
            f"{expert}: the {role} covers only {extent.min():.0f} mm in-plane, less than the {min_extent_mm:.0f} mm "
            "this model needs; use a series covering the whole region."
        )
    if not np.isfinite(volume.array).all():
        bad = int((~np.isfinite(volume.array)).sum())
        raise ExpertError(f"{expert}: the {role} has {bad} NaN or infinite voxels; re-export the series or check the rescale tags.")


def same_grid(a: Volume, b: Volume, tol_mm: float = 1e-3) -> bool:
    """Whether two volumes share shape and affine (to ``tol_mm``)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=tol_mm))


def to_model_grid(volume: Volume, spacing_mm: Sequence[float], *, mode: str = "bilinear"):
    """``volume`` as a ``(1, X, Y, Z)`` float32 MONAI ``MetaTensor`` in RAS orientation at ``spacing_mm``.

    Steps already satisfied (RAS axes, same spacing) are skipped, so a volume on the model grid is
    passed through without resampling."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    img = MetaTensor(torch.as_tensor(np.ascontiguousarray(volume.array, dtype=np.float32))[None], affine=torch.as_tensor(volume.affine))
    if not _is_ras(volume.affine):
        img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    if not np.allclose(np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0), spacing_mm, rtol=1e-3):
        img = Spacing(pixdim=tuple(spacing_mm), mode=mode, padding_mode="border")(img)
    return img


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(scores, dim=0)`` for ``(C, ...)`` scores as a running maximum over the channels
    (first index wins ties, as argmax does): a reduction across the outermost axis runs strided and is
    several times slower on a large volume than C contiguous passes."""
    scores = scores.as_subclass(torch.Tensor)  # a plain tensor: MetaTensor ops carry metadata on every pass
    best = scores[0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=scores.device)
    for c in range(1, scores.shape[0]):
        win = scores[c] > best
        index.masked_fill_(win, c)
        torch.maximum(best, scores[c], out=best)
    return index


def labels_to_input_grid(scores, volume: Volume, *, channels: Sequence[int] | None = None, argmax: torch.Tensor | None = None) -> np.ndarray:
    """Argmax of the ``(C, X, Y, Z)`` model-grid ``scores`` (a ``MetaTensor`` with its affine) on the
    grid of ``volume``, as an ``int16`` array of ``volume.shape``.

    Each channel is resampled linearly on its own and a running maximum kept (memory: two float arrays
    of the output size, not C of them); only ``channels`` (default: those winning somewhere on the
    model grid, plus background) are resampled, since the others cannot win after smooth resampling.
    ``argmax``: ``channel_argmax(scores)`` when the caller has it already.
    """
    from monai.transforms import SpatialResample

    src_affine = torch.as_tensor(np.asarray(scores.affine), dtype=torch.float64)
    dst_affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    coarse = channel_argmax(scores) if argmax is None else argmax
    exact = _index_map(np.asarray(src_affine), volume.affine, tuple(coarse.shape), volume.shape)
    if exact is not None:  # same voxels, only reordered/flipped (e.g. LPS-stored input, RAS model grid)
        order, index = exact
        return coarse.cpu().numpy().astype(np.int16).transpose(order)[np.ix_(*index)]
    if channels is None:
        channels = sorted({0, *torch.unique(coarse).tolist()})
    resample = SpatialResample(mode="bilinear", padding_mode="border", dtype=torch.float32)
    best = None
    labels = np.zeros(volume.shape, dtype=np.int16)
    for c in channels:
        ch = scores[c : c + 1].float()
        out = resample(ch, dst_affine=dst_affine, spatial_size=volume.shape)  # (1, I, J, K)
        out = np.asarray(out.detach().cpu()[0])
        if best is None:
            best = out
            labels[:] = c
        else:
            win = out > best
            labels[win] = c
            np.maximum(best, out, out=best)
    return labels


def labels_onto_grid(labels: np.ndarray, affine: np.ndarray, target: Volume) -> np.ndarray:
    """A label map on the grid ``affine`` moved onto ``target``'s grid: exact when the grids hold the same voxels
    (flipped / reordered axes, as after a DICOM round trip), nearest-neighbour resampling otherwise."""
    exact = _index_map(np.asarray(affine, dtype=np.float64), target.affine, labels.shape, target.shape)
    if exact is not None:
        order, index = exact
        return np.asarray(labels).transpose(order)[np.ix_(*index)].astype(np.int16)
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    src = MetaTensor(torch.as_tensor(np.asarray(labels, dtype=np.float32))[None], affine=torch.as_tensor(affine))
    out = SpatialResample(mode="nearest", padding_mode="zeros")(src, dst_affine=torch.as_tensor(target.affine), spatial_size=target.shape)
    return np.rint(np.asarray(out[0])).astype(np.int16)


def head_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask of the head (or body) in a ``(X, Y, Z)`` or ``(C, X, Y, Z)`` image whatever its background:
    exactly zero, noise, or anything darker than tissue. Otsu's threshold on the channel-wise maximum of the
    percentile-scaled image, the largest connected component, holes filled (hand-written Otsu: scikit-image,
    which MONAI's threshold transforms need, is not shipped)."""
    from scipy import ndimage

    a = np.asarray(image, dtype=np.float32)
    a = a[None] if a.ndim == 3 else a
    scaled = []
    for ch in a:
        hi = float(np.percentile(ch, 99.5))
        scaled.append(np.clip(ch / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(ch))
    m = np.max(np.stack(scaled), axis=0)
    mask = m > _otsu(m)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(sizes.argmax())
    mask = ndimage.binary_closing(mask, iterations=2) | mask
    return ndimage.binary_fill_holes(mask)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in 0..1 (maximum between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def _index_map(src: np.ndarray, dst: np.ndarray, src_shape: tuple, dst_shape: tuple):
    """When every voxel of ``dst`` is exactly a voxel of ``src`` (axes permuted/flipped, integer
    shift, inside the grid): ``(axis order, per-axis index arrays)`` such that
    ``src_array.transpose(order)[np.ix_(*index)]`` is the ``dst`` array; otherwise None."""
    t = np.linalg.inv(src) @ dst  # dst voxel index → src voxel index
    r, shift = t[:3, :3], t[:3, 3]
    if not (np.allclose(r, np.round(r), atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-3)):
        return None
    r, shift = np.round(r).astype(int), np.round(shift).astype(int)
    if not (np.abs(r).sum(axis=0) == 1).all() or not (np.abs(r).sum(axis=1) == 1).all():
        return None
    order = [int(np.flatnonzero(r[:, a])[0]) for a in range(3)]  # src axis feeding dst axis a
    index = []
    for a, b in enumerate(order):
        idx = r[b, a] * np.arange(dst_shape[a]) + shift[b]
        if idx.min() < 0 or idx.max() >= src_shape[b]:
            return None
        index.append(idx)
    return order, index


def _is_ras(affine: np.ndarray) -> bool:
    """Axes already ordered and signed as R, A, S (diagonal-dominant, positive)."""
    rot = np.asarray(affine)[:3, :3]
    dominant = np.argmax(np.abs(rot), axis=0)
    return bool(np.array_equal(dominant, [0, 1, 2]) and (rot[dominant, [0, 1, 2]] > 0).all())

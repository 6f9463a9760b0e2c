"""Overlay pictures of expert results: one slice, the coloured mask over it, and a legend (PIL).

Slices are shown the radiological way — axial, patient's right on the image's left, anterior at the
top — whatever the stored axis order, by reorienting with nibabel's orientation tools. A 2D image
(radiograph) is shown as stored (rows = ``j``, columns = ``i``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from data.study import Volume
from experts.base import ExpertResult

__all__ = ["render_overlay", "label_colour", "PALETTE"]

# RGB per label value (value 1 takes PALETTE[0]); colour-blind safe and readable on grey: Okabe-Ito's seven, then
# Paul Tol's "light" set. Ordered so each lesion differs from its organ in hue and lightness (data.phantoms.labels:
# liver 1 orange / liver tumour 10 light blue; lungs 5, 6 / nodule 11 light yellow; kidneys 3, 4 / cyst 12 light cyan).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167),
    (255, 170, 187), (68, 187, 153), (119, 170, 221), (238, 221, 136), (153, 221, 255), (170, 170, 0),
    (238, 136, 102), (221, 221, 221), (187, 204, 51),
)


def label_colour(value: int) -> tuple[int, int, int]:
    """The legend colour of label ``value`` (≥ 1)."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


def render_overlay(
    volume: Volume | Mapping[str, Volume],
    result: ExpertResult,
    slice_index: int | None = None,
    *,
    alpha: float = 0.45,
    min_size_px: int = 384,
) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture: slice ``slice_index`` of ``volume`` (axial index after
    reorientation; default the slice with the most mask voxels, else the middle one), ``result``'s label
    mask blended in with ``alpha``, and a legend naming each colour (or the findings, for a classifier)."""
    from PIL import Image

    vol = _display_volume(volume, result.label_volume)
    image = vol.array.astype(np.float32)
    mask = None
    if result.label_volume is not None:
        mask = np.asarray(result.label_volume.array)
        if mask.shape[:3] != image.shape[:3]:
            raise ValueError(f"overlay: mask shape {mask.shape} must match the volume's {image.shape}.")
    if vol.is_2d:
        img2d = image[:, :, 0].T
        mask2d = None if mask is None else mask[:, :, 0].T
    else:
        image, mask = _to_display_axes(image, vol.affine), (None if mask is None else _to_display_axes(mask, vol.affine))
        if slice_index is None:
            slice_index = int(np.argmax((mask > 0).sum(axis=(0, 1)))) if mask is not None and mask.any() else image.shape[2] // 2
        slice_index = int(np.clip(slice_index, 0, image.shape[2] - 1))
        img2d = image[:, :, slice_index].T
        mask2d = None if mask is None else mask[:, :, slice_index].T
    grey = _window(img2d, vol)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    present: list[int] = []
    if mask2d is not None:
        for value in sorted(int(v) for v in np.unique(mask2d) if v > 0):
            sel = mask2d == value
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(label_colour(value), dtype=np.float32)
            present.append(value)
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    scale = max(1.0, min_size_px / max(picture.size))
    if scale > 1.0:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    entries = [(label_colour(v), result.label_names.get(v, f"label {v}")) for v in present]
    if mask is None:
        entries = [
            (label_colour(1) if f.present else (120, 120, 120), f"{f.label}: {'yes' if f.present else 'no'}"
             + (f" ({f.probability:.2f})" if f.probability is not None else ""))
            for f in result.findings
        ]
    elif not entries:
        entries = [((120, 120, 120), "nothing found on this slice")]
    return np.asarray(_with_legend(picture, entries, title=result.expert))


def _display_volume(volume: Volume | Mapping[str, Volume], mask: Volume | None) -> Volume:
    """The volume to draw: a single one as given; from a dict (MRI sequences) FLAIR, then T1c, ...,
    preferring one on the mask's grid."""
    if isinstance(volume, Volume):
        return volume
    ordered = [volume[k] for k in ("FLAIR", "T1c", "T2", "T1", "CT", "DX") if k in volume] + list(volume.values())
    if mask is not None:
        for v in ordered:
            if v.shape == mask.shape and np.allclose(v.affine, mask.affine, atol=1e-3):
                return v
    return ordered[0]


def _to_display_axes(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorder/flip ``array`` so its axes run to patient Left, Posterior, Superior (axial display)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    transform = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S")))
    return apply_orientation(array, transform)


def _window(img2d: np.ndarray, vol: Volume) -> np.ndarray:
    """Grey levels 0..255 using the volume's default window, or its 1st-99th percentiles."""
    if vol.window is not None:
        centre, width = vol.window
        lo, hi = centre - width / 2.0, centre + width / 2.0
    elif vol.modality == "CT":
        lo, hi = -160.0, 240.0  # soft-tissue window (centre 40, width 400)
    else:
        lo, hi = (float(v) for v in np.percentile(img2d, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img2d - lo) / (hi - lo), 0.0, 1.0) * 255.0


def _with_legend(picture: Any, entries: list[tuple[tuple[int, int, int], str]], title: str) -> Any:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    row = 18
    width = 16 + max([len(title)] + [len(t) for _, t in entries]) * 7 + 30
    height = max(picture.height, 12 + row * (len(entries) + 1))
    canvas = Image.new("RGB", (picture.width + width, height), (0, 0, 0))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = picture.width + 8
    draw.text((x0, 6), title, fill=(255, 255, 255), font=font)
    for n, (colour, text) in enumerate(entries, start=1):
        y = 6 + n * row
        draw.rectangle([x0, y + 2, x0 + 12, y + 14], fill=colour)
        draw.text((x0 + 20, y + 2), text, fill=(255, 255, 255), font=font)
    return canvas

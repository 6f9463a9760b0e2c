"""The slice viewer: one plane of a volume, windowed, with an expert's mask blended in and a legend.

Slices and windows come from ``data.display`` (radiological orientation whatever the stored axis
order; window presets). Pictures are resampled to square millimetres — bilinear for the image, nearest
for the mask — so thick-slice reformats are not squashed and label edges stay exact. Colours are the
experts' own (``experts.overlay.label_colour``), so the viewer, the exported overlays and the legend agree.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from data.display import WINDOW_PRESETS, default_window, reformat, window, window_for
from data.study import Volume
from experts.base import ExpertResult
from experts.overlay import label_colour

__all__ = ["PLANES", "RenderedView", "render_view", "slice_count", "window_presets", "preset_window", "default_window",
           "legend_html", "failure_html", "plane_mask_counts", "SLICE_KEYS_JS"]

PLANES = ("axial", "coronal", "sagittal")
DISPLAY_PX = 512  # longest side of the picture sent to the browser


@dataclass
class RenderedView:
    """A rendered slice: ``image`` ``(H, W, 3)`` uint8, the legend as HTML, and a one-line caption."""

    image: np.ndarray
    legend: str
    caption: str
    index: int
    count: int


def window_presets(volume: Volume) -> list[str]:
    """Window presets offered for ``volume``: ``default``, ``percentile``, and for CT the HU presets of
    ``data.display`` (lung, mediastinum, abdomen, liver, bone, brain)."""
    return ["default", "percentile", *(WINDOW_PRESETS if volume.modality == "CT" else ())]


def preset_window(volume: Volume, preset: str) -> tuple[float, float]:
    """(centre, width) of ``preset`` for ``volume`` (``data.display.window_for``)."""
    return tuple(float(v) for v in window_for(volume, preset))  # type: ignore[return-value]


def slice_count(volume: Volume, plane: str) -> int:
    """Slices available in ``plane`` (1 for a 2D image in every plane)."""
    if volume.is_2d:
        return 1
    return int(_canonical_shape(volume)[_PLANE_AXIS[_check_plane(plane)]])


def render_view(
    volume: Volume,
    plane: str = "axial",
    index: int | None = None,
    window_cw: tuple[float, float] | None = None,
    result: ExpertResult | None = None,
    opacity: float = 0.45,
    title: str = "",
) -> RenderedView:
    """Slice ``index`` (default: the middle) of ``volume`` in ``plane`` with ``window_cw`` (centre, width;
    default the series' own window) and ``result``'s mask blended at ``opacity`` (0..1); ``title`` names the
    expert in the legend (default its name)."""
    plane = "axial" if volume.is_2d else _check_plane(plane)
    count = slice_count(volume, plane)
    index = count // 2 if index is None else int(np.clip(index, 0, count - 1))
    centre, width = window_cw or default_window(volume)

    view = reformat(volume, plane, index)
    size = _display_size(view.image.shape[:2], view.pixel_spacing_mm)
    if view.image.ndim == 3:  # colour picture: shown as stored
        rgb = np.clip(_resize(view.image.astype(np.float32), size, "bilinear"), 0, 255)
    else:
        grey = window(_resize(view.image.astype(np.float32), size, "bilinear"), centre, max(float(width), 1e-6))
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)

    mask, note = _mask_slice(volume, result, plane, index)
    present: list[int] = []
    if mask is not None:
        mask = _resize(mask, size, "nearest")
        for value in (int(v) for v in np.unique(mask) if v > 0):
            present.append(value)
            if opacity > 0:
                sel = mask == value
                rgb[sel] = (1.0 - opacity) * rgb[sel] + opacity * np.asarray(label_colour(value), np.float32)
    picture = np.clip(rgb, 0, 255).astype(np.uint8)
    where = "image" if volume.is_2d else f"{plane} {index + 1}/{count}"
    caption = f"{where} · window C {centre:g} / W {width:g}"
    if note:
        caption += f" · {note}"
    return RenderedView(picture, legend_html(result, present, title), caption, index, count)


def legend_html(result: ExpertResult | None, present_on_slice: list[int] | None = None, title: str = "") -> str:
    """The overlay legend under the expert's ``title`` (default its name): a colour swatch per label, with its
    measurements (e.g. "liver volume: 1626.2 mL") when the expert gave them; labels on the current slice in bold. Classifier
    results list their findings."""
    if result is None:
        return "<div class='m3-legend'><em>No expert overlay. Ask a question or run an expert.</em></div>"
    on_slice = set(present_on_slice or [])
    rows = []
    for value, name in sorted(result.label_names.items()):
        r, g, b = label_colour(value)
        numbers = [m.text() for m in result.measurements if m.structure == name]
        text = html.escape(name) + (f" — {html.escape('; '.join(numbers))}" if numbers else "")
        weight = "bold" if value in on_slice else "normal"
        rows.append(
            f"<li style='font-weight:{weight}'><span class='m3-swatch' style='background:rgb({r},{g},{b})'></span>{text}</li>"
        )
    for f in result.findings:
        prob = f" (probability {f.probability:.2f})" if f.probability is not None else ""
        rows.append(f"<li>{html.escape(f.label)}: {'yes' if f.present else 'no'}{prob}</li>")
    heading = html.escape(title or result.expert)
    return f"<div class='m3-legend'><strong>{heading}</strong><ul>{''.join(rows)}</ul></div>"


def failure_html(title: str, message: str) -> str:
    """A legend box saying that expert ``title`` failed, and why (``message``, in plain words)."""
    return (f"<div class='m3-legend m3-legend-failed' role='alert'><strong>{html.escape(title)} failed</strong>"
            f"<p>{html.escape(message)}</p></div>")


def plane_mask_counts(volume: Volume, mask: np.ndarray, plane: str) -> np.ndarray:
    """Mask voxels (> 0) on each slice of ``plane``, indexed as ``data.display.reformat`` indexes them."""
    if volume.is_2d:
        return np.asarray([int((np.asarray(mask) > 0).sum())])
    from nibabel.orientations import apply_orientation, io_orientation

    ras = apply_orientation(np.asarray(mask) > 0, io_orientation(volume.affine))
    axes = tuple(a for a in range(3) if a != _PLANE_AXIS[_check_plane(plane)])
    return ras.sum(axis=axes)


# The mouse wheel over the viewer (down: next slice), and the arrow and Page keys while the pointer is over it or
# after a click in it (as on the focused slider: up / right +1, Page Up +10 %), move the slice slider and fire its
# input event, as a drag does. Runs once on page load (``Blocks.load``); nothing is fetched.
SLICE_KEYS_JS = """
() => {
  if (window.m3SliceKeys) return;
  window.m3SliceKeys = true;
  const range = () => document.querySelector('#m3-slice input[type=range]');
  const inViewer = (node) => !!(node && node.closest && node.closest('#m3-viewer'));
  let hover = false, picked = false, wheel = 0;
  const step = (delta) => {
    const r = range();
    if (!r || r.disabled) return;
    const value = Math.min(Number(r.max), Math.max(Number(r.min), Number(r.value) + delta));
    if (value === Number(r.value)) return;
    r.value = String(value);
    r.dispatchEvent(new Event('input', {bubbles: true}));
  };
  document.addEventListener('pointerover', (e) => { hover = inViewer(e.target); });
  document.addEventListener('pointerdown', (e) => { picked = inViewer(e.target); });
  document.addEventListener('wheel', (e) => {
    if (!inViewer(e.target)) return;
    e.preventDefault();
    wheel += e.deltaMode === 1 ? e.deltaY * 40 : e.deltaY;  // lines to pixels
    if (Math.abs(wheel) >= 50) {  // one slice per notch (~100 px); a touchpad's small steps add up to one
      step(Math.sign(wheel));
      wheel = 0;
    }
  }, {passive: false});
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (!(hover || picked) || e.altKey || e.ctrlKey || e.metaKey) return;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    const r = range();
    if (!r) return;
    const page = Math.max(1, Math.round((Number(r.max) - Number(r.min) + 1) / 10));
    // the directions of the slider itself when it has the focus: up and right go to higher slice numbers
    const delta = {ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: page, PageDown: -page}[e.key];
    if (delta === undefined) return;
    e.preventDefault();
    step(delta);
  });
}
"""


# --- private helpers -------------------------------------------------------------------------------
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}



def _check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}.")
    return plane


def _canonical_shape(volume: Volume) -> tuple[int, int, int]:
    """Shape after reorienting to the closest RAS axes, as ``data.display.reformat`` indexes slices."""
    from nibabel.orientations import io_orientation

    out = [0, 0, 0]
    for axis, (target, _) in enumerate(io_orientation(volume.affine)):
        out[int(target)] = volume.shape[axis]
    return tuple(out)  # type: ignore[return-value]


def _mask_slice(volume: Volume, result: ExpertResult | None, plane: str, index: int) -> tuple[np.ndarray | None, str]:
    if result is None or result.label_volume is None:
        return None, ""
    if result.label_volume.shape != volume.shape:
        return None, "mask is on another series' grid"
    mask = volume.like(np.asarray(result.label_volume.array).astype(np.int16))
    return reformat(mask, plane, index).image, ""


def _display_size(hw: tuple[int, int], pixel_spacing_mm: tuple[float, float]) -> tuple[int, int]:
    """(height, width) in display pixels: square millimetres, longest side ``DISPLAY_PX``."""
    height_mm, width_mm = hw[0] * pixel_spacing_mm[0], hw[1] * pixel_spacing_mm[1]
    scale = DISPLAY_PX / max(height_mm, width_mm)
    return max(1, round(height_mm * scale)), max(1, round(width_mm * scale))


def _resize(array: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``array`` (H, W) or (H, W, C) resized to ``size`` (height, width): bilinear for intensities,
    nearest for label masks (so label values are never blended)."""
    from PIL import Image

    if array.ndim == 3:
        return np.stack([_resize(array[..., c], size, mode) for c in range(array.shape[2])], axis=-1)
    if mode == "nearest":
        return np.asarray(Image.fromarray(array.astype(np.int32)).resize(size[::-1], Image.NEAREST))
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize(size[::-1], Image.BILINEAR))

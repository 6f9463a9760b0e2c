"""The browser viewer's side on the server: each series goes to the browser once, as NIfTI, and the page renders it.

``viewer_payload`` describes what the browser viewer shows (a JSON text in a hidden page box): the series' NIfTI
address, window and presets, the burned-in-annotation warning, and the overlay (label NIfTI, the expert's title,
per-label colours, measurements and largest cross-sections). The NIfTI files are written once per series and mask
into the session's folder and served by ``mount_viewer_routes`` under unguessable names, behind the app's login
(``app.auth.RouteGuard`` guards every path but the page and its static assets). The bundled script
(``assets/viewer/m3-viewer.js``, NiiVue; ``make viewer`` rebuilds it) does scrolling, window / level, zoom,
measurements and overlays in the browser; the page tells the server which slice is on screen only with a question
(``apply_client_view``). Without WebGL2 the server-rendered viewer (``app.viewer``) is shown instead.
"""

from __future__ import annotations

import json
import secrets
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data.display import WINDOW_PRESETS, default_window, percentile_window
from data.study import Series, Volume
from experts.base import ExpertResult
from experts.overlay import label_colour

__all__ = ["VIEWER_SCRIPT", "VIEWER_HEAD", "ROOT_HTML", "SHOW_JS", "BURNED_IN_MODALITIES", "viewer_payload",
           "burned_in_note", "apply_client_view", "mount_viewer_routes", "volume_nifti"]

VIEWER_SCRIPT = Path(__file__).parent / "assets" / "viewer" / "m3-viewer.js"
ROUTE = "m3/volume"  # relative to the page, so a ``server.root_path`` prefix carries over
SCRIPT_ROUTE = "m3/viewer.js"
# modalities whose pixels often carry burned-in text (ultrasound, secondary capture, other, photographs, endoscopy)
BURNED_IN_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "SM", "GM"})
MAX_FILES = 2048  # NIfTI files the route knows at once (oldest forgotten first); each lives in its session's folder

VIEWER_HEAD = f'<script defer src="{SCRIPT_ROUTE}"></script>'
ROOT_HTML = "<div id='m3-web-root' class='m3-web-root'></div>"
# runs in the page when the payload box changes: hands the payload to the viewer (or keeps it until the script loads)
SHOW_JS = "(text) => { if (window.m3Viewer) { window.m3Viewer.show(text); } else { window.m3PendingPayload = text; } }"


def viewer_payload(state: Any, title_of: Callable[[str], str]) -> str:
    """What the browser viewer shows for the session ``state`` (``app.session.SessionState``), as JSON text ("" when
    no series is open). ``title_of(expert name)`` gives the legend's heading. The text stays the same while the series,
    mask, opacity and window stay the same, so the page reloads nothing when the server re-renders for another reason."""
    series = state.series if state.study is not None else None
    if series is None:
        return ""
    vol = series.volume
    colour = vol.array.ndim == 4
    centre, width = state.view.window or (default_window(vol) if not colour else (127.5, 255.0))
    payload: dict[str, Any] = {
        "series": series.uid,
        "volume": _file_url(state, ("image", series.uid), lambda: volume_nifti(vol)),
        "modality": vol.modality,
        "is2d": bool(vol.is_2d),
        "colour": colour,
        "window": [float(centre), float(width)],
        "presets": {} if colour else _presets(vol),
        "plane": state.view.plane if not vol.is_2d else "axial",
        "warning": burned_in_note(series),
        "overlay": None,
    }
    result = state.shown_result
    if result is not None and result.label_volume is not None and result.label_volume.shape == vol.shape:
        key = ("mask", series.uid, repr(state.active_result))
        payload["overlay"] = _overlay(state, key, vol, result, title_of(result.expert))
    return json.dumps(payload, sort_keys=True)


def burned_in_note(series: Series) -> str:
    """A warning when the series' pixels may show identifying text that de-identification of the header does not remove:
    Burned In Annotation = YES, or a DICOM or picture file of a modality where it is common (``BURNED_IN_MODALITIES``)
    unless the header says NO. A NIfTI volume has no such flag and gets no note."""
    flag = str(series.volume.meta.get("burned_in_annotation", "") or "").strip().upper()
    modality = (series.modality or series.volume.modality or "").upper()
    if flag == "YES":
        return ("Burned-in annotation: the header says these pixels carry text, which may identify the patient. "
                "De-identification cleaned the header, not the pixels; review before sharing images.")
    if flag != "NO" and modality in BURNED_IN_MODALITIES and series.source_format in ("dicom", "image"):
        return (f"Possible burned-in annotation: {modality} images often carry text in the pixels (names, IDs, sites), and "
                "de-identification cleaned only the header. Review before sharing images.")
    return ""


def apply_client_view(state: Any, text: str | None) -> bool:
    """Set ``state.view`` (plane and slice per plane) from the browser viewer's report ``text`` (JSON: series UID, plane,
    crosshair in RAS mm), so "this slice" means the slice on screen. Returns whether it applied: not for another
    series, a 2D image, or a report that does not parse."""
    if not text or state.study is None or state.series is None:
        return False
    try:
        view = json.loads(text)
        plane, mm = str(view["plane"]), np.asarray(view["mm"], dtype=float)[:3]
    except (ValueError, KeyError, TypeError):
        return False
    vol = state.series.volume
    if view.get("series") != state.series.uid or vol.is_2d or plane not in _PLANE_AXIS or mm.shape != (3,):
        return False
    state.view.plane = plane
    state.view.slices.update(_canonical_indices(vol, mm))
    return True


def volume_nifti(volume: Volume) -> bytes:
    """``volume`` as gzipped NIfTI-1 bytes on its own RAS grid (integers kept as integers; a colour image as RGB24). A 2D
    image gets an affine that shows it as stored in the viewer's axial view (rows down, columns to the right)."""
    import nibabel as nib

    array, affine = np.asarray(volume.array), np.asarray(volume.affine, dtype=float)
    if volume.is_2d:
        sx, sy = volume.spacing[:2]
        affine = np.diag([-sx, -sy, 1.0, 1.0])
    if array.ndim == 4:  # (I, J, K, C) colour
        rgb = np.clip(array[..., :3], 0, 255).astype(np.uint8)
        packed = np.empty(rgb.shape[:3], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        packed["R"], packed["G"], packed["B"] = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        array = packed
    elif np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)) \
            and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)  # HU stored as floats: half the bytes, same values
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return _gzip(image.to_bytes())


def mount_viewer_routes(api: Any, prefix: str = "") -> None:
    """Add ``GET PREFIX/m3/viewer.js`` (the bundled viewer) and ``GET PREFIX/m3/volume/{name}`` (a session's NIfTI file)
    to ``api``, ``prefix`` being ``server.root_path`` (the page's own address, which the routes are relative to).
    Both sit behind the app's login when one is configured; an unknown or expired name answers 404."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse

    prefix = prefix.rstrip("/")

    @api.get(f"{prefix}/{SCRIPT_ROUTE}", include_in_schema=False)
    def viewer_script() -> FileResponse:
        return FileResponse(VIEWER_SCRIPT, media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @api.get(f"{prefix}/{ROUTE}/{{name}}", include_in_schema=False)
    def volume_file(name: str) -> FileResponse:
        path = _FILES.get(name)
        if path is None or not path.is_file():
            raise HTTPException(status_code=404, detail="This image is no longer on the server; reload the study.")
        return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": "private, max-age=3600"})


# --- private helpers -------------------------------------------------------------------------------
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


class _Files:
    """Name → file of the NIfTI files the route serves; the newest ``MAX_FILES`` are kept."""

    def __init__(self) -> None:
        self._paths: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, path: Path) -> str:
        name = f"{secrets.token_urlsafe(24)}.nii.gz"
        with self._lock:
            self._paths[name] = path
            while len(self._paths) > MAX_FILES:
                self._paths.popitem(last=False)
        return name

    def get(self, name: str) -> Path | None:
        with self._lock:
            return self._paths.get(name)


_FILES = _Files()
_SESSION_URLS: "weakref.WeakKeyDictionary[Any, dict[tuple, str]]" = weakref.WeakKeyDictionary()
_SESSION_LOCK = threading.Lock()


def _file_url(state: Any, key: tuple, make: Callable[[], bytes]) -> str:
    """The address of the session's file ``key``, written with ``make()`` the first time it is asked for."""
    with _SESSION_LOCK:
        urls = _SESSION_URLS.setdefault(state, {})
        if key in urls:
            return urls[key]
        folder = state.workdir / "viewer"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{len(urls):04d}.nii.gz"
        path.write_bytes(make())
        urls[key] = f"{ROUTE}/{_FILES.add(path)}"
        return urls[key]


def _overlay(state: Any, key: tuple, vol: Volume, result: ExpertResult, title: str) -> dict[str, Any]:
    mask = np.asarray(result.label_volume.array)
    labels = []
    for value, name in sorted(result.label_names.items()):
        present = mask == value
        numbers = [m.text() for m in result.measurements if m.structure == name]
        labels.append({"value": int(value), "name": name, "colour": list(label_colour(value)),
                       "text": name + (f" — {'; '.join(numbers)}" if numbers else ""),
                       "jump_mm": _largest_section_mm(vol, present) if present.any() else None})
    busiest = _largest_section_mm(vol, mask > 0) if (mask > 0).any() else None
    return {"url": _file_url(state, key, lambda: _mask_nifti(vol, mask)), "title": title, "labels": labels,
            "opacity": float(state.view.opacity), "jump_mm": busiest}


def _mask_nifti(vol: Volume, mask: np.ndarray) -> bytes:
    dtype = np.uint8 if mask.max() < 256 and mask.min() >= 0 else np.int16
    return volume_nifti(vol.like(mask.astype(dtype)))


def _largest_section_mm(vol: Volume, present: np.ndarray) -> list[float]:
    """RAS mm of the centre of ``present``'s largest axial cross-section (voxel → mm with the volume's affine)."""
    k_axis = int(np.argmax(np.abs(np.asarray(vol.affine)[2, :3])))  # the stored axis closest to head-foot
    other = tuple(a for a in range(3) if a != k_axis)
    k = int(np.argmax(present.sum(axis=other)))
    where = np.argwhere(np.take(present, k, axis=k_axis))
    centre = where.mean(axis=0)
    ijk = np.insert(centre, k_axis, k)
    return [round(float(v), 3) for v in (np.asarray(vol.affine) @ np.append(ijk, 1.0))[:3]]


def _canonical_indices(vol: Volume, mm: np.ndarray) -> dict[str, int]:
    """Slice index per plane (as ``data.display.reformat`` counts them: RAS-reoriented axes) of the RAS point ``mm``."""
    from nibabel.orientations import io_orientation

    ijk = np.linalg.solve(np.asarray(vol.affine, dtype=float), np.append(mm, 1.0))[:3]
    out = {}
    for native, (target, flip) in enumerate(io_orientation(vol.affine)):
        n = vol.shape[native]
        v = int(np.clip(np.rint(ijk[native]), 0, n - 1))
        plane = next(p for p, a in _PLANE_AXIS.items() if a == int(target))
        out[plane] = v if flip > 0 else n - 1 - v
    return out


def _presets(vol: Volume) -> dict[str, list[float]]:
    """Window presets offered in the browser: the series' own window, then for CT the HU presets (abdomen named soft
    tissue, as on a PACS), else the 1–99 percentile window."""
    out = {"default": list(map(float, default_window(vol)))}
    if vol.modality == "CT":
        for name, cw in WINDOW_PRESETS.items():
            out["soft tissue" if name == "abdomen" else name] = [float(cw[0]), float(cw[1])]
    else:
        out["auto (1–99 %)"] = [float(v) for v in percentile_window(vol.array)]
    return out


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=1)  # fast: the file is read once, on this network

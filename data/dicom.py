"""DICOM files: header reading, classification and pixel decoding (one file at a time).

Headers are read with ``stop_before_pixels``; where the pixel data is native little-endian with one
sample per pixel and one frame (the common CT / MR case), the byte offset of the pixel values is kept
and :func:`read_native_into` copies them straight into the caller's array (no pydicom pixel round
trip). Everything else — compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE, deflate),
big-endian, multi-frame, colour, 1-bit, float — is decoded by pydicom's pixel-data plugins
(:func:`decode_frames`). Grouping files into volumes lives in :mod:`data.dicom_series`.

A :class:`DicomFile` carries original header values and never leaves ingest.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from data.deid import redact
from data.errors import IngestError
from data.study import SkippedObject

__all__ = ["DicomFile", "NonImage", "read_dicom_header", "read_native_into", "decode_frames", "frame_geometry", "is_dicom"]

_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
# SOP classes listed and skipped: not images a viewer or an expert reads (PS3.4 names).
_NON_IMAGE_WORDS = ("SR Storage", "Encapsulated", "Presentation State", "Waveform", "ECG", "Segmentation",
                    "Directory", "Key Object", "Raw Data", "Registration", "Surface", "Real World", "Structured",
                    "Document", "Tractography", "Plan", "Hanging", "Palette", "Implant", "Report", "Measurement")
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}


@dataclass(slots=True)
class NonImage:
    """A readable DICOM object that is not an image series: listed and skipped."""

    skipped: SkippedObject
    study_uid: str  # original; only used to attach it to its study


@dataclass(slots=True, eq=False)  # identity hash: files are dictionary keys
class DicomFile:
    """One readable DICOM image file: the facts grouping and geometry need (original values)."""

    name: str  # relative to the upload
    path: Path
    ds: Dataset  # header only (no pixel data)
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    modality: str
    rows: int
    cols: int
    frames: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    pixel_offset: int | None  # byte offset of native pixel values, when the fast path applies
    position: np.ndarray | None  # (3,) LPS mm, single-frame files
    orientation: np.ndarray | None  # (6,) row then column direction cosines (LPS)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) mm
    spacing_source: str
    slope: float
    intercept: float
    order: tuple  # fallback ordering: temporal position, echo, acquisition, instance number

    @property
    def fast(self) -> bool:
        return self.pixel_offset is not None

    @property
    def stored_dtype(self) -> np.dtype:
        return np.dtype(f"{'<i' if self.signed else '<u'}{self.bits_allocated // 8}")


def is_dicom(path: Path) -> bool:
    """``True`` when the file has the Part 10 ``DICM`` marker at byte 128."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom_header(path: Path, name: str, *, force: bool = False) -> DicomFile | NonImage:
    """Read one file's header; a :class:`NonImage` for objects that are not image series.

    Raises :class:`IngestError` for unreadable, truncated or image-less files.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
            pixel_tag_at = fp.tell()
            head = fp.read(12)
    except InvalidDicomError as exc:
        raise IngestError("not a DICOM file: no 'DICM' marker and no DICOM elements could be read; expected DICOM "
                          f"Part 10, NIfTI, NRRD/MHA or PNG/JPEG ({exc.__class__.__name__}).", name) from None
    except (OSError, EOFError, ValueError, struct.error, KeyError, TypeError, NotImplementedError) as exc:
        raise IngestError(f"unreadable DICOM header ({exc.__class__.__name__}); the file is truncated or damaged: "
                          "export it again from the source.", name) from None
    if force and not ("SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)):
        raise IngestError("not a DICOM file: no SOP Class UID and no image size; expected DICOM Part 10, NIfTI, "
                          "NRRD/MHA or PNG/JPEG.", name)
    raw = _RawHeader(ds)
    sop_class = raw.text(0x00080016)
    class_name = _class_name(sop_class)
    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) == DeflatedExplicitVRLittleEndian:
        # the dataset was inflated in memory: file offsets mean nothing, pydicom decodes the pixels
        pixel_kind, value_offset, value_length = ("PixelData" if "Rows" in ds else None), None, None
    else:
        pixel_kind, value_offset, value_length = _pixel_element(head, pixel_tag_at, ds)
    if _is_non_image(class_name):
        study_uid = raw.text(0x0020000D)
        return NonImage(SkippedObject(name, f"{class_name}: not an image series (non-image object), listed and "
                                            "skipped."), study_uid)
    if pixel_kind is None:
        if "Rows" not in ds:
            return NonImage(SkippedObject(name, f"{class_name}: header only (no Pixel Data and no image size); "
                                                "nothing to display."), raw.text(0x0020000D))
        raise IngestError(f"{class_name} file has an image size but no Pixel Data (7FE0,0010); the file is "
                          "incomplete: export it again from the source.", name)
    try:
        return _describe(ds, path, name, sop_class, pixel_kind, value_offset, value_length, size)
    except (AttributeError, ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
        raise IngestError(f"{class_name} header has invalid image attributes "
                          f"({redact(f'{exc.__class__.__name__}: {exc}', ds)}).", name) from None


def read_native_into(file: DicomFile, out: np.ndarray) -> None:
    """Copy a fast-path file's pixel values into ``out`` (a C-contiguous ``(rows, cols)`` array)."""
    buffer = memoryview(out).cast("B")
    with open(file.path, "rb") as fp:
        fp.seek(file.pixel_offset)
        n = fp.readinto(buffer)
    if n != buffer.nbytes:
        raise IngestError(f"pixel data truncated: {buffer.nbytes} bytes expected, {n} read; the file changed "
                          "or is damaged.", file.name)


def decode_frames(file: DicomFile) -> np.ndarray:
    """Decode all frames through pydicom: ``(F, rows, cols)`` or ``(F, rows, cols, 3)`` (RGB).

    YBR is converted to RGB and PALETTE COLOR expanded by pydicom; no modality LUT is applied here.
    """
    try:
        ds = pydicom.dcmread(file.path, force=True)
        arr = ds.pixel_array
        if file.photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # pixel plugins raise many types; each becomes one file's IngestError
        raise IngestError(f"pixel data could not be decoded ({redact(f'{exc.__class__.__name__}: {exc}', file.ds)}); "
                          "the transfer syntax may need a codec that is not installed, or the data is damaged.",
                          file.name) from None
    colour = arr.shape[-1] == 3 and (file.samples == 3 or file.photometric == "PALETTE COLOR")
    frame_ndim = 3 if colour else 2
    if arr.ndim == frame_ndim:
        arr = arr[None]
    return arr


def apply_rescale(frames: np.ndarray, file: DicomFile, frame_params: list[tuple[float, float]]) -> np.ndarray:
    """Modality LUT: the Modality LUT Sequence if present, else Rescale Slope/Intercept per frame."""
    if file.ds.get("ModalityLUTSequence"):
        return apply_modality_lut(frames, file.ds)
    return frames if all(p == (1.0, 0.0) for p in frame_params) else _rescale(frames, frame_params)


def frame_geometry(file: DicomFile) -> list[dict[str, Any]]:
    """Per-frame position, orientation, pixel spacing and rescale (enhanced multi-frame groups first)."""
    shared = _first(file.ds.get("SharedFunctionalGroupsSequence"))
    per_frame = file.ds.get("PerFrameFunctionalGroupsSequence") or []
    base = {"position": file.position, "orientation": file.orientation, "pixel_spacing": file.pixel_spacing,
            "slope": file.slope, "intercept": file.intercept}
    if shared is not None:
        base = _functional(shared, base)
    if file.frames > 1 and file.position is not None and not per_frame:
        base["position"] = None  # one position for many frames: not a stack we can place
    out = []
    for f in range(file.frames):
        item = per_frame[f] if f < len(per_frame) else None
        out.append(_functional(item, base) if item is not None else dict(base))
    if file.frames > 1 and "GridFrameOffsetVector" in file.ds and out[0]["position"] is not None:
        offsets = [float(v) for v in file.ds.GridFrameOffsetVector]
        normal = np.cross(out[0]["orientation"][:3], out[0]["orientation"][3:])
        for f, geo in enumerate(out[: len(offsets)]):
            geo["position"] = np.asarray(file.position) + offsets[f] * normal
    return out


# ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _class_name(sop_class: str) -> str:
    return UID(sop_class).name if sop_class else "unknown SOP class"


@lru_cache(maxsize=256)
def _is_non_image(class_name: str) -> bool:
    return any(word in class_name for word in _NON_IMAGE_WORDS) or class_name.startswith("RT ")


def _pixel_element(head: bytes, tag_at: int, ds: Dataset) -> tuple[str | None, int | None, int | None]:
    """Which pixel element follows the header, and (native, defined length) where its value starts."""
    if len(head) < 8:
        return None, None, None
    little = not (ds.original_encoding[1] is False)
    group, element = struct.unpack("<HH" if little else ">HH", head[:4])
    kind = _PIXEL_TAGS.get((group << 16) | element)
    if kind is None:
        return None, None, None
    implicit = ds.original_encoding[0]
    if implicit:
        (length,) = struct.unpack("<I" if little else ">I", head[4:8])
        return kind, tag_at + 8, length
    if len(head) < 12:
        return kind, None, None
    (length,) = struct.unpack("<I" if little else ">I", head[8:12])
    return kind, tag_at + 12, length


def _describe(ds, path, name, sop_class, pixel_kind, value_offset, value_length, size) -> DicomFile:
    raw = _RawHeader(ds)
    if "Rows" not in ds or "Columns" not in ds:
        raise IngestError("Pixel Data present but Rows / Columns missing: the image size is unknown; export the "
                          "file again from the source.", name)
    rows, cols = raw.us(0x00280010), raw.us(0x00280011)
    frames = int(raw.number(0x00280008) or 1)
    samples = raw.us(0x00280002, 1)
    bits_allocated = raw.us(0x00280100, 0)
    bits_stored = raw.us(0x00280101, bits_allocated) or bits_allocated
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise IngestError(f"image size must be positive, got {rows} rows x {cols} columns x {frames} frames.", name)
    photometric = raw.text(0x00280004, "MONOCHROME2").upper() or "MONOCHROME2"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    expected = rows * cols * frames * samples * max(bits_allocated, 8) // 8
    if syntax is None or syntax in _NATIVE_LE or not UID(syntax).is_compressed:
        if value_length is not None and value_length != 0xFFFFFFFF and value_offset + min(value_length, expected) > size:
            raise IngestError(f"file truncated: pixel data needs {min(value_length, expected)} bytes from offset "
                              f"{value_offset}, the file has {size} bytes; copy it again from the source.", name)
    fast = (syntax in _NATIVE_LE and pixel_kind == "PixelData" and frames == 1 and samples == 1
            and bits_allocated in (8, 16, 32) and photometric in ("MONOCHROME1", "MONOCHROME2")
            and value_length not in (None, 0xFFFFFFFF) and value_length >= expected)
    spacing, source = None, "assumed"
    for tag, keyword in ((0x00280030, "PixelSpacing"), (0x00181164, "ImagerPixelSpacing"),
                         (0x00182010, "NominalScannedPixelSpacing")):
        value = raw.floats(tag, 2)
        if value is not None and np.all(value > 0):
            spacing, source = (float(value[0]), float(value[1])), keyword
            break
    slope = raw.number(0x00281053)
    intercept = raw.number(0x00281052)
    return DicomFile(
        name=name, path=Path(path), ds=ds,
        study_uid=raw.text(0x0020000D), series_uid=raw.text(0x0020000E), sop_uid=raw.text(0x00080018),
        sop_class=sop_class, modality=raw.text(0x00080060, "OT").upper() or "OT",
        rows=rows, cols=cols, frames=frames, samples=samples, photometric=photometric,
        bits_allocated=bits_allocated, bits_stored=bits_stored, signed=raw.us(0x00280103, 0) == 1,
        pixel_offset=value_offset if fast else None, position=raw.floats(0x00200032, 3),
        orientation=raw.floats(0x00200037, 6), pixel_spacing=spacing, spacing_source=source,
        slope=1.0 if slope is None or slope == 0 else slope, intercept=intercept or 0.0,
        order=tuple(_inf(raw.number(t)) for t in (0x00200100, 0x00180086, 0x00200012, 0x00200013)),
    )


class _RawHeader:
    """Hand-written reads of a few header values from pydicom's raw elements: converting every element
    through pydicom costs more than reading the file, and ingest needs about twenty values per file."""

    __slots__ = ("ds",)

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def _raw(self, tag: int):
        elem = self.ds.get_item(tag)
        if elem is None:
            return None, None
        if isinstance(elem, RawDataElement):
            return elem, elem.value
        return None, elem.value  # already converted (e.g. file meta)

    def text(self, tag: int, default: str = "") -> str:
        elem, value = self._raw(tag)
        if value is None:
            return default
        if elem is not None:
            return value.rstrip(b"\x00 ").decode("latin-1").strip()
        return str(value).strip()

    def us(self, tag: int, default: int = 0) -> int:
        elem, value = self._raw(tag)
        if value is None:
            return default
        if elem is not None:
            if len(value) < 2:
                return default
            return struct.unpack("<H" if elem.is_little_endian else ">H", value[:2])[0]
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    def floats(self, tag: int, n: int) -> np.ndarray | None:
        elem, value = self._raw(tag)
        if value is None:
            return None
        if elem is not None:
            value = value.rstrip(b"\x00 ").decode("latin-1").split("\\")
        return _floats(value, n)

    def number(self, tag: int) -> float | None:
        """The first value of an IS / DS element."""
        elem, value = self._raw(tag)
        if value is None:
            return None
        if elem is not None:
            value = value.rstrip(b"\x00 ").decode("latin-1").split("\\")
        elif isinstance(value, str) or not hasattr(value, "__iter__"):
            value = [value]
        try:
            first = float(list(value)[0])
        except (TypeError, ValueError, IndexError):
            return None
        return first if np.isfinite(first) else None


def _inf(value: float | None) -> float:
    return float("inf") if value is None else value


def _functional(item: Dataset, base: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    position = _first(item.get("PlanePositionSequence"))
    if position is not None:
        out["position"] = _floats(position.get("ImagePositionPatient"), 3)
    orientation = _first(item.get("PlaneOrientationSequence"))
    if orientation is not None:
        out["orientation"] = _floats(orientation.get("ImageOrientationPatient"), 6)
    measures = _first(item.get("PixelMeasuresSequence"))
    if measures is not None and _floats(measures.get("PixelSpacing"), 2) is not None:
        out["pixel_spacing"] = tuple(float(v) for v in measures.PixelSpacing)
    transform = _first(item.get("PixelValueTransformationSequence"))
    if transform is not None and "RescaleSlope" in transform:
        out["slope"] = float(transform.RescaleSlope)
        out["intercept"] = float(transform.get("RescaleIntercept", 0.0) or 0.0)
    return out


def _rescale(frames: np.ndarray, params: list[tuple[float, float]]) -> np.ndarray:
    """Slope/intercept per frame; integer output where exact (smallest integer type that holds it), else float32."""
    slopes = np.array([p[0] for p in params], dtype=np.float64)
    intercepts = np.array([p[1] for p in params], dtype=np.float64)
    shape = (-1,) + (1,) * (frames.ndim - 1)
    if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)) and frames.dtype.kind in "iu":
        lo = int(frames.min()) + int(intercepts.min())
        hi = int(frames.max()) + int(intercepts.max())
        dtype = next(np.dtype(t) for t in (frames.dtype, np.int16, np.int32, np.int64)
                     if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
        out = frames if dtype == frames.dtype and frames.flags.writeable else frames.astype(dtype)
        if np.all(intercepts == intercepts[0]):
            c = int(intercepts[0])
            if c >= 0:
                out += dtype.type(c)
            else:  # subtract: a negative scalar does not cast to an unsigned type
                out -= dtype.type(-c)
        else:
            out += intercepts.astype(dtype).reshape(shape)
        return out
    out = frames.astype(np.float32)
    out *= slopes.astype(np.float32).reshape(shape)
    out += intercepts.astype(np.float32).reshape(shape)
    return out


def _first(seq) -> Dataset | None:
    return seq[0] if seq else None


def _floats(value, n: int) -> np.ndarray | None:
    """``n`` finite floats from a DS/FD value (single or multi-valued), else ``None``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        values = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return values if values.shape == (n,) and np.all(np.isfinite(values)) else None

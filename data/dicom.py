"""DICOM files: header reading, classification and pixel decoding (one file at a time).

Headers are read with ``stop_before_pixels``; where the pixel data is native little-endian with one
sample per pixel and one frame (the common CT / MR case), the byte offset of the pixel values is kept
and :func:`read_native_into` copies them straight into the caller's array (no pydicom pixel round
trip). Everything else — compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE, deflate),
big-endian, multi-frame, colour, 1-bit, float — is decoded by pydicom's pixel-data plugins
(:func:`decode_frames`). Grouping files into volumes lives in :mod:`data.dicom_series`.

Budgets (:class:`~data.limits.IngestLimits`) are checked from the header before anything is
allocated: Number of Frames, rows × columns × frames × bytes, and the inflated size of a Deflated
Explicit VR file, which is inflated through a bounded stream into the upload's private folder (pydicom
would inflate it whole in memory, even for a header read). Geometry read here is checked (spacing in
a plausible range, orientation vectors not degenerate) at the top level and in functional groups.
Header elements pydicom cannot convert are read through :func:`header_value`, which treats them as
absent, so one malformed element never aborts a file or an upload.

A :class:`DicomFile` carries original header values and never leaves ingest.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from data.deid import redact
from data.errors import IngestError
from data.geometry import ORIGIN_LIMIT_MM, plausible_spacing, unit_orientation
from data.limits import IngestLimits, format_bytes
from data.study import SkippedObject
from data.workdir import disk_error

__all__ = ["DicomFile", "NonImage", "read_dicom_header", "read_native_into", "decode_frames", "frame_geometry", "is_dicom",
           "header_value", "readable_copy"]

_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
# SOP classes listed and skipped: not images a viewer or an expert reads (PS3.4 names).
_NON_IMAGE_WORDS = ("SR Storage", "Encapsulated", "Presentation State", "Waveform", "ECG", "Segmentation",
                    "Directory", "Key Object", "Raw Data", "Registration", "Surface", "Real World", "Structured",
                    "Document", "Tractography", "Plan", "Hanging", "Palette", "Implant", "Report", "Measurement")
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_DEFLATED = DeflatedExplicitVRLittleEndian.encode()
_CHUNK = 1 << 20


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
    decoded_bytes: int  # pixel memory once decoded and rescaled (header estimate)
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


def read_dicom_header(path: Path, name: str, *, force: bool = False, limits: IngestLimits | None = None,
                      scratch: Path | None = None) -> DicomFile | NonImage:
    """Read one file's header; a :class:`NonImage` for objects that are not image series.

    A Deflated Explicit VR file is first inflated (within ``limits``) into ``scratch``, a private folder
    that outlives the returned :class:`DicomFile`. Raises :class:`IngestError` for unreadable, truncated,
    image-less or over-budget files.
    """
    limits = limits or IngestLimits()
    size = _size(path, name)
    deflated = _is_deflated(path, size)
    if deflated:
        if scratch is None:
            raise ValueError("scratch must be a private folder to inflate a Deflated Explicit VR file into.")
        path = _inflate(path, name, size, limits, scratch)
        size = _size(path, name)
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
            pixel_tag_at = fp.tell()
            head = fp.read(12)
    except InvalidDicomError as exc:
        raise IngestError("not a DICOM file: no 'DICM' marker and no DICOM elements could be read; expected DICOM "
                          f"Part 10, NIfTI, NRRD/MHA or PNG/JPEG ({exc.__class__.__name__}).", name) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # pydicom's parser raises many types on damaged headers; each means "unreadable"
        raise IngestError(f"unreadable DICOM header ({exc.__class__.__name__}); the file is truncated or damaged: "
                          "export it again from the source.", name) from None
    if force and not ("SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)):
        raise IngestError("not a DICOM file: no SOP Class UID and no image size; expected DICOM Part 10, NIfTI, "
                          "NRRD/MHA or PNG/JPEG.", name)
    raw = _RawHeader(ds)
    sop_class = raw.text(0x00080016)
    class_name = _class_name(sop_class)
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
        file = _describe(ds, path, name, sop_class, pixel_kind, value_offset, value_length, size, limits)
    except IngestError:
        raise
    except (AttributeError, ValueError, TypeError, IndexError, KeyError, struct.error, OverflowError) as exc:
        raise IngestError(f"{class_name} header has invalid image attributes "
                          f"({_redacted(exc, ds)}).", name) from None
    if deflated:  # the inflated copy is Explicit VR Little Endian; the series reports what was uploaded
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return file


def readable_copy(path: Path, name: str, limits: IngestLimits, scratch: Path) -> Path:
    """``path``, or for a Deflated Explicit VR file its copy inflated (within ``limits``) into ``scratch``:
    what pydicom may read whole without inflating a bomb in memory."""
    size = _size(path, name)
    return _inflate(path, name, size, limits, scratch) if _is_deflated(path, size) else path


def header_value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` for an original header: an element pydicom cannot convert (unknown
    VR, wrong length, damaged sequence) counts as absent."""
    try:
        value = ds.get(keyword, default)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # pydicom's value converters raise many types on malformed elements
        return default
    return default if value is None else value


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
        raise IngestError(f"pixel data could not be decoded ({_redacted(exc, file.ds)}); "
                          "the transfer syntax may need a codec that is not installed, or the data is damaged.",
                          file.name) from None
    colour = arr.shape[-1] == 3 and (file.samples == 3 or file.photometric == "PALETTE COLOR")
    frame_ndim = 3 if colour else 2
    if arr.ndim == frame_ndim:
        arr = arr[None]
    return arr


def apply_rescale(frames: np.ndarray, file: DicomFile, frame_params: list[tuple[float, float]]) -> np.ndarray:
    """Modality LUT: the Modality LUT Sequence if present, else Rescale Slope/Intercept per frame."""
    if header_value(file.ds, "ModalityLUTSequence"):
        return apply_modality_lut(frames, file.ds)
    return frames if all(p == (1.0, 0.0) for p in frame_params) else _rescale(frames, frame_params)


def frame_geometry(file: DicomFile) -> list[dict[str, Any]]:
    """Per-frame position, orientation, pixel spacing and rescale (enhanced multi-frame groups first).

    ``file.frames`` was checked against the frame limit when the header was read.
    """
    shared = _first(header_value(file.ds, "SharedFunctionalGroupsSequence"))
    per_frame = header_value(file.ds, "PerFrameFunctionalGroupsSequence") or []
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
    offsets = _floats_any(header_value(file.ds, "GridFrameOffsetVector"))
    if file.frames > 1 and offsets is not None and out[0]["position"] is not None and out[0]["orientation"] is not None:
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


def _describe(ds, path, name, sop_class, pixel_kind, value_offset, value_length, size, limits) -> DicomFile:
    raw = _RawHeader(ds)
    if "Rows" not in ds or "Columns" not in ds:
        raise IngestError("Pixel Data present but Rows / Columns missing: the image size is unknown; export the "
                          "file again from the source.", name)
    rows, cols = raw.us(0x00280010), raw.us(0x00280011)
    frames_value = raw.number(0x00280008)
    frames = frames_value or 1  # absent or 0: one frame, as pydicom reads it
    samples = raw.us(0x00280002, 1)
    bits_allocated = raw.us(0x00280100, 0)
    bits_stored = raw.us(0x00280101, bits_allocated) or bits_allocated
    if rows <= 0 or cols <= 0:
        raise IngestError(f"image size must be positive, got {rows} rows x {cols} columns.", name)
    if frames < 1 or frames != int(frames):
        raise IngestError(f"Number of Frames must be a positive whole number, got {frames:g}.", name)
    frames = int(frames)
    if frames > limits.max_frames_per_file:
        raise IngestError(f"header claims {frames} frames, the limit is {limits.max_frames_per_file} frames per file; "
                          "the header is damaged, or raise IngestLimits.max_frames_per_file to load it.", name)
    if samples not in (1, 3):
        raise IngestError(f"Samples per Pixel must be 1 (grey) or 3 (colour), got {samples}.", name)
    if bits_allocated not in (1, 8, 16, 32, 64) or not 1 <= bits_stored <= bits_allocated:
        raise IngestError(f"Bits Allocated must be 1, 8, 16, 32 or 64 with 1 <= Bits Stored <= Bits Allocated, got "
                          f"{bits_allocated} and {bits_stored}.", name)
    photometric = raw.text(0x00280004, "MONOCHROME2").upper() or "MONOCHROME2"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    slope = raw.number(0x00281053)
    intercept = raw.number(0x00281052)
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = intercept or 0.0
    pixels = rows * cols * frames
    expected = _stored_bytes(pixels, samples, bits_allocated, photometric)
    try:
        compressed = syntax is not None and UID(syntax).is_compressed
    except ValueError:
        raise IngestError("the file meta's Transfer Syntax UID is not a transfer syntax; the file is damaged: export "
                          "it again from the source.", name) from None
    float_out = slope != 1 or intercept != int(intercept) or pixel_kind != "PixelData"
    per_pixel = max(1, bits_allocated // 8, 4 if float_out and samples == 1 else 0)
    out_samples = 3 if photometric == "PALETTE COLOR" else samples
    decoded = pixels * out_samples * (2 if photometric == "PALETTE COLOR" else per_pixel)
    limits.check_image_bytes(decoded, name, f"{rows} x {cols} x {frames} frames of {bits_allocated}-bit pixels",
                             stored=size if compressed else None)
    if not compressed and value_length is not None and value_length != 0xFFFFFFFF:
        if value_offset + min(value_length, expected) > size:
            raise IngestError(f"file truncated: pixel data needs {min(value_length, expected)} bytes from offset "
                              f"{value_offset}, the file has {size} bytes; copy it again from the source.", name)
        if value_length < expected:
            raise IngestError(f"pixel data holds {format_bytes(value_length)}, the header's {rows} x {cols} x {frames} "
                              f"frames x {samples} samples of {bits_allocated} bits need {format_bytes(expected)}; the "
                              "header or the file is damaged: export it again from the source.", name)
    fast = (syntax in _NATIVE_LE and pixel_kind == "PixelData" and frames == 1 and samples == 1
            and bits_allocated in (8, 16, 32) and photometric in ("MONOCHROME1", "MONOCHROME2")
            and value_length not in (None, 0xFFFFFFFF) and value_length >= expected)
    spacing, source = None, "assumed"
    for tag, keyword in ((0x00280030, "PixelSpacing"), (0x00181164, "ImagerPixelSpacing"),
                         (0x00182010, "NominalScannedPixelSpacing")):
        value = _spacing(raw.floats(tag, 2))
        if value is not None:
            spacing, source = value, keyword
            break
    return DicomFile(
        name=name, path=Path(path), ds=ds,
        study_uid=raw.text(0x0020000D), series_uid=raw.text(0x0020000E), sop_uid=raw.text(0x00080018),
        sop_class=sop_class, modality=raw.text(0x00080060, "OT").upper() or "OT",
        rows=rows, cols=cols, frames=frames, samples=samples, photometric=photometric,
        bits_allocated=bits_allocated, bits_stored=bits_stored, signed=raw.us(0x00280103, 0) == 1,
        pixel_offset=value_offset if fast else None, decoded_bytes=decoded, position=_position(raw.floats(0x00200032, 3)),
        orientation=unit_orientation(raw.floats(0x00200037, 6)), pixel_spacing=spacing, spacing_source=source,
        slope=slope, intercept=intercept,
        order=tuple(_inf(raw.number(t)) for t in (0x00200100, 0x00180086, 0x00200012, 0x00200013)),
    )


def _stored_bytes(pixels: int, samples: int, bits_allocated: int, photometric: str) -> int:
    """Bytes of native pixel data for ``pixels`` (rows × columns × frames), as pydicom expects them."""
    if bits_allocated == 1:
        return (pixels * samples + 7) // 8
    if photometric in ("YBR_FULL_422", "YBR_PARTIAL_422") and samples == 3:
        return pixels * 2 * (bits_allocated // 8)  # two chroma samples shared by each pair of pixels
    return pixels * samples * (bits_allocated // 8)


def _spacing(value: np.ndarray | None) -> tuple[float, float] | None:
    """(between rows, between columns) mm when both are plausible, else ``None``."""
    if value is None or not all(plausible_spacing(v) for v in value):
        return None
    return float(value[0]), float(value[1])


def _position(value: np.ndarray | None) -> np.ndarray | None:
    return value if value is not None and np.all(np.abs(value) <= ORIGIN_LIMIT_MM) else None


def _size(path: Path, name: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise IngestError(f"file could not be read ({type(exc).__name__}); upload it again.", name) from None


def _is_deflated(path: Path, size: int) -> bool:
    """Whether pydicom would inflate the file (Deflated Explicit VR Little Endian in its file meta).

    The transfer syntax UID must occur in the file's bytes for that; only files that hold it are parsed.
    """
    if size == 0:
        return False
    try:
        with open(path, "rb") as fp:
            head = fp.read(_META_PEEK)
        end = _file_meta_end(head)
        if end is not None and _DEFLATED not in head[:end]:  # a well-formed file meta without it: no need to scan
            return False
        with open(path, "rb") as fp, mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as view:
            if view.find(_DEFLATED) < 0:
                return False
            read_preamble(fp, True)
            meta = _read_file_meta_info(fp)
            return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # unreadable meta: pydicom cannot read it as deflated either
        return False


_META_PEEK = 65536  # bytes read to find the end of the file meta


def _file_meta_end(head: bytes) -> int | None:
    """Where the file meta group of a Part 10 file ends, from its group length (0002,0000), when ``head`` holds all
    of it and no group-2 element follows that end (pydicom reads group 2 to its last element); else None."""
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        return None
    end = 144 + int.from_bytes(head[140:144], "little")
    if end + 2 > len(head) or head[end:end + 2] == b"\x02\x00":
        return None
    return end


def _inflate(path: Path, name: str, size: int, limits: IngestLimits, scratch: Path) -> Path:
    """Inflate a Deflated Explicit VR file into ``scratch`` as Explicit VR Little Endian, never past the
    limits (counted while inflating, so a bomb stops at the budget)."""
    budget = limits.inflated_budget(size)
    fd, out_name = tempfile.mkstemp(prefix="inflated-", suffix=".dcm", dir=scratch)
    out = Path(out_name)
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            read_preamble(src, True)
            _read_file_meta_info(src)
            dst.write(b"\0" * 128 + b"DICM")
            meta = pydicom.dataset.FileMetaDataset()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            writer = DicomFileLike(dst)
            writer.is_little_endian, writer.is_implicit_VR = True, False
            write_file_meta_info(writer, meta, enforce_standard=False)
            inflater, written = zlib.decompressobj(-zlib.MAX_WBITS), 0
            while not inflater.eof:
                chunk = inflater.unconsumed_tail or src.read(_CHUNK)
                data = inflater.decompress(chunk, min(_CHUNK, budget - written + 1))  # bounded output per call
                if not chunk and not data:
                    break  # the stream ends early: pydicom reports the truncated dataset
                written += len(data)
                if written > budget:
                    raise IngestError(f"Deflated DICOM inflates beyond {format_bytes(budget)} from {format_bytes(size)} "
                                      "(decompression bomb or a damaged file); the limits are "
                                      "IngestLimits.max_inflation_ratio and max_image_bytes_per_file.", name)
                dst.write(data)
    except IngestError:
        out.unlink(missing_ok=True)
        raise
    except zlib.error:
        out.unlink(missing_ok=True)
        raise IngestError("Deflated DICOM data is damaged (zlib could not inflate it); export it again from the "
                          "source.", name) from None
    except OSError as exc:
        out.unlink(missing_ok=True)
        raise disk_error(exc) or IngestError(f"Deflated DICOM could not be inflated ({type(exc).__name__}).",
                                             name) from None
    except (MemoryError, KeyboardInterrupt):
        out.unlink(missing_ok=True)
        raise
    except Exception as exc:  # pydicom's meta reader on a damaged file
        out.unlink(missing_ok=True)
        raise IngestError(f"Deflated DICOM file meta is unreadable ({type(exc).__name__}).", name) from None
    return out


def _redacted(exc: BaseException, ds: Dataset | None) -> str:
    """A library's error message with the header's identity words removed (and cut short)."""
    text = f"{exc.__class__.__name__}: {exc}"[:300]
    try:
        return redact(text, ds)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # a header too damaged to list its identity words: keep only the error type
        return exc.__class__.__name__


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
    """Geometry and rescale of one functional-groups item over ``base``; implausible values keep the base."""
    out = dict(base)
    position = _first(header_value(item, "PlanePositionSequence"))
    if position is not None:
        out["position"] = _position(_floats(header_value(position, "ImagePositionPatient"), 3))
    orientation = _first(header_value(item, "PlaneOrientationSequence"))
    if orientation is not None:
        out["orientation"] = unit_orientation(_floats(header_value(orientation, "ImageOrientationPatient"), 6))
    measures = _first(header_value(item, "PixelMeasuresSequence"))
    if measures is not None:
        spacing = _spacing(_floats(header_value(measures, "PixelSpacing"), 2))
        if spacing is not None:
            out["pixel_spacing"] = spacing
    transform = _first(header_value(item, "PixelValueTransformationSequence"))
    if transform is not None:
        slope = _floats(header_value(transform, "RescaleSlope"), 1)
        intercept = _floats(header_value(transform, "RescaleIntercept", 0.0) or 0.0, 1)
        if slope is not None and slope[0] != 0:
            out["slope"] = float(slope[0])
            out["intercept"] = float(intercept[0]) if intercept is not None else 0.0
    return out


def _rescale(frames: np.ndarray, params: list[tuple[float, float]]) -> np.ndarray:
    """Slope/intercept per frame; integer output where exact (smallest integer type that holds it), else float32."""
    slopes = np.array([p[0] for p in params], dtype=np.float64)
    intercepts = np.array([p[1] for p in params], dtype=np.float64)
    shape = (-1,) + (1,) * (frames.ndim - 1)
    dtype = None
    if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)) and np.all(np.abs(intercepts) < 2**31) \
            and frames.dtype.kind in "iu":
        lo = int(frames.min()) + int(intercepts.min())
        hi = int(frames.max()) + int(intercepts.max())
        dtype = next((np.dtype(t) for t in (frames.dtype, np.int16, np.int32, np.int64)
                      if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max), None)
    if dtype is not None:
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
    try:
        item = seq[0] if seq else None
    except (TypeError, IndexError, KeyError):
        return None
    return item if isinstance(item, Dataset) else None


def _floats_any(value) -> np.ndarray | None:
    """All values of a DS / FD element as finite floats, else ``None``."""
    if value is None:
        return None
    n = 1 if isinstance(value, (str, bytes, int, float)) or not hasattr(value, "__len__") else len(value)
    return _floats(value, n)


def _floats(value, n: int) -> np.ndarray | None:
    """``n`` finite floats from a DS/FD value (single or multi-valued), else ``None``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        values = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    return values if values.shape == (n,) and np.all(np.isfinite(values)) else None

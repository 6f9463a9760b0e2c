"""Fuzzing ingest with hostile uploads; every input runs in a forked child under a memory and a time cap.

Inputs are hypothesis strategies: byte mutations of pydicom's real test files, DICOM built with absurd
values (frames, rows, bits, spacing, orientation, transfer syntaxes, functional groups, unreadable
elements, deflate bombs), hostile zips (slip, absolute paths, links, bombs, nesting, lying sizes,
encryption, damaged data, name clashes), NIfTI headers and affines, PNG / JPEG images and NRRD /
MetaImage headers. For each input: ingest raises nothing but IngestError, no file error is a bug caught
by the safety net ("unexpected ..."), peak memory stays under 1.5 GB, it ends within 30 s, and every
loaded series displays (``data.display.reformat`` in every plane and the app's ``render_view``).

The default run takes a bounded, reproducible sample; ``-m slow`` runs the campaign (5,000+ inputs) and
prints its counts.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom import config as dicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import generate_uid

MEMORY_LIMIT = int(1.5 * 2**30)  # peak resident memory of an ingesting process, inputs up to 10 MB ...
PROCESS_ALLOWANCE = 256 * 2**20  # ... of which the interpreter and its libraries take ~180 MiB before reading
TIME_LIMIT_S = 30.0
SMALL_INPUT = 10 * 2**20


# --- running one input -----------------------------------------------------------------------------
@dataclass
class Result:
    outcome: str  # loaded | refused | escaped | internal | display | hang | crash
    detail: str
    added_rss: int  # peak resident memory the ingest added to its process (bytes)
    seconds: float
    input_bytes: int

    @property
    def bad(self) -> bool:
        return self.outcome in ("escaped", "internal", "display", "hang", "crash") or (
            self.input_bytes <= SMALL_INPUT and self.added_rss > MEMORY_LIMIT - PROCESS_ALLOWANCE)


def _status(field: str) -> int:
    """A size from ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``VmSize``) in bytes."""
    with open("/proc/self/status") as fp:
        return next(int(line.split()[1]) * 1024 for line in fp if line.startswith(field + ":"))


def _measured_child(paths: list[str]) -> dict:
    """:func:`_child` with the memory it adds: the peak (high-water mark, reset at the start) over the start."""
    with open("/proc/self/clear_refs", "w") as fp:
        fp.write("5")  # reset VmHWM to the current resident size
    start = _status("VmRSS")
    reply = _child(paths)
    reply["added_rss"] = _status("VmHWM") - start
    return reply


def _child(paths: list[str]) -> dict:
    from app.viewer import render_view
    from data import IngestError, load_studies
    from data.display import PLANES, reformat

    try:
        studies = load_studies(paths)
    except IngestError as exc:
        internal = exc.reason.startswith("unexpected") or "out of memory" in exc.reason
        return {"outcome": "internal" if internal else "refused", "detail": exc.reason[:300]}
    except BaseException:
        return {"outcome": "escaped", "detail": traceback.format_exc()[-2000:]}
    internal = [e.reason for s in studies for e in s.errors if e.reason.startswith("unexpected") or "MemoryError" in e.reason]
    n = 0
    for study in studies:
        for series in study.series:
            try:
                for plane in PLANES:
                    reformat(series.volume, plane)
                    render_view(series.volume, plane)
            except BaseException:
                return {"outcome": "display", "detail": traceback.format_exc()[-2000:]}
            n += 1
    if internal:
        return {"outcome": "internal", "detail": internal[0][:300]}
    reasons = [e.reason for s in studies for e in s.errors] + [k.reason for s in studies for k in s.skipped]
    return {"outcome": "loaded" if n else "refused", "detail": f"{n} series; " + "; ".join(reasons[:2])[:300]}


def _address_space_cap() -> int:
    return _status("VmSize") + 6 * 2**30  # a runaway allocation fails instead of taking the machine down


def run_isolated(paths: list[Path], input_bytes: int) -> Result:
    """Ingest ``paths`` in a forked child; kill it after :data:`TIME_LIMIT_S`."""
    cap = _address_space_cap()
    r, w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            os.write(w, json.dumps(_measured_child([str(p) for p in paths])).encode()[:60_000])
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline = [], started + TIME_LIMIT_S
    while True:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - started
    peak = usage.ru_maxrss * 1024  # killed children: their whole peak (an upper bound of what they added)
    if os.WIFSIGNALED(status):
        hung = os.WTERMSIG(status) == signal.SIGKILL and seconds >= TIME_LIMIT_S
        return Result("hang" if hung else "crash", f"signal {os.WTERMSIG(status)}", peak, seconds, input_bytes)
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        return Result("crash", "no reply from the child", peak, seconds, input_bytes)
    return Result(reply["outcome"], reply["detail"], reply["added_rss"], seconds, input_bytes)


class Campaign:
    """Writes each upload into its own folder, runs it, and counts outcomes per input family."""

    def __init__(self, root: Path) -> None:
        self.root, self.n = root, 0
        self.counts: Counter = Counter()
        self.failures: list[tuple[str, Result]] = []
        self.added_rss = 0
        self.slowest = 0.0

    def run(self, family: str, upload: list[tuple[str, bytes]], as_folder: bool = False) -> Result:
        self.n += 1
        folder = self.root / f"in{self.n}"
        folder.mkdir()
        paths = []
        for name, data in upload:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(path)
        result = run_isolated([folder] if as_folder else paths, sum(len(d) for _, d in upload))
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        folder.rmdir()
        self.counts[(family, result.outcome)] += 1
        self.counts[("all", "inputs")] += 1
        if self.n % 500 == 0:
            print(f"... {self.n} inputs, {len(self.failures)} failures", file=sys.stderr, flush=True)
        self.added_rss = max(self.added_rss, result.added_rss if result.input_bytes <= SMALL_INPUT else 0)
        self.slowest = max(self.slowest, result.seconds)
        if result.bad:
            self.failures.append((family, result))
        return result

    def report(self) -> str:
        lines = [f"{self.counts[('all', 'inputs')]} ingest inputs; most memory added by one ingest "
                 f"{self.added_rss / 2**20:.0f} MiB (inputs <= 10 MB; the process held {_status('VmRSS') / 2**20:.0f} "
                 f"MiB before it); slowest {self.slowest:.1f} s"]
        families = sorted({f for f, _ in self.counts if f != "all"})
        for family in families:
            outcomes = {o: c for (f, o), c in self.counts.items() if f == family}
            lines.append(f"  {family}: " + ", ".join(f"{o} {c}" for o, c in sorted(outcomes.items())))
        for family, result in self.failures[:10]:
            lines.append(f"  FAIL {family}: {result.outcome} {result.added_rss / 2**20:.0f} MiB {result.seconds:.1f} s "
                         f"{result.detail[-600:]}")
        return "\n".join(lines)


# --- DICOM ---------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _corpus() -> list[bytes]:
    """pydicom's real test files up to 1 MB that pydicom reads."""
    from pydicom.data import get_testdata_files

    out = []
    for path in sorted(get_testdata_files()):
        if os.path.getsize(path) <= 1_000_000:
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # the corpus holds some non-DICOM files
                continue
            out.append(Path(path).read_bytes())
    return out


_INTERESTING = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff\xff",
                b"\x01\x00", b"\x00\x00", b"9999", b"nan\\", b"1e308", b"-1\\0", b"\xfe\xff\x00\xe0"]


_TARGETS = [(0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0008), (0x0028, 0x0100), (0x0028, 0x0101),
            (0x0028, 0x0002), (0x0028, 0x0030), (0x0020, 0x0037), (0x0020, 0x0032), (0x0028, 0x1053),
            (0x0028, 0x0004), (0x0002, 0x0010), (0x7FE0, 0x0010), (0x5200, 0x9230), (0x0018, 0x0050)]


@st.composite
def mutated_dicom(draw) -> list[tuple[str, bytes]]:
    """A real file with random bytes changed, or the value of an image attribute overwritten."""
    data = bytearray(draw(st.sampled_from(_corpus())))
    for _ in range(draw(st.integers(0, 3))):  # image attributes: value bytes follow the 8-byte element header
        tag = struct.pack("<HH", *draw(st.sampled_from(_TARGETS)))
        at = data.find(tag)
        if at >= 0:
            value = draw(st.sampled_from(_INTERESTING))
            start = at + draw(st.sampled_from([4, 6, 8, 12]))
            data[start:start + len(value)] = value
    for _ in range(draw(st.integers(0, 12))):
        at = draw(st.integers(0, min(len(data), 4096) - 1)) if draw(st.booleans()) else draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[at] = draw(st.integers(0, 255))
        else:
            value = draw(st.sampled_from(_INTERESTING))
            data[at:at + len(value)] = value
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    name = draw(st.sampled_from(["a.dcm", "IM0001", "scan.DCM", "x.txt"]))
    return [(name, bytes(data))]


_FRAMES = ["1", "2", "3", "0", "-1", "8000000", "2147483647", "1e9", "nan", "abc", "3.5", None]
_SPACING = ["0.5\\0.5", "0\\0", "nan\\nan", "inf\\1", "1e308\\1e308", "-1\\1", "1e-300\\1", "", "1", "a\\b"]
_ORIENT = ["1\\0\\0\\0\\1\\0", "0\\0\\0\\0\\0\\0", "nan\\0\\0\\0\\1\\0", "1\\0\\0\\1\\0\\0", "1e308\\0\\0\\0\\1\\0",
           "0\\1\\0\\0\\0\\-1", "1\\0\\0"]
_POSITION = ["0\\0\\0", "1e308\\0\\0", "nan\\0\\0", "-1e308\\-1e308\\1e308", "0\\0", None]
_SYNTAX = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
           "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80",
           "1.2.3.4", ""]
_SOP = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.88.11", ""]


def _text(ds: Dataset, tag: int, value: str | None) -> None:
    if value is not None:  # LO accepts any text; the reader sees the bytes whatever the tag's standard VR
        ds[tag] = DataElement(tag, "LO", value, validation_mode=dicom_config.IGNORE)


def _frame_item(spacing: str | None, position: str | None, orientation: str | None) -> Dataset:
    item = Dataset()
    if spacing is not None:
        measures = Dataset()
        _text(measures, 0x00280030, spacing)
        item.PixelMeasuresSequence = [measures]
    if position is not None:
        plane = Dataset()
        _text(plane, 0x00200032, position)
        item.PlanePositionSequence = [plane]
    if orientation is not None:
        plane = Dataset()
        _text(plane, 0x00200037, orientation)
        item.PlaneOrientationSequence = [plane]
    return item


def _mostly(sane, absurd: list):
    """``sane`` three times in four, else one of ``absurd``."""
    return st.one_of(st.just(sane), st.just(sane), st.just(sane), st.sampled_from(absurd))


@st.composite
def absurd_dicom(draw) -> list[tuple[str, bytes]]:
    """A series of 1-3 files; each header value is ordinary three times in four, else absurd."""
    study, series = generate_uid(), generate_uid()
    rows, cols = draw(_mostly(16, [1, 2, 7, 0, 65535])), draw(_mostly(12, [1, 3, 0, 65535]))
    bits = draw(_mostly(16, [8, 1, 12, 32, 64, 0]))
    samples = draw(_mostly(1, [3, 0, 2, 4]))
    frames = draw(_mostly(None, _FRAMES))
    syntax = draw(_mostly("1.2.840.10008.1.2.1", _SYNTAX))
    sop = draw(_mostly("1.2.840.10008.5.1.4.1.1.2", _SOP))
    files = []
    for k in range(draw(st.integers(1, 3))):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax or "1.2.840.10008.1.2.1"
        ds.file_meta.MediaStorageSOPClassUID = sop or "1.2.3"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if sop:
            ds.SOPClassUID = sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "Fuzz^Patient", "F123"
        ds.Modality = draw(_mostly("CT", ["MR", "OT", "US", ""]))
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = rows, cols, bits, samples
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = draw(_mostly(bits, [12, 0, 99])), max(bits - 1, 0), 1
        ds.PhotometricInterpretation = draw(_mostly("MONOCHROME2" if samples != 3 else "RGB",
                                                    ["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL_422", "XYZ"]))
        _text(ds, 0x00280008, frames)
        _text(ds, 0x00280030, draw(_mostly("0.5\\0.5", _SPACING)))
        _text(ds, 0x00200037, draw(_mostly("1\\0\\0\\0\\1\\0", _ORIENT)))
        position = draw(_mostly(f"0\\0\\{k * 2.5}", _POSITION))
        _text(ds, 0x00200032, position)
        _text(ds, 0x00281053, draw(_mostly("1", ["0", "nan", "1e308", "-2.5", None])))
        _text(ds, 0x00281052, draw(_mostly("-1024", ["0", "inf", "1e300", "0.5", None])))
        _text(ds, 0x00281050, draw(_mostly("40", ["nan", "1e-320", None])))
        _text(ds, 0x00281051, draw(_mostly("400", ["0", "-5", "1e-320", None])))
        _text(ds, 0x00180088, draw(_mostly("2.5", ["0", "nan", "1e308", None])))
        _text(ds, 0x00180050, draw(_mostly("2.5", ["-1", None])))
        _text(ds, 0x3004000C, draw(_mostly(None, ["0\\1e308", "nan\\1", "0\\1\\2"])))
        _text(ds, 0x00200013, draw(_mostly(str(k + 1), ["9" * 5000, "x"])))
        _text(ds, 0x00200011, draw(_mostly("3", ["9" * 5000, "-0"])))
        if draw(st.booleans()):
            ds.SharedFunctionalGroupsSequence = [_frame_item(draw(_mostly("0.5\\0.5", _SPACING)), None,
                                                             draw(_mostly(None, _ORIENT)))]
        if draw(st.booleans()):
            ds.PerFrameFunctionalGroupsSequence = [
                _frame_item(draw(_mostly("0.5\\0.5", _SPACING)), draw(_mostly(f"0\\0\\{f}", _POSITION)), None)
                for f in range(draw(st.integers(0, 4)))]
        try:
            declared = rows * cols * max(bits, 8) // 8 * max(samples, 1) * max(1, int(float(frames or 1)))
        except (ValueError, OverflowError):
            declared = rows * cols * 2
        length = draw(_mostly("exact", ["short", "long", "none", "empty"]))
        pixel = {"exact": b"\x01\x02" * min(declared // 2 + 1, 1 << 20), "short": bytes(draw(st.integers(0, 64))),
                 "long": b"\x07" * min(declared + 100, 1 << 20), "none": None, "empty": b""}[length]
        if pixel is not None:
            if syntax in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90",
                          "1.2.840.10008.1.2.4.80"):
                ds.PixelData = encapsulate([pixel[:4096] or b"\x00\x00"] * draw(st.integers(1, 3)))
                ds["PixelData"].VR = "OB"
            else:
                ds.PixelData = pixel + (b"\x00" if len(pixel) % 2 else b"")
                ds["PixelData"].VR = "OW" if bits > 8 else "OB"
        buffer = io.BytesIO()
        try:
            ds.save_as(buffer, enforce_file_format=True)
        except Exception:  # pydicom refuses a few combinations (e.g. a 1.2.3.4 syntax): write them as implicit VR
            buffer = io.BytesIO()
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
            ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        if draw(st.integers(0, 3)) == 0:  # an element pydicom cannot convert
            data = data.replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00ZZ", 1)
        files.append((f"s/IM{k}.dcm", data))
    return files


@lru_cache(maxsize=4)
def deflate_bomb(inflated_pixels: int) -> bytes:
    """A Deflated Explicit VR CT file whose pixel data inflates to ``inflated_pixels`` bytes of zeros."""
    side = 4096
    frames = max(1, inflated_pixels // (side * side * 2))
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CT"
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames, ds.BitsAllocated, ds.BitsStored, ds.HighBit = frames, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    body = io.BytesIO()
    ds.save_as(body, implicit_vr=False, little_endian=True, enforce_file_format=False)
    n = frames * side * side * 2
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n))]
    zeros = bytes(1 << 24)
    for _ in range(n // len(zeros)):
        parts.append(deflater.compress(zeros))
    parts.append(deflater.compress(bytes(n % len(zeros))) + deflater.flush())
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO(b"\0" * 128 + b"DICM")
    out.seek(0, io.SEEK_END)
    writer = DicomFileLike(out)
    writer.is_little_endian, writer.is_implicit_VR = True, False
    write_file_meta_info(writer, meta)
    return out.getvalue() + b"".join(parts)


# --- zips ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _small_series() -> list[bytes]:
    study, series, out = generate_uid(), generate_uid(), []
    for k in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.PatientName = "Zip^Patient"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.Rows, ds.Columns = [0.7, 0.7], 8, 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.arange(64, dtype=np.int16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


_ZIP_NAMES = ["s/a.dcm", "s/b.dcm", "../evil.dcm", "/abs.dcm", "C:/win.dcm", "a", "a/b.dcm", "s/a.dcm", "x" * 300 + ".dcm",
              "d/" * 1500 + "deep.dcm", "..\\..\\w.dcm", "a/./c.dcm", ".", "", "inner.zip", "ü/ñ.dcm", "__MACOSX/._a",
              "s/", "s/a.dcm/x.dcm", "vol.nii.gz", "pic.png"]


@st.composite
def hostile_zip(draw) -> list[tuple[str, bytes]]:
    series = _small_series()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for _ in range(draw(st.integers(1, 6))):
            name = draw(st.sampled_from(_ZIP_NAMES))
            kind = draw(st.sampled_from(["dicom", "dicom", "zeros", "bomb", "deflated", "junk", "zip"]))
            data = {"dicom": series[draw(st.integers(0, 2))], "zeros": bytes(draw(st.integers(0, 3000))),
                    "bomb": bytes(draw(st.sampled_from([2 << 20, 40 << 20]))), "deflated": deflate_bomb(64 << 20),
                    "junk": draw(st.binary(max_size=200)), "zip": buffer.getvalue()[:2000] or b"PK"}[kind]
            info = zipfile.ZipInfo(name or "noname")
            if name == "":
                info.filename = ""
            info.compress_type = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                                       zipfile.ZIP_LZMA]))
            if draw(st.integers(0, 7)) == 0:
                info.external_attr = (0o120777 << 16)  # a symbolic link
            if draw(st.integers(0, 7)) == 0:
                info.flag_bits |= 0x1  # claims to be encrypted
            zf.writestr(info, data)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "none", "flip", "lie", "truncate", "lie_big"]))
    if damage == "flip" and len(data) > 60:
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(30, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif damage in ("lie", "lie_big"):
        size = 10 if damage == "lie" else 0xFFFFFFFE
        for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            at = data.find(signature)
            if at >= 0:
                data[at + offset: at + offset + 4] = size.to_bytes(4, "little")
    elif damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    return [(draw(st.sampled_from(["u.zip", "Study.ZIP"])), bytes(data))]


# --- NIfTI, images, ITK ----------------------------------------------------------------------------
_NIFTI_PATCHES = {  # NIfTI-1 offset → (struct format, interesting values)
    40: ("<h", [0, 1, 3, 4, 7, 8, -1, 32767]), 42: ("<h", [0, 1, -1, 32767, 2]), 44: ("<h", [0, -5, 32767]),
    46: ("<h", [0, 1, 32767]), 48: ("<h", [0, 2, 200]), 70: ("<h", [0, 2, 4, 16, 64, 128, 1792, 2304, 999]),
    72: ("<h", [0, 8, 13, 64]), 76: ("<f", [1.0, -1.0, float("nan")]), 80: ("<f", [0.0, float("nan"), float("inf"), 1e38]),
    84: ("<f", [0.0, -2.0, 1e-38]), 108: ("<f", [0.0, 352.0, 1e10, float("nan"), -1.0, 3e8]),
    112: ("<f", [0.0, float("nan"), float("inf"), 1e38]), 116: ("<f", [float("inf"), 1e38]),
    252: ("<h", [0, 1, 2, -3]), 254: ("<h", [0, 1, 7]), 256: ("<f", [float("nan"), 2.0, 1e30]),
    280: ("<f", [0.0, float("nan"), 1e308 if False else 3e38]), 300: ("<f", [0.0, float("inf")]),
    320: ("<f", [0.0, -0.0]), 344: ("4s", [b"n+1\x00", b"ni1\x00", b"zzzz"]), 348: ("4s", [b"\x01\x00\x00\x00"]),
    352: ("<i", [0, -16, 16, 2**31 - 1]),
}


@st.composite
def nifti_file(draw) -> list[tuple[str, bytes]]:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=2, max_size=5)))
    dtype = draw(st.sampled_from([np.int16, np.uint8, np.float32, np.float64, np.int32, np.complex64]))
    affine = np.array(draw(st.sampled_from([
        np.eye(4).tolist(), np.zeros((4, 4)).tolist(), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        [[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], [[1e308, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                       [0, 0, 0, 1]],
        [[0.5, 0, 0, 1e7], [0, 0.5, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]]])))
    version = draw(st.sampled_from([1, 1, 2]))
    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    with np.errstate(all="ignore"):
        img = klass(np.arange(int(np.prod(shape))).reshape(shape).astype(dtype), np.eye(4))
    if draw(st.booleans()):
        img.header.set_slope_inter(draw(st.sampled_from([2.0, 0.5])), 1.0)
    data = bytearray(img.to_bytes())
    if version == 1:  # the sform rows (nibabel will not write a singular affine itself)
        data[280:328] = affine[:3].astype("<f4").tobytes()
        for offset in draw(st.lists(st.sampled_from(sorted(_NIFTI_PATCHES)), max_size=4)):
            fmt, values = _NIFTI_PATCHES[offset]
            packed = struct.pack(fmt, draw(st.sampled_from(values)))
            data[offset:offset + len(packed)] = packed
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        return [("brain_T1.nii.gz", gzip.compress(bytes(data), 1))]
    return [("ct.nii", bytes(data))]


@lru_cache(maxsize=1)
def nifti_gz_bomb() -> bytes:
    """A ``.nii.gz`` of ~70 KB whose header claims 1 GiB of float64 voxels, all present (zeros)."""
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 512))
    header.set_data_dtype(np.float64)
    head = io.BytesIO()
    header.write_to(head)
    raw = head.getvalue().ljust(352, b"\0")
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        gz.write(raw)
        zeros = bytes(1 << 24)
        for _ in range(512 * 512 * 512 * 8 // len(zeros)):
            gz.write(zeros)
    return out.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def image_file(draw) -> list[tuple[str, bytes]]:
    from PIL import Image

    kind = draw(st.sampled_from(["png", "jpeg", "png_size", "tiff_as_png", "bomb"]))
    if kind == "png_size":  # an IHDR claiming a huge image, with a valid CRC
        w, h = draw(st.sampled_from([(2**31 - 1, 1), (65535, 65535), (0, 5), (9000, 9000)]))
        data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
            _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
        return [("huge.png", data)]
    if kind == "bomb":
        return [("bomb.png", _png_bomb())]
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "LA", "1", "CMYK", "I", "F"]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    img = Image.new("RGB", size, (10, 200, 30)).convert(mode) if mode not in ("I;16", "I", "F") else Image.new(mode, size)
    buffer = io.BytesIO()
    fmt = {"png": "PNG", "jpeg": "JPEG", "tiff_as_png": "TIFF"}[kind]
    try:
        img.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        img.convert("RGB").save(buffer, format=fmt)
    data = bytearray(buffer.getvalue())
    for _ in range(draw(_mostly(0, [1, 2, 6]))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return [(f"photo.{'jpg' if kind == 'jpeg' else 'png'}", bytes(data))]


@lru_cache(maxsize=1)
def _png_bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8192, 8192)).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


@st.composite
def itk_file(draw) -> list[tuple[str, bytes]]:
    """A MetaImage or NRRD file (and its data file) whose header fields are ordinary three times in four."""
    dims = draw(_mostly("3", ["2", "0", "4", "-1", "x"]))
    size = draw(_mostly("4 4 2", ["4 4", "0 4 4", "100000 100000 100000", "-3 4 4", "4 4 2 2", "4 4 99999999999"]))
    body = draw(_mostly(bytes(64), [zlib.compress(bytes(64)), b"", bytes(400), bytes(20)]))
    if draw(st.booleans()):
        datafile = draw(_mostly("LOCAL", ["/etc/passwd", "../outside.raw", "data.raw", "slice_%03d.raw 1 3 1", "LIST"]))
        header = (f"ObjectType = Image\nNDims = {dims}\nDimSize = {size}\n"
                  f"ElementType = {draw(_mostly('MET_SHORT', ['MET_UCHAR', 'MET_DOUBLE', 'MET_JUNK']))}\n"
                  f"ElementSpacing = {draw(_mostly('1 1 2', ['0 0 0', 'nan 1 1', '1e308 1 1', '1 ' * 5000]))}\n"
                  f"ElementNumberOfChannels = {draw(_mostly('1', ['3', '4', '100']))}\n"
                  f"CompressedData = {draw(_mostly('False', ['True']))}\n"
                  f"TransformMatrix = {draw(_mostly('1 0 0 0 1 0 0 0 1', ['0 0 0 0 0 0 0 0 0', 'nan 0 0 0 1 0 0 0 1']))}\n"
                  f"ElementDataFile = {datafile}\n").encode()
        if datafile == "LOCAL":
            return [("vol.mha", header + body)]
        return [("vol.mhd", header)] + ([("data.raw", body)] if datafile == "data.raw" else [])
    datafile = draw(_mostly("", ["data file: /etc/passwd\n", "data file: data.raw\n", "data file: LIST\n"]))
    nrrd = (f"NRRD0004\ntype: {draw(_mostly('short', ['uchar', 'junk', 'double']))}\n"
            f"dimension: {dims}\nsizes: {size}\nendian: little\n"
            f"spacings: {draw(_mostly('1 1 2', ['0 0 0', 'nan 1 1', '1e308 1 1']))}\n"
            f"encoding: {draw(_mostly('raw', ['gzip', 'bzip2', 'hex']))}\n{datafile}\n").encode()
    if datafile:
        return [("vol.nhdr", nrrd)] + ([("data.raw", body)] if "data.raw" in datafile else [])
    return [("vol.nrrd", nrrd + body)]


# --- tests -----------------------------------------------------------------------------------------
FAMILIES = {
    "dicom mutations": mutated_dicom(),
    "absurd dicom": absurd_dicom(),
    "hostile zips": hostile_zip(),
    "nifti": nifti_file(),
    "images": image_file(),
    "itk": itk_file(),
}


def _warm_up() -> None:
    """Import and cache in the parent what every child needs (codecs, the de-identification table)."""
    import SimpleITK  # noqa: F401

    import app.viewer  # noqa: F401
    import data.dicom_series  # noqa: F401
    import data.images  # noqa: F401
    import data.nifti  # noqa: F401
    from data.deid import _table

    _table()
    dicom_config.settings.writing_validation_mode = dicom_config.IGNORE


def _family_runner(campaign: Campaign, family: str, n: int, derandomize: bool):
    """A hypothesis test running ``n`` uploads of ``family`` through ``campaign`` (outcomes counted, not asserted)."""
    @settings(max_examples=n, deadline=None, database=None, derandomize=derandomize, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(upload=FAMILIES[family], as_folder=st.booleans())
    def one(upload, as_folder):
        campaign.run(family, upload, as_folder)

    return one


def _campaign(tmp_path: Path, examples: dict[str, int], *, derandomize: bool) -> Campaign:
    _warm_up()
    campaign = Campaign(tmp_path)
    for family, n in examples.items():
        _family_runner(campaign, family, n, derandomize)()
    return campaign


def test_bounded_fuzz_of_ingest(tmp_path):
    """A reproducible sample of every family (a few seconds per family on 2 cores)."""
    campaign = _campaign(tmp_path, {family: 12 for family in FAMILIES}, derandomize=True)
    for name, data in (("bomb.dcm", deflate_bomb(256 << 20)), ("bomb.nii.gz", nifti_gz_bomb()),
                       ("bomb.png", _png_bomb())):
        result = campaign.run("bombs", [(name, data)])
        assert result.outcome == "refused" and result.added_rss < 400 * 2**20, result
    print(campaign.report())
    assert campaign.counts[("all", "inputs")] >= 6 * 12
    assert not campaign.failures, campaign.report()


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)  # about 0.2 s per input on 2 cores
def test_fuzz_campaign_of_ingest(tmp_path):
    """The campaign: 5,000+ inputs, none escaping, over 1.5 GB, over 30 s or undisplayable once loaded."""
    examples = {"dicom mutations": 1600, "absurd dicom": 1200, "hostile zips": 800, "nifti": 700, "images": 400,
                "itk": 300}
    campaign = _campaign(tmp_path, examples, derandomize=False)
    for name, data in (("bomb.dcm", deflate_bomb(2 << 30)), ("bomb.nii.gz", nifti_gz_bomb()), ("bomb.png", _png_bomb())):
        campaign.run("bombs", [(name, data)])
    print(campaign.report())
    assert campaign.counts[("all", "inputs")] >= 5000
    assert not campaign.failures, campaign.report()

"""DICOM files of one study → image series: grouping, splitting, slice order, geometry, pixels, metadata.

A Series Instance UID is split into several volumes when its images differ in size, orientation or
pixel spacing, or when every slice position holds several images (time points, echoes). Slices are
ordered by their position along the slice normal (``n = row × column`` direction cosines), never by
file name or Instance Number; images without a position fall back to Instance Number with a warning.
The affine maps ``(i=column, j=row, k=slice)`` to RAS mm (DICOM's LPS with x and y negated).
"""

from __future__ import annotations

import math
import re
from concurrent.futures import Executor, as_completed

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID
from tqdm.auto import tqdm

from data.deid import Manifest, deidentify, note_derived_uid, pseudonymise_uids, remap_uid
from data.dicom import DicomFile, apply_rescale, decode_frames, frame_geometry, header_value, read_native_into
from data.dicom_geometry import LPS_TO_RAS, Frame, frame_affine, order_frames
from data.errors import IngestError
from data.study import Series, Volume

__all__ = ["assemble_series", "mr_sequence", "LPS_TO_RAS"]

_MAYBE_BURNED_IN = {"US", "SC", "XC", "ES", "OT", "SM", "GM"}


def assemble_series(files: list[DicomFile], *, deidentify_on: bool, manifest: Manifest, pool: Executor,
                    progress: bool = False) -> tuple[list[Series], list[IngestError]]:
    """Build the series of one study from its readable image files (original UIDs grouped here)."""
    by_uid: dict[str, list[DicomFile]] = {}
    for f in files:
        by_uid.setdefault(f.series_uid, []).append(f)
    series, errors = [], []
    for uid, group in by_uid.items():
        try:
            built, errs = _one_series(uid, group, deidentify_on, manifest, pool, progress)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one broken series is reported; the study's other series still load
            built, errs = [], [IngestError(f"unexpected {type(exc).__name__} while building a series of "
                                           f"{len(group)} files from this one on.", group[0].name)]
        series.extend(built)
        errors.extend(errs)
    return series, errors


def mr_sequence(text: str, contrast: bool = False) -> str:
    """MR sequence role from a description or file name: ``T1``, ``T1c``, ``T2``, ``FLAIR`` or ``""``."""
    t = text.lower()
    if "flair" in t:
        return "FLAIR"
    if re.search(r"t1.?(c\b|ce\b|\+c|gd|post|contrast)|(post|gd).?t1", t) or (re.search(r"\bt1", t) and contrast):
        return "T1c"
    if re.search(r"t1", t) or "mprage" in t or "spgr" in t:
        return "T1"
    if re.search(r"t2", t):
        return "T2"
    return ""


# ---------------------------------------------------------------------------------------------------
def _one_series(uid, group, deid_on, manifest, pool, progress) -> tuple[list[Series], list[IngestError]]:
    rep = group[0]
    rep_manifest = Manifest()
    header = deidentify(rep.ds, manifest=rep_manifest) if deid_on else rep.ds
    manifest.merge(rep_manifest)
    unreadable = [f"{len(rep_manifest.unreadable)} header element(s) could not be read and were removed: "
                  f"{', '.join(sorted(rep_manifest.unreadable)[:5])}."] if rep_manifest.unreadable else []
    if deid_on:
        _record_other_headers(group, manifest)
    frames, errors = [], []
    for f in group:
        try:
            frames.extend(_frames(f))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one file's unreadable functional groups: that file is reported and left out
            errors.append(IngestError(f"frame geometry could not be read ({type(exc).__name__}); the file was left out.",
                                      f.name))
    if not frames:
        return [], errors
    parts: dict[tuple, list[Frame]] = {}
    for fr in frames:
        f = fr.file
        key = (f.rows, f.cols, f.samples, f.photometric in ("RGB", "PALETTE COLOR") or f.samples == 3,
               None if fr.orientation is None else tuple(np.round(fr.orientation, 3)),
               None if fr.pixel_spacing is None else tuple(np.round(fr.pixel_spacing, 3)),
               f.name if f.frames > 1 else None)
        parts.setdefault(key, []).append(fr)
    stacks: list[tuple[list[Frame], list[str]]] = []
    for part in sorted(parts.values(), key=len, reverse=True):
        for stack, warns in order_frames(part):
            stacks.append((stack, warns))
    split_note = [f"series split into {len(stacks)} volumes: its images differ in size, orientation, spacing or "
                  "repeat slice positions."] if len(stacks) > 1 else []
    out = []
    for n, (stack, warns) in enumerate(stacks):
        array, affine, geo_warnings, meta, errs = _volume(stack, pool, progress)
        errors.extend(errs)
        if array is None:
            continue
        series_uid = _series_uid(uid, n, deid_on, rep.study_uid)
        sop_uids = [fr.file.sop_uid for fr in stack]
        meta.update(_header_meta(header, rep))
        meta["sop_instance_uids"] = pseudonymise_uids(sop_uids, rep.study_uid) if deid_on else sop_uids
        meta["frame_numbers"] = [fr.index for fr in stack]
        meta["deidentified"] = deid_on
        modality = rep.modality
        description = str(header_value(header, "SeriesDescription", "") or header_value(header, "ProtocolName", "") or "").strip()
        description = description or f"{modality} series {header_value(header, 'SeriesNumber', '') or ''}".strip()
        if len(stacks) > 1:
            description = f"{description} (part {n + 1} of {len(stacks)})"
        window = _window(header, meta)
        volume = Volume(
            array=array, affine=affine, modality=modality, body_part=str(header_value(header, "BodyPartExamined", "") or ""),
            window=window, study_uid=str(header_value(header, "StudyInstanceUID", "") or ""), series_uid=series_uid,
            description=description, sequence=mr_sequence(description, meta["contrast_agent"]) if modality == "MR" else "",
            meta=meta,
        )
        warnings = split_note + unreadable + warns + geo_warnings + _burned_in_warning(header, modality)
        n_files = len({fr.file.name for fr in stack})
        out.append(Series(uid=series_uid, modality=modality, description=description, volume=volume,
                          number=meta["series_number"], n_files=n_files,
                          warnings=warnings, source_format="dicom"))
    return out, errors


def _frames(f: DicomFile) -> list[Frame]:
    if f.frames == 1 and "SharedFunctionalGroupsSequence" not in f.ds:
        return [Frame(f, 0, f.position, f.orientation, f.pixel_spacing, f.slope, f.intercept)]
    return [Frame(f, i, g["position"], g["orientation"], g["pixel_spacing"], g["slope"], g["intercept"])
            for i, g in enumerate(frame_geometry(f))]


def _volume(stack: list[Frame], pool: Executor, progress: bool):
    """Pixels ``(I, J, K[, 3])`` after the modality LUT, RAS affine, geometry warnings, meta, per-file errors."""
    first = stack[0].file
    files = list(dict.fromkeys(fr.file for fr in stack))
    grey = first.samples == 1 and first.photometric != "PALETTE COLOR"
    fast = grey and all(f.fast for f in files) and len({f.stored_dtype for f in files}) == 1 \
        and not header_value(first.ds, "ModalityLUTSequence")
    result = _read_fast(stack, pool, progress) if fast else None
    if result is None:  # not native, or an integer rescale that overflowed the stored type: pydicom's way
        stack, pixels, errors = _decode(stack, files, pool, progress)
        if stack and grey:
            pixels = apply_rescale(pixels, first, [(fr.slope, fr.intercept) for fr in stack])
    else:
        stack, pixels, errors = result
    if not stack:
        return None, None, [], {}, errors
    affine, warnings, meta = frame_affine(stack)
    if errors:
        warnings.append(f"{len(errors)} file(s) of this series could not be read; their slices are missing.")
    if grey and first.photometric == "MONOCHROME1":
        pixels, meta["inverted_range"] = _invert(pixels, first, stack[0])
    # (K, rows, cols[, 3]) → (i=column, j=row, k[, 3]): a view, Fortran-ordered like nibabel's arrays
    array = pixels.transpose(2, 1, 0) if pixels.ndim == 3 else pixels.transpose(2, 1, 0, 3)
    meta["photometric"] = "RGB" if array.ndim == 4 else ("MONOCHROME2" if first.photometric == "MONOCHROME1"
                                                         else first.photometric)
    return array, affine, warnings, meta, errors


def _read_fast(stack: list[Frame], pool: Executor, progress: bool):
    """Native single-frame files: each slice read, bit-corrected and rescaled in a worker (in cache)."""
    first = stack[0].file
    stored = first.stored_dtype
    slopes = {fr.slope for fr in stack}
    intercepts = {fr.intercept for fr in stack}
    if slopes != {1.0} or any(c != int(c) for c in intercepts):
        dtype = np.dtype(np.float32)
    elif intercepts == {0.0}:
        dtype = stored
    else:  # integer intercept: the stored type if Bits Stored allows, else int16 checked per slice, else int32
        smin, smax = _stored_range(first)
        lo, hi = smin + min(intercepts), smax + max(intercepts)
        dtype = next((np.dtype(t) for t in (stored, np.int16) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max),
                     np.dtype(np.int16) if stored.itemsize <= 2 else np.dtype(np.int32))
    out = np.empty((len(stack), first.rows, first.cols), dtype=dtype)
    shift = first.bits_allocated - first.bits_stored
    futures = {pool.submit(_read_slice, fr, out[k], shift): k for k, fr in enumerate(stack)}
    errors, failed, overflow = [], set(), False
    with tqdm(total=len(futures), desc="Reading pixels", unit="slice", disable=not progress, delay=0.5,
              leave=False) as bar:
        for fut in as_completed(futures):
            bar.update(1)
            k = futures[fut]
            if fut.exception() is not None:
                failed.add(k)
                errors.append(_as_ingest_error(fut.exception(), stack[k].file))
            elif fut.result() is False:
                overflow = True
    if overflow:
        return None
    if failed:
        keep = [k for k in range(len(stack)) if k not in failed]
        stack, out = [stack[k] for k in keep], out[keep]
    return stack, out, errors


def _read_slice(fr: Frame, dst: np.ndarray, shift: int) -> bool:
    """One slice into ``dst``: Bits Stored correction as pydicom does, then slope/intercept; ``False`` if the
    rescaled values do not fit ``dst``'s integer type."""
    f = fr.file
    buf = dst if dst.dtype == f.stored_dtype else np.empty(dst.shape, f.stored_dtype)
    read_native_into(f, buf)
    if shift:  # drop bits above Bits Stored, sign-extend signed data
        np.left_shift(buf, shift, out=buf)
        np.right_shift(buf, shift, out=buf)
    if dst.dtype.kind == "f":
        np.multiply(buf, np.float32(fr.slope), out=dst, dtype=np.float32)
        dst += np.float32(fr.intercept)
        return True
    c = int(fr.intercept)
    if c == 0 and buf is dst:
        return True
    info = np.iinfo(dst.dtype)
    if not (info.min <= int(buf.min()) + c and int(buf.max()) + c <= info.max):
        return False
    np.add(buf, c, out=dst, dtype=np.int64 if dst.itemsize > 2 else np.int32, casting="unsafe")
    return True


def _decode(stack: list[Frame], files: list[DicomFile], pool: Executor, progress: bool):
    """pydicom decoding, one file per worker; frames in ``stack`` order."""
    decoded, errors = {}, []
    futures = {pool.submit(decode_frames, f): f for f in files}
    with tqdm(total=len(files), desc="Decoding pixels", unit="file", disable=not progress, delay=0.5,
              leave=False) as bar:
        for fut in as_completed(futures):
            bar.update(1)
            f = futures[fut]
            if fut.exception() is not None:
                errors.append(_as_ingest_error(fut.exception(), f))
            elif fut.result().shape[0] < f.frames:
                errors.append(IngestError(f"pixel data holds {fut.result().shape[0]} frames, the header says "
                                          f"{f.frames}; the file is incomplete.", f.name))
            else:
                decoded[f] = fut.result()
    stack = [fr for fr in stack if fr.file in decoded]
    if not stack:
        return [], None, errors
    return stack, np.stack([decoded[fr.file][fr.index] for fr in stack]), errors


def _stored_range(f: DicomFile) -> tuple[int, int]:
    if f.signed:
        return -(1 << (f.bits_stored - 1)), (1 << (f.bits_stored - 1)) - 1
    return 0, (1 << f.bits_stored) - 1


def _invert(pixels: np.ndarray, f: DicomFile, fr: Frame) -> tuple[np.ndarray, list[float]]:
    """MONOCHROME1 → MONOCHROME2: ``lo + hi - v`` over the modality-LUT output range of Bits Stored."""
    smin, smax = _stored_range(f)
    if header_value(f.ds, "ModalityLUTSequence"):
        ends = apply_modality_lut(np.array([smin, smax]), f.ds)
    else:
        with np.errstate(all="ignore"):
            ends = np.array([smin, smax], dtype=np.float64) * fr.slope + fr.intercept
    lo, hi = float(np.min(ends)), float(np.max(ends))
    if pixels.dtype.kind in "iu" and abs(lo) < 2**31 and abs(hi) < 2**31 and lo == int(lo) and hi == int(hi):
        inverted = int(lo) + int(hi) - pixels.astype(np.int64)
        dtype = next(np.dtype(t) for t in (pixels.dtype, np.int16, np.int32, np.int64)
                     if np.iinfo(t).min <= inverted.min() and inverted.max() <= np.iinfo(t).max)
        return inverted.astype(dtype), [lo, hi]
    with np.errstate(all="ignore"):  # an absurd rescale gives infinities: shown as such, not an error
        return (lo + hi - pixels).astype(np.float32 if pixels.dtype != np.float64 else np.float64), [lo, hi]


def _record_other_headers(group: list[DicomFile], manifest: Manifest) -> None:
    """Manifest entries for attributes the representative header lacks (other files' headers are discarded)."""
    seen = set(group[0].ds.keys())
    extra = Dataset()
    for f in group[1:]:
        for tag in f.ds.keys() - seen:
            seen.add(tag)
            try:
                extra[tag] = f.ds[tag]
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception:  # an element pydicom cannot convert is dropped with its header
                continue
    if len(extra):
        partial = Manifest()
        deidentify(extra, manifest=partial)
        manifest.actions |= partial.actions
    manifest.datasets += len(group) - 1


def _header_meta(header: Dataset, rep: DicomFile) -> dict:
    def num(keyword):
        value = header_value(header, keyword)
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    syntax = getattr(getattr(rep.ds, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "sop_class": UID(rep.sop_class).name if rep.sop_class else "",
        "frame_of_reference_uid": str(header_value(header, "FrameOfReferenceUID", "") or ""),
        "transfer_syntax": UID(syntax).name if syntax else "",
        "series_number": _series_number(header_value(header, "SeriesNumber", "")),
        "rescale_type": str(header_value(header, "RescaleType", "") or ("HU" if rep.modality == "CT" else "")),
        "echo_time_ms": num("EchoTime"), "repetition_time_ms": num("RepetitionTime"),
        "inversion_time_ms": num("InversionTime"), "kvp": num("KVP"),
        "contrast_agent": bool(header_value(rep.ds, "ContrastBolusAgent") or header_value(rep.ds, "ContrastBolusRoute")),
        "view_position": str(header_value(header, "ViewPosition", "") or ""),
        "image_type": [str(v) for v in (header_value(header, "ImageType") or [])],
        "burned_in_annotation": str(header_value(header, "BurnedInAnnotation", "") or ""),
        "manufacturer": str(header_value(header, "Manufacturer", "") or ""),
    }


def _series_number(value) -> int | None:
    text = str(value).strip()
    return int(text) if len(text) <= 12 and text.lstrip("-").isdigit() else None


def _window(header: Dataset, meta: dict) -> tuple[float, float] | None:
    centre, width = header_value(header, "WindowCenter"), header_value(header, "WindowWidth")
    try:
        centre = float(centre[0] if hasattr(centre, "__len__") and not isinstance(centre, str) else centre)
        width = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if width <= 0 or not math.isfinite(centre) or not math.isfinite(width):
        return None
    if "inverted_range" in meta:  # the window was written for MONOCHROME1 values
        lo, hi = meta["inverted_range"]
        centre = lo + hi - centre
    return centre, width


def _burned_in_warning(header: Dataset, modality: str) -> list[str]:
    flag = str(header_value(header, "BurnedInAnnotation", "") or "").upper()
    if flag == "YES":
        return ["Burned In Annotation = YES: the pixels may show identifying text; review before sharing images."]
    if not flag and modality in _MAYBE_BURNED_IN:
        return [f"{modality} images often carry burned-in text and Burned In Annotation is not stated; review "
                "before sharing images."]
    return []


def _series_uid(uid: str, part: int, deid_on: bool, study_uid: str) -> str:
    """The series UID; later parts of a split series get derived UIDs (mapped back to the original one)."""
    if part == 0:
        return remap_uid(uid) if deid_on else uid
    derived = remap_uid(f"{uid}#part{part}")
    if deid_on:
        note_derived_uid(derived, uid, study_uid)
    return derived


def _as_ingest_error(exc: BaseException, f: DicomFile) -> IngestError:
    if isinstance(exc, IngestError):
        return exc
    return IngestError(f"pixel data could not be read ({type(exc).__name__}).", f.name)

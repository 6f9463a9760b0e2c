"""DICOM files of one study → image series: grouping, splitting, slice order, geometry, pixels, metadata.

A Series Instance UID is split into several volumes when its images differ in size, orientation or
pixel spacing, or when every slice position holds several images (time points, echoes). Slices are
ordered by their position along the slice normal (``n = row × column`` direction cosines), never by
file name or Instance Number; images without a position fall back to Instance Number with a warning.
The affine maps ``(i=column, j=row, k=slice)`` to RAS mm (DICOM's LPS with x and y negated).
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import UID
from tqdm.auto import tqdm

from data.deid import Manifest, deidentify, note_derived_uid, pseudonymise_uids, remap_uid
from data.dicom import DicomFile, apply_rescale, decode_frames, frame_geometry, read_native_into
from data.errors import IngestError
from data.study import Series, Volume

__all__ = ["assemble_series", "mr_sequence", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NEEDS_GEOMETRY = {"CT", "MR", "PT", "NM"}  # modalities whose images must carry position and spacing
_MAYBE_BURNED_IN = {"US", "SC", "XC", "ES", "OT", "SM", "GM"}


@dataclass(slots=True)
class _Frame:
    file: DicomFile
    index: int  # frame number within its file
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float


def assemble_series(files: list[DicomFile], *, deidentify_on: bool, manifest: Manifest, pool: Executor,
                    progress: bool = False) -> tuple[list[Series], list[IngestError]]:
    """Build the series of one study from its readable image files (original UIDs grouped here)."""
    by_uid: dict[str, list[DicomFile]] = {}
    for f in files:
        by_uid.setdefault(f.series_uid, []).append(f)
    series, errors = [], []
    for uid, group in by_uid.items():
        built, errs = _one_series(uid, group, deidentify_on, manifest, pool, progress)
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
    header = deidentify(rep.ds, manifest=manifest) if deid_on else rep.ds
    if deid_on:
        _record_other_headers(group, manifest)
    frames = [fr for f in group for fr in _frames(f)]
    parts: dict[tuple, list[_Frame]] = {}
    for fr in frames:
        f = fr.file
        key = (f.rows, f.cols, f.samples, f.photometric in ("RGB", "PALETTE COLOR") or f.samples == 3,
               None if fr.orientation is None else tuple(np.round(fr.orientation, 3)),
               None if fr.pixel_spacing is None else tuple(np.round(fr.pixel_spacing, 3)),
               f.name if f.frames > 1 else None)
        parts.setdefault(key, []).append(fr)
    stacks: list[tuple[list[_Frame], list[str]]] = []
    for part in sorted(parts.values(), key=len, reverse=True):
        for stack, warns in _order(part):
            stacks.append((stack, warns))
    split_note = [f"series split into {len(stacks)} volumes: its images differ in size, orientation, spacing or "
                  "repeat slice positions."] if len(stacks) > 1 else []
    out, errors = [], []
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
        description = str(header.get("SeriesDescription", "") or header.get("ProtocolName", "") or "").strip()
        description = description or f"{modality} series {header.get('SeriesNumber', '') or ''}".strip()
        if len(stacks) > 1:
            description = f"{description} (part {n + 1} of {len(stacks)})"
        window = _window(header, meta)
        volume = Volume(
            array=array, affine=affine, modality=modality, body_part=str(header.get("BodyPartExamined", "") or ""),
            window=window, study_uid=str(header.get("StudyInstanceUID", "") or ""), series_uid=series_uid,
            description=description, sequence=mr_sequence(description, meta["contrast_agent"]) if modality == "MR" else "",
            meta=meta,
        )
        warnings = split_note + warns + geo_warnings + _burned_in_warning(header, modality)
        n_files = len({fr.file.name for fr in stack})
        number = header.get("SeriesNumber")
        out.append(Series(uid=series_uid, modality=modality, description=description, volume=volume,
                          number=int(number) if number not in (None, "") else None, n_files=n_files,
                          warnings=warnings, source_format="dicom"))
    return out, errors


def _frames(f: DicomFile) -> list[_Frame]:
    if f.frames == 1 and "SharedFunctionalGroupsSequence" not in f.ds:
        return [_Frame(f, 0, f.position, f.orientation, f.pixel_spacing, f.slope, f.intercept)]
    return [_Frame(f, i, g["position"], g["orientation"], g["pixel_spacing"], g["slope"], g["intercept"])
            for i, g in enumerate(frame_geometry(f))]


def _order(part: list[_Frame]) -> list[tuple[list[_Frame], list[str]]]:
    """Order by position along the normal; split repeated positions into volumes."""
    placed = part[0].orientation is not None and all(fr.position is not None for fr in part)
    if not placed or len(part) == 1:
        part = sorted(part, key=lambda fr: (fr.file.order, fr.file.name, fr.index))
        warns = [] if len(part) == 1 else [f"{len(part)} images have no slice position: ordered by instance / frame "
                                           "number; slice spacing is not known."]
        return [(part, warns)]
    normal = np.cross(part[0].orientation[:3], part[0].orientation[3:])
    dist = [round(float(fr.position @ normal), 2) for fr in part]
    order = sorted(range(len(part)), key=lambda i: (dist[i], part[i].file.order, part[i].file.name, part[i].index))
    counts = Counter(dist)
    repeats = set(counts.values())
    if repeats == {1}:
        return [([part[i] for i in order], [])]
    if len(repeats) == 1:  # every position holds m images: m volumes (time points, echoes, repeats)
        m = repeats.pop()
        groups: list[list[_Frame]] = [[] for _ in range(m)]
        seen: Counter = Counter()
        for i in sorted(range(len(part)), key=lambda i: (part[i].file.order, part[i].file.name, part[i].index, dist[i])):
            groups[seen[dist[i]]].append(part[i])
            seen[dist[i]] += 1
        warn = f"{m} images at every slice position (time points, echoes or repeats): split into {m} volumes."
        return [(sorted(g, key=lambda fr: float(fr.position @ normal)), [warn]) for g in groups]
    kept, dropped, seen_d = [], 0, set()
    for i in order:
        if dist[i] in seen_d:
            dropped += 1
            continue
        seen_d.add(dist[i])
        kept.append(part[i])
    return [(kept, [f"{dropped} images repeat a slice position already loaded and were dropped."])]


def _volume(stack: list[_Frame], pool: Executor, progress: bool):
    """Pixels ``(I, J, K[, 3])`` after the modality LUT, RAS affine, geometry warnings, meta, per-file errors."""
    first = stack[0].file
    files = list(dict.fromkeys(fr.file for fr in stack))
    grey = first.samples == 1 and first.photometric != "PALETTE COLOR"
    fast = grey and all(f.fast for f in files) and len({f.stored_dtype for f in files}) == 1 \
        and not first.ds.get("ModalityLUTSequence")
    result = _read_fast(stack, pool, progress) if fast else None
    if result is None:  # not native, or an integer rescale that overflowed the stored type: pydicom's way
        stack, pixels, errors = _decode(stack, files, pool, progress)
        if stack and grey:
            pixels = apply_rescale(pixels, first, [(fr.slope, fr.intercept) for fr in stack])
    else:
        stack, pixels, errors = result
    if not stack:
        return None, None, [], {}, errors
    affine, warnings, meta = _geometry(stack)
    if errors:
        warnings.append(f"{len(errors)} file(s) of this series could not be read; their slices are missing.")
    if grey and first.photometric == "MONOCHROME1":
        pixels, meta["inverted_range"] = _invert(pixels, first, stack[0])
    # (K, rows, cols[, 3]) → (i=column, j=row, k[, 3]): a view, Fortran-ordered like nibabel's arrays
    array = pixels.transpose(2, 1, 0) if pixels.ndim == 3 else pixels.transpose(2, 1, 0, 3)
    meta["photometric"] = "RGB" if array.ndim == 4 else ("MONOCHROME2" if first.photometric == "MONOCHROME1"
                                                         else first.photometric)
    return array, affine, warnings, meta, errors


def _read_fast(stack: list[_Frame], pool: Executor, progress: bool):
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


def _read_slice(fr: _Frame, dst: np.ndarray, shift: int) -> bool:
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


def _decode(stack: list[_Frame], files: list[DicomFile], pool: Executor, progress: bool):
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


def _geometry(stack: list[_Frame]) -> tuple[np.ndarray, list[str], dict]:
    first, f0 = stack[0], stack[0].file
    modality, warnings, meta = f0.modality, [], {}
    orientation = first.orientation
    meta["orientation_assumed"] = orientation is None
    if orientation is None:
        orientation = np.array([1.0, 0, 0, 0, 1.0, 0])
        if modality in _NEEDS_GEOMETRY:
            warnings.append("no Image Orientation (Patient): an axial orientation is assumed.")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    spacing = first.pixel_spacing
    meta["spacing_source"] = f0.spacing_source if spacing is not None else "assumed"
    if spacing is None:
        spacing = (1.0, 1.0)
        if modality in _NEEDS_GEOMETRY:
            warnings.append("no Pixel Spacing: 1 mm pixels are assumed; measurements are not in mm.")
    thickness = _positive(f0.ds.get("SpacingBetweenSlices")) or _positive(f0.ds.get("SliceThickness")) or 1.0
    positions = [fr.position for fr in stack]
    placed = all(p is not None for p in positions)
    origin = positions[0] if placed else np.zeros(3)
    step = normal * thickness
    if placed and len(stack) > 1:
        step, spacing_warnings = _slice_step(np.asarray(positions), normal)
        warnings.extend(spacing_warnings)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]  # i runs along a row: column spacing
    affine[:3, 1] = col_dir * spacing[0]  # j runs down a column: row spacing
    affine[:3, 2] = step
    affine[:3, 3] = origin
    meta["slice_thickness_mm"] = _positive(f0.ds.get("SliceThickness"))
    return LPS_TO_RAS @ affine, warnings, meta


def _slice_step(positions: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Median step vector between consecutive slices, with warnings for gaps, unevenness and tilt."""
    diffs = np.diff(positions, axis=0)  # (K-1, 3)
    dist = diffs @ normal
    median = float(np.median(dist))
    step = np.median(diffs, axis=0)
    warnings = []
    tolerance = max(0.01 * median, 0.01)
    off = np.abs(dist - median) > tolerance
    if np.any(off):
        gaps = np.nonzero(dist > 1.5 * median)[0]
        for k in gaps[:5]:
            missing = int(round(dist[k] / median)) - 1
            warnings.append(f"gap between slices {k} and {k + 1}: {dist[k]:.2f} mm instead of {median:.2f} mm "
                            f"(about {missing} slice(s) missing); geometry uses the median spacing.")
        if len(gaps) > 5:
            warnings.append(f"{len(gaps) - 5} more gaps between slices.")
        if np.any(off & (dist <= 1.5 * median)):
            warnings.append(f"uneven slice spacing: steps from {dist.min():.3f} to {dist.max():.3f} mm "
                            f"(median {median:.3f} mm); geometry uses the median spacing.")
    cos = abs(float(step @ normal)) / max(float(np.linalg.norm(step)), 1e-9)
    tilt = math.degrees(math.acos(min(1.0, cos)))
    if tilt > 0.5:
        warnings.append(f"slices are sheared by {tilt:.1f}° (gantry tilt): the affine carries the shear; "
                        "resample before measuring along the slice axis.")
    return step, warnings


def _invert(pixels: np.ndarray, f: DicomFile, fr: _Frame) -> tuple[np.ndarray, list[float]]:
    """MONOCHROME1 → MONOCHROME2: ``lo + hi - v`` over the modality-LUT output range of Bits Stored."""
    smin, smax = _stored_range(f)
    if f.ds.get("ModalityLUTSequence"):
        ends = apply_modality_lut(np.array([smin, smax]), f.ds)
    else:
        ends = np.array([smin, smax], dtype=np.float64) * fr.slope + fr.intercept
    lo, hi = float(np.min(ends)), float(np.max(ends))
    if pixels.dtype.kind in "iu" and lo == int(lo) and hi == int(hi):
        inverted = int(lo) + int(hi) - pixels.astype(np.int64)
        dtype = next(np.dtype(t) for t in (pixels.dtype, np.int16, np.int32, np.int64)
                     if np.iinfo(t).min <= inverted.min() and inverted.max() <= np.iinfo(t).max)
        return inverted.astype(dtype), [lo, hi]
    return (lo + hi - pixels).astype(np.float32 if pixels.dtype != np.float64 else np.float64), [lo, hi]


def _record_other_headers(group: list[DicomFile], manifest: Manifest) -> None:
    """Manifest entries for attributes the representative header lacks (other files' headers are discarded)."""
    seen = set(group[0].ds.keys())
    extra = Dataset()
    for f in group[1:]:
        for tag in f.ds.keys() - seen:
            extra[tag] = f.ds[tag]
            seen.add(tag)
    if len(extra):
        deidentify(extra, manifest=manifest)
    manifest.datasets += len(group) - 1


def _header_meta(header: Dataset, rep: DicomFile) -> dict:
    def num(keyword):
        value = header.get(keyword)
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    syntax = getattr(getattr(rep.ds, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "sop_class": UID(rep.sop_class).name if rep.sop_class else "",
        "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "") or ""),
        "transfer_syntax": UID(syntax).name if syntax else "",
        "series_number": int(header.SeriesNumber) if str(header.get("SeriesNumber", "")).strip().lstrip("-").isdigit() else None,
        "rescale_type": str(header.get("RescaleType", "") or ("HU" if rep.modality == "CT" else "")),
        "echo_time_ms": num("EchoTime"), "repetition_time_ms": num("RepetitionTime"),
        "inversion_time_ms": num("InversionTime"), "kvp": num("KVP"),
        "contrast_agent": bool(rep.ds.get("ContrastBolusAgent") or rep.ds.get("ContrastBolusRoute")),
        "view_position": str(header.get("ViewPosition", "") or ""),
        "image_type": [str(v) for v in (header.get("ImageType") or [])],
        "burned_in_annotation": str(header.get("BurnedInAnnotation", "") or ""),
        "manufacturer": str(header.get("Manufacturer", "") or ""),
    }


def _window(header: Dataset, meta: dict) -> tuple[float, float] | None:
    centre, width = header.get("WindowCenter"), header.get("WindowWidth")
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
    flag = str(header.get("BurnedInAnnotation", "") or "").upper()
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


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 and math.isfinite(v) else None


def _as_ingest_error(exc: BaseException, f: DicomFile) -> IngestError:
    if isinstance(exc, IngestError):
        return exc
    return IngestError(f"pixel data could not be read ({type(exc).__name__}).", f.name)

"""Load an upload — a folder, files or a ``.zip`` of DICOM, NIfTI, NRRD/MHA, PNG/JPEG — into studies.

``load_studies`` returns every study in the upload; ``load_study`` returns the one study of an upload
and raises :class:`IngestError` when there are several (the app then offers ``load_studies``). NIfTI,
NRRD/MHA and image files join the upload's DICOM study when there is exactly one, and otherwise form
a study of their own. A bad file becomes one ``IngestError`` in ``Study.errors`` and never stops the
rest; problems with the whole upload (missing path, too large, zip bomb) raise ``IngestError``.

With ``deidentify=True`` (the default) the returned objects carry only de-identified values (see
:mod:`data.deid`): the first header of each series is de-identified in full for the series' metadata
and the manifest, every other header contributes its attribute list to the manifest and its SOP
Instance UID (remapped); the original headers are dropped when loading ends.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

from tqdm.auto import tqdm

from data.archive import extract_zip
from data.deid import Manifest, clean_descriptor, reidentification_key, remap_uid
from data.errors import IngestError
from data.geometry import validate_volume
from data.limits import ArchiveLimits, ImageBudget, IngestLimits
from data.study import Series, SkippedObject, Study
from data.workdir import disk_error, ingest_workdir, sweep_stale_ingest_dirs

__all__ = ["IngestLimits", "ArchiveLimits", "load_study", "load_studies", "write_deidentified", "collect_upload",
           "reidentification_key", "sweep_stale_ingest_dirs"]

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
_SKIP_SUFFIXES = {
    ".txt": "text file", ".json": "JSON file", ".xml": "XML file", ".csv": "table", ".md": "text file",
    ".html": "web page", ".htm": "web page", ".pdf": "PDF document", ".log": "log file", ".ini": "settings file",
    ".dump": "text dump", ".icc": "colour profile", ".gz": "compressed file (only .nii.gz and .zip are opened)",
    ".raw": "raw data file of a .mhd/.nhdr header", ".zraw": "raw data file of a .mhd header",
    ".hdr": "Analyze / NIfTI-pair header: convert the pair to .nii", ".img": "Analyze / NIfTI-pair data: convert to .nii",
    ".py": "script", ".m": "script", ".sh": "script", ".exe": "program", ".db": "database file",
}


@dataclass
class _Upload:
    files: list[tuple[Path, str, str]] = field(default_factory=list)  # (path, name in upload, kind)
    errors: list[IngestError] = field(default_factory=list)
    skipped: list[SkippedObject] = field(default_factory=list)


def load_study(path_or_paths: PathLike | Iterable[PathLike], *, deidentify: bool = True, progress: bool = False,
               limits: IngestLimits | None = None) -> Study:
    """Load one study; ``IngestError`` if the upload holds no image or several studies.

    Returns a :class:`Study` whose series carry ``(I, J, K)`` volumes (``i`` = column, ``j`` = row,
    ``k`` = slice) with voxel → RAS mm affines; skipped objects and per-file errors are on the study.
    """
    studies = load_studies(path_or_paths, deidentify=deidentify, progress=progress, limits=limits)
    if len(studies) > 1:
        listing = ", ".join(f"…{s.uid[-8:]} ({len(s.series)} series)" for s in studies)
        raise IngestError(f"the upload holds {len(studies)} studies ({listing}); expected one: upload one study "
                          "at a time or load them with load_studies().")
    study = studies[0]
    if not study.series:
        problems = [str(e) for e in study.errors[:3]] + [f"{s.name}: {s.reason}" for s in study.skipped[:3]]
        raise IngestError(f"no image series could be loaded ({len(study.errors)} errors, {len(study.skipped)} "
                          f"skipped): " + " | ".join(problems))
    return study


def load_studies(path_or_paths: PathLike | Iterable[PathLike], *, deidentify: bool = True, progress: bool = False,
                 limits: IngestLimits | None = None) -> list[Study]:
    """Load every study of an upload (an empty-series study carries the errors when nothing loads).

    Raw files (extracted archives, inflated copies) live in a private folder removed before this
    returns or raises. Every failure is an :class:`IngestError`: a bad file is one error on the first
    study and the rest loads; a problem of the whole upload (over a limit, the server's disk full) raises.
    """
    limits = limits or IngestLimits()
    started = time.perf_counter()
    try:
        with ingest_workdir() as workdir, _quiet_libraries():
            studies, n_files = _load(path_or_paths, workdir, deidentify, progress, limits)
    except IngestError:
        log.warning("ingest refused an upload (the reason is shown to the uploader)")
        raise
    except OSError as exc:
        log.warning("ingest failed on a storage error (%s)", type(exc).__name__)
        raise disk_error(exc, writable_error=True) or IngestError(
            f"the upload could not be read ({type(exc).__name__}); upload it again.") from None
    except MemoryError:
        log.warning("ingest ran out of memory")
        raise IngestError("the server ran out of memory loading this upload; upload fewer series at a time, or ask "
                          "the administrator to lower IngestLimits.max_image_bytes or add memory.") from None
    except Exception as exc:  # a bug must not take the upload page down: the uploader gets a message
        log.error("ingest failed unexpectedly (%s)", type(exc).__name__)
        raise IngestError(f"unexpected {type(exc).__name__} while loading the upload; nothing was loaded: try again, "
                          "or upload the series one at a time to find the file that causes it.") from None
    # counts only: file names and header values may identify the patient (the uploader sees them in Study.errors)
    n_errors = sum(len(s.errors) for s in studies)
    if n_errors:
        log.warning("ingest: %d file(s) or series could not be loaded (reasons are shown to the uploader)", n_errors)
    log.info("ingest: %d series in %d studies from %d files (%d skipped, %d errors) in %.2f s",
             sum(len(s.series) for s in studies), len(studies), n_files,
             sum(len(s.skipped) for s in studies), n_errors, time.perf_counter() - started)
    return studies


def write_deidentified(path_or_paths: PathLike | Iterable[PathLike], out_dir: PathLike, *,
                       limits: IngestLimits | None = None) -> dict:
    """De-identify every DICOM file of an upload into ``out_dir/<study>/<series>/<instance>.dcm``.

    Names on disk are de-identified UIDs. Returns (and writes as ``deid_manifest.json``) a summary:
    files written, skipped objects, errors and the manifest (attribute keywords and actions, no values).
    A full output disk raises :class:`IngestError` and leaves no partly written file.
    """
    import json

    import pydicom

    from data.deid import deidentify
    from data.dicom import is_dicom, readable_copy

    limits = limits or IngestLimits()
    out = Path(out_dir)
    manifest, written = Manifest(), 0
    with ingest_workdir("m3-deid-") as tmp, _quiet_libraries():
        upload = collect_upload(path_or_paths, tmp, limits)
        errors, skipped = list(upload.errors), list(upload.skipped)
        scratch = tmp / "inflated"
        scratch.mkdir()
        for path, name, kind in upload.files:
            if kind != "dicom":
                skipped.append(SkippedObject(name, "not DICOM: only DICOM files are de-identified and written."))
                continue
            try:
                source = readable_copy(path, name, limits, scratch)
                if os.path.getsize(source) > limits.max_image_bytes_per_file + limits.max_header_bytes:
                    raise IngestError("file is larger than IngestLimits.max_image_bytes_per_file plus "
                                      "max_header_bytes; raise them to de-identify it.", name)
                ds = pydicom.dcmread(source, force=not is_dicom(source))
                if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
                    raise IngestError("not a DICOM instance (no SOP Instance / Study Instance UID).", name)
                clean = deidentify(ds, manifest=manifest, in_place=True)
                target = out / str(clean.StudyInstanceUID) / str(clean.get("SeriesInstanceUID", "series")) \
                    / f"{clean.SOPInstanceUID}.dcm"
                _write_whole(target, lambda part, ds=clean: ds.save_as(part, enforce_file_format=True))
                written += 1
            except IngestError as exc:
                if exc.path is None:  # the output disk: nothing more can be written
                    raise
                errors.append(exc)
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:  # one bad file never stops the rest
                errors.append(IngestError(f"could not be de-identified and written ({type(exc).__name__}).", name))
    summary = {"written": written, "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
               "errors": [str(e) for e in errors], "manifest": manifest.as_dict()}
    _write_whole(out / "deid_manifest.json", lambda part: part.write_text(json.dumps(summary, indent=2) + "\n"))
    log.info("de-identified %d files (%d skipped, %d errors)", written, len(skipped), len(errors))
    return summary


def collect_upload(path_or_paths: PathLike | Iterable[PathLike], workdir: Path, limits: IngestLimits) -> _Upload:
    """List an upload's files with their kind; ``.zip`` archives are safely extracted into ``workdir``."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    if not paths:
        raise IngestError("nothing to load: give a folder, one or more files, or a .zip archive.")
    listed: list[tuple[Path, str]] = []
    upload = _Upload()
    for p in map(Path, paths):
        try:
            if not p.exists():
                raise IngestError("no such file or folder; check the path.", p.name)
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    name = f"{p.name}/{f.relative_to(p).as_posix()}"
                    if f.is_symlink():
                        upload.skipped.append(SkippedObject(name, "symbolic link: not followed."))
                    elif f.is_file():
                        listed.append((f, name))
            else:
                listed.append((p, p.name))
        except ValueError:  # a NUL byte in the name
            raise IngestError("a file name cannot be used on this server (it holds a NUL byte); rename it.") from None
        except OSError as exc:
            raise IngestError(f"the upload could not be listed ({type(exc).__name__}); upload it again.",
                              p.name) from None
    if len(listed) > limits.max_files:
        raise IngestError(f"upload has {len(listed)} files, the limit is {limits.max_files}; split it or raise "
                          "IngestLimits.max_files.")
    sizes = []
    for f, name in listed:
        try:
            sizes.append(os.path.getsize(f))
        except OSError as exc:
            raise IngestError(f"file could not be read ({type(exc).__name__}); upload it again.", name) from None
    total = sum(sizes)
    if total > limits.max_upload_bytes:
        raise IngestError(f"upload is {total / 2**30:.1f} GiB, the limit is {limits.max_upload_bytes / 2**30:.1f} "
                          "GiB; split it or raise IngestLimits.max_upload_bytes.")
    for n_zip, (path, name) in enumerate(listed):
        kind = _kind(path, name)
        if kind == "zip":
            extracted = extract_zip(path, workdir / f"zip{n_zip}", name, limits.archive)
            upload.errors.extend(extracted.errors)
            upload.skipped.extend(extracted.skipped)
            for inner, inner_name in extracted.files:
                inner_kind = _kind(inner, inner_name)
                if inner_kind.startswith("skip:") or inner_kind == "zip":
                    upload.skipped.append(SkippedObject(inner_name, inner_kind[5:] or "nested archive"))
                else:
                    upload.files.append((inner, inner_name, inner_kind))
        elif kind.startswith("skip:"):
            upload.skipped.append(SkippedObject(name, kind[5:]))
        else:
            upload.files.append((path, name, kind))
    if len(upload.files) > limits.max_files:
        raise IngestError(f"upload has {len(upload.files)} files after extraction, the limit is {limits.max_files}; "
                          "split it or raise IngestLimits.max_files.")
    return upload


# ---------------------------------------------------------------------------------------------------
def _load(path_or_paths, workdir: Path, deidentify: bool, progress: bool, limits: IngestLimits) -> tuple[list[Study], int]:
    """``load_studies`` inside its private folder: (studies, number of files in the upload)."""
    from data.dicom import DicomFile, NonImage, header_value, is_dicom, read_dicom_header
    from data.dicom_series import assemble_series
    from data.display import default_window

    upload = collect_upload(path_or_paths, workdir, limits)
    scratch = workdir / "inflated"
    scratch.mkdir()
    budget = ImageBudget(limits)
    errors, skipped = list(upload.errors), list(upload.skipped)
    dicom: list[DicomFile] = []
    skipped_by_study: dict[str, list[SkippedObject]] = {}
    other: list[Series] = []
    candidates = [(p, n) for p, n, kind in upload.files if kind == "dicom"]
    for path, name in tqdm(candidates, desc="Reading headers", unit="file", disable=not progress, delay=0.5,
                           leave=False):
        try:
            result = read_dicom_header(path, name, force=not is_dicom(path), limits=limits, scratch=scratch)
        except IngestError as exc:
            if exc.path is None:  # the server's disk: nothing more can be read
                raise
            errors.append(exc)
            continue
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one bad file never stops the upload: record it and go on
            errors.append(IngestError(f"unexpected {type(exc).__name__} while reading the header.", name))
            continue
        if isinstance(result, NonImage):
            skipped_by_study.setdefault(result.study_uid, []).append(result.skipped)
        else:
            dicom.append(result)
    budget.take(sum(f.decoded_bytes for f in dicom))
    for path, name, kind in upload.files:
        if kind != "dicom":
            try:
                other.extend(_load_other(path, name, kind, limits, budget))
            except IngestError as exc:
                if exc.path is None:
                    raise
                errors.append(exc)
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:
                errors.append(IngestError(f"unexpected {type(exc).__name__} while loading the file.", name))
    studies: list[Study] = []
    by_study: dict[str, list[DicomFile]] = {}
    for f in dicom:
        by_study.setdefault(f.study_uid, []).append(f)
    with ThreadPoolExecutor(max_workers=max(1, limits.workers)) as pool:
        for study_uid, files in by_study.items():
            manifest = Manifest()
            try:
                series, study_errors = assemble_series(files, deidentify_on=deidentify, manifest=manifest,
                                                       pool=pool, progress=progress)
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a study that cannot be assembled is reported, the others still load
                series, study_errors = [], [IngestError(f"unexpected {type(exc).__name__} while assembling "
                                                        f"{len(files)} files into series.", files[0].name)]
            uid = remap_uid(study_uid) if deidentify else study_uid
            description = str(header_value(files[0].ds, "StudyDescription", "") or "")
            studies.append(Study(uid=uid, series=series, errors=study_errors,
                                 skipped=skipped_by_study.pop(study_uid, []),
                                 deid_manifest=manifest.as_dict() if deidentify else {},
                                 description=clean_descriptor(description, files[0].ds) if deidentify else description))
    for rest in skipped_by_study.values():
        skipped.extend(rest)
    if other:
        if len(studies) == 1:
            target = studies[0]
        else:
            target = Study(uid=remap_uid("upload:" + "|".join(sorted(s.uid for s in other))), description="files")
            studies.append(target)
        for s in other:
            s.volume.study_uid = target.uid
        target.series.extend(other)
    for study in studies:
        study.series = [s for s in study.series if _displayable(s, study.errors)]
        for s in study.series:
            if s.volume.window is None:
                s.volume.window = default_window(s.volume)
    if not studies:
        studies.append(Study(uid=remap_uid("upload:" + "|".join(n for _, n, _ in upload.files)), description="empty"))
    studies[0].errors[:0] = errors
    studies[0].skipped[:0] = skipped
    return studies, len(upload.files)


def _displayable(series: Series, errors: list[IngestError]) -> bool:
    """Repair a series' geometry (warnings on the series) or record why it cannot be shown."""
    try:
        series.warnings.extend(validate_volume(series.volume, series.description or series.uid[-12:]))
    except IngestError as exc:
        errors.append(exc)
        return False
    return True


def _write_whole(target: Path, write) -> None:
    """``write(part)`` to a ``.part`` file beside ``target``, then rename it: a failure leaves no partial file."""
    part = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(part)
        os.replace(part, target)
    except OSError as exc:
        part.unlink(missing_ok=True)
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise IngestError(f"the output folder cannot be written ({code}): its disk may be full or read-only; free "
                          "space or choose another folder and run again (files already written are complete).") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _kind(path: Path, name: str) -> str:
    """``dicom`` | ``nifti`` | ``itk`` | ``image`` | ``zip`` | ``skip:<reason>``."""
    from data.dicom import is_dicom
    from data.images import IMAGE_SUFFIXES
    from data.nifti import ITK_SUFFIXES, NIFTI_SUFFIXES

    lower = name.lower()
    parts = lower.split("/")
    if any(p.startswith(".") or p == "__macosx" for p in parts):
        return "skip:hidden or system file."
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(ITK_SUFFIXES):
        return "itk"
    if lower.endswith(IMAGE_SUFFIXES):
        return "image"
    if lower.endswith(".zip"):
        return "zip"
    suffix = os.path.splitext(lower)[1]
    if suffix in _SKIP_SUFFIXES and not is_dicom(path):
        return f"skip:{_SKIP_SUFFIXES[suffix]}: not a medical image file."
    return "dicom"


def _load_other(path: Path, name: str, kind: str, limits: IngestLimits, budget: ImageBudget) -> list[Series]:
    if kind == "nifti":
        from data.nifti import load_nifti

        return load_nifti(path, name, limits=limits, budget=budget)
    if kind == "itk":
        from data.nifti import load_itk

        return load_itk(path, name, limits=limits, budget=budget)
    from data.images import load_image

    return load_image(path, name, limits=limits, budget=budget)


@contextmanager
def _quiet_libraries():
    """pydicom's value-validation warnings quote header values (PHI): silence them while ingesting (Pillow's
    debug logs are capped in :mod:`data.images`, ITK's warnings in :func:`data.nifti.load_itk`)."""
    from pydicom import config

    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
            yield
    finally:
        config.settings.reading_validation_mode = previous

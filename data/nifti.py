"""NIfTI (nibabel) and NRRD / MetaImage (SimpleITK) volumes → :class:`Series`.

NIfTI affines are already voxel → RAS mm (sform, else qform, else nibabel's fall-back with a warning);
ITK images carry LPS direction/origin, flipped to RAS here. Scaling (``scl_slope``/``scl_inter``) is
applied as nibabel does. A 4D file becomes one series per 3D volume (up to a limit; later volumes are
never read). These formats carry no patient identity attributes; the file name becomes the description.

Budgets come first: the NIfTI header (the first 540 bytes, inflated through a bounded stream for
``.nii.gz``) gives dimensions × bytes and the data offset, checked against :class:`~data.limits.IngestLimits`
before any voxel is read, and nibabel then reads exactly that many bytes (never the header extensions,
which are not used and may hold anything). ITK files are checked from ``ReadImageInformation``.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from data.deid import remap_uid
from data.errors import IngestError
from data.itk_headers import check_itk_header
from data.limits import ImageBudget, IngestLimits
from data.study import Series, Volume

__all__ = ["load_nifti", "load_itk", "guess_modality", "NIFTI_SUFFIXES", "ITK_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_CIFTI_INTENTS = range(3000, 3100)  # NIFTI_INTENT_CONNECTIVITY_*: CIFTI matrices, not images


def load_nifti(path: Path, name: str, *, limits: IngestLimits | None = None,
               budget: ImageBudget | None = None) -> list[Series]:
    """Load a ``.nii`` / ``.nii.gz`` file: one :class:`Series` per 3D volume (the first
    ``limits.max_volumes_per_file`` of a 4D file)."""
    import nibabel as nib
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.spatialimages import HeaderDataError

    limits = limits or IngestLimits()
    gz = name.lower().endswith(".gz")
    header = _nifti_header(path, name, gz)
    try:
        shape = tuple(int(s) for s in header.get_data_shape())
    except (ValueError, TypeError, OverflowError) as exc:
        raise IngestError(f"NIfTI dimensions are invalid ({type(exc).__name__}): damaged header.", name) from None
    extra = [s for s in shape[4:] if s != 1]
    if len(shape) < 2 or extra:
        raise IngestError(f"image must have 2 to 4 dimensions, got shape {shape}.", name)
    if min(shape) < 1:
        raise IngestError(f"image has no voxels (shape {shape}); the header is damaged.", name)
    intent = int(header["intent_code"])
    if intent in _CIFTI_INTENTS:
        raise IngestError(f"NIfTI intent code {intent} is a CIFTI matrix, not an image volume; expected a NIfTI-1/2 "
                          "volume.", name)
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > limits.max_voxels:
        raise IngestError(f"image has {voxels} voxels, the limit is {limits.max_voxels}; raise "
                          "IngestLimits.max_voxels to load it.", name)
    try:
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        slope, inter = header.get_slope_inter()
    except Exception as exc:  # nibabel's header checks raise several types on damaged fields
        raise IngestError(f"NIfTI header fields are invalid ({type(exc).__name__}): damaged file.", name) from None
    if offset > limits.max_header_bytes:
        raise IngestError(f"NIfTI data starts at byte {offset}, the limit is {limits.max_header_bytes} "
                          "(IngestLimits.max_header_bytes); the header is damaged.", name)
    n_volumes = shape[3] if len(shape) > 3 else 1
    loaded = min(n_volumes, limits.max_volumes_per_file)
    voxels_loaded = voxels // n_volumes * loaded
    scaled = not (slope in (None, 1.0) and inter in (None, 0.0))
    decoded = voxels_loaded * (dtype.itemsize + (8 if scaled else 0))  # raw read, then the float64 scaling
    needed = offset + voxels_loaded * dtype.itemsize
    stored = path.stat().st_size
    limits.check_image_bytes(decoded, name, f"NIfTI image of shape {shape} ({dtype})", stored=stored if gz else None)
    if not gz and needed > stored:
        raise IngestError(f"NIfTI file truncated: the header needs {needed} bytes, the file has {stored}; copy it "
                          "again from the source.", name)
    if budget is not None:
        budget.take(decoded, name)
    warnings = []
    if (int(header["sform_code"]), int(header["qform_code"])) == (0, 0):
        warnings.append("NIfTI header has no sform/qform: orientation unknown, voxel sizes only.")
    version = 2 if isinstance(header, nib.Nifti2Header) else 1
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)  # sform, else qform, else pixdims
    except (HeaderDataError, ValueError, np.linalg.LinAlgError, FloatingPointError):
        affine = np.full((4, 4), np.nan)  # repaired with a warning by data.geometry
    try:
        proxy = ArrayProxy(str(path), header, mmap=False)
        data = np.asanyarray(proxy[:, :, :, :loaded] if len(shape) > 3 else proxy)  # reads only the loaded volumes
    except (OSError, EOFError, ValueError, zlib.error, TypeError, IndexError, HeaderDataError) as exc:
        raise IngestError(f"NIfTI data could not be read ({type(exc).__name__}): truncated or damaged file.", name) from None
    if data.dtype.names is not None:  # RGB24 / RGBA32 records → an RGB channel axis
        if len(shape) > 3:
            raise IngestError(f"4D colour NIfTI (shape {shape}) is not supported; save one volume per file.", name)
        data = np.stack([np.asarray(data[c]) for c in data.dtype.names[:3]], axis=-1)
        volumes = [data[:, :, None, :] if data.ndim == 3 else data]
    else:
        if np.iscomplexobj(data):
            raise IngestError("complex-valued NIfTI data is not an image we can display; save the magnitude.", name)
        data = np.asarray(data).reshape(shape[:3] + (loaded,)) if len(shape) > 3 else np.asarray(data)
        if data.ndim == 2:
            data = data[:, :, None]
        volumes = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    stem = _stem(name)
    if n_volumes > loaded:
        warnings.append(f"4D file has {n_volumes} volumes: only the first {loaded} were loaded "
                        "(IngestLimits.max_volumes_per_file).")
    modality = guess_modality(stem, volumes[0])
    out = []
    for t, array in enumerate(volumes):
        description = stem if len(volumes) == 1 else f"{stem} [volume {t}]"
        uid = remap_uid(f"file:{name}#{t}")
        volume = Volume(array=array, affine=affine, modality=modality, study_uid="", series_uid=uid,
                        description=description, sequence=_sequence(stem) if modality == "MR" else "",
                        meta={"source": "nifti", "nifti_version": version, "volume_index": t, "deidentified": True})
        out.append(Series(uid=uid, modality=modality, description=description, volume=volume, n_files=1,
                          warnings=list(warnings), source_format="nifti"))
    return out


def load_itk(path: Path, name: str, *, limits: IngestLimits | None = None,
             budget: ImageBudget | None = None) -> list[Series]:
    """Load an NRRD / MetaImage file through SimpleITK (LPS → RAS); its size is checked before reading."""
    import SimpleITK as sitk

    limits = limits or IngestLimits()
    check_itk_header(path, name)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints warnings with the file's path to stderr
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NrrdImageIO" if name.lower().endswith((".nrrd", ".nhdr")) else "MetaImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = [int(s) for s in reader.GetSize()]
        dim, components = reader.GetDimension(), reader.GetNumberOfComponents()
        component_bytes = sitk.Image([1] * dim, reader.GetPixelID(), components).GetSizeOfPixelComponent() \
            if components > 1 else sitk.Image([1] * dim, reader.GetPixelID()).GetSizeOfPixelComponent()
    except RuntimeError:
        raise IngestError("not a readable NRRD / MetaImage file (SimpleITK could not read it); check the header "
                          "and that the data file next to a .mhd/.nhdr is included.", name) from None
    if dim not in (2, 3):
        raise IngestError(f"image must be 2D or 3D, got {dim}D.", name)
    if components not in (1, 3):
        raise IngestError(f"image has {components} components per pixel; expected 1 (grey) or 3 (RGB).", name)
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels < 1:
        raise IngestError(f"image has no voxels (size {size}); the header is damaged.", name)
    if voxels > limits.max_voxels:
        raise IngestError(f"image has {voxels} voxels, the limit is {limits.max_voxels}; raise "
                          "IngestLimits.max_voxels to load it.", name)
    decoded = 2 * voxels * components * component_bytes  # ITK's buffer and the numpy copy
    attached = name.lower().endswith((".mha", ".nrrd"))  # data in this file (detached: beside it)
    limits.check_image_bytes(decoded, name, f"image of size {size}", stored=path.stat().st_size if attached else None)
    if budget is not None:
        budget.take(decoded, name)
    try:
        img = reader.Execute()
    except RuntimeError:
        raise IngestError("NRRD / MetaImage data could not be read (SimpleITK): truncated or damaged file, or the "
                          "data file next to a .mhd/.nhdr is missing.", name) from None
    array = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) or (y, x[, c])
    spatial = array.ndim - (1 if components > 1 else 0)
    array = array.transpose(tuple(range(spatial))[::-1] + ((spatial,) if components > 1 else ()))  # → (x, y[, z][, c])
    if dim == 2:
        array = array[:, :, None] if components == 1 else array[:, :, None, :]
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:dim, :dim] = direction @ np.diag(img.GetSpacing())
    lps[:dim, 3] = img.GetOrigin()
    stem = _stem(name)
    modality = guess_modality(stem, array)
    uid = remap_uid(f"file:{name}")
    volume = Volume(array=array, affine=_LPS_TO_RAS @ lps, modality=modality, series_uid=uid, description=stem,
                    sequence=_sequence(stem) if modality == "MR" else "",
                    meta={"source": "itk", "deidentified": True})
    return [Series(uid=uid, modality=modality, description=stem, volume=volume, n_files=1, source_format="itk")]


def guess_modality(name: str, array: np.ndarray) -> str:
    """``CT`` / ``MR`` / ``OT`` for files without a modality: name words first, then HU-like intensities."""
    words = set(_words(name))
    if words & {"ct", "cta", "hu"}:
        return "CT"
    if words & {"mr", "mri", "t1", "t1w", "t1c", "t1ce", "t2", "t2w", "flair", "dwi", "adc", "bold", "mprage"}:
        return "MR"
    if array.dtype.kind in "iuf" and array.size and array.ndim >= 3 and array.shape[2] > 1:
        sample = array.reshape(-1)[:: max(1, array.size // 100_000)]
        if float(sample.min()) <= -900 and float(np.percentile(sample, 99)) >= 200:
            return "CT"
    return "OT"


def _sequence(stem: str) -> str:
    from data.dicom_series import mr_sequence

    return mr_sequence(stem.replace("_", " "))


def _words(name: str) -> list[str]:
    import re

    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _nifti_header(path: Path, name: str, gz: bool):
    """The NIfTI-1 or NIfTI-2 header of ``path`` without its extensions (540 bytes read at most)."""
    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError

    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fp:
            head = fp.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise IngestError(f"not a readable NIfTI file ({type(exc).__name__}); expected a NIfTI-1/2 volume"
                          f"{' compressed with gzip' if gz else ''}.", name) from None
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")} if len(head) >= 4 else set()
    header_class = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header if 348 in sizes else None
    if header_class is None:
        raise IngestError("not a NIfTI file (the header size is neither 348 nor 540 bytes); expected a NIfTI-1/2 "
                          "volume.", name)
    n = header_class.template_dtype.itemsize
    if len(head) < n:
        raise IngestError(f"NIfTI header truncated ({len(head)} of {n} bytes); copy the file again.", name)
    try:
        header = header_class.from_fileobj(io.BytesIO(head[:n] + b"\0\0\0\0"))  # extension flag 0: not read
    except (HeaderDataError, ValueError, TypeError, KeyError, OverflowError) as exc:
        raise IngestError(f"NIfTI header is invalid ({type(exc).__name__}): damaged file.", name) from None
    if bytes(header["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise IngestError("NIfTI header is not a single-file .nii (magic is not 'n+1'/'n+2'); convert the pair to "
                          ".nii.", name)
    return header

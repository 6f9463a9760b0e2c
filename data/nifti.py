"""NIfTI (nibabel) and NRRD / MetaImage (SimpleITK) volumes → :class:`Series`.

NIfTI affines are already voxel → RAS mm (sform, else qform, else nibabel's fall-back with a warning);
ITK images carry LPS direction/origin, flipped to RAS here. Scaling (``scl_slope``/``scl_inter``) is
applied as nibabel does. A 4D file becomes one series per 3D volume (up to a limit). These formats
carry no patient identity attributes; the file name becomes the description.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.deid import remap_uid
from data.errors import IngestError
from data.study import Series, Volume

__all__ = ["load_nifti", "load_itk", "guess_modality", "NIFTI_SUFFIXES", "ITK_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_nifti(path: Path, name: str, *, max_volumes: int = 64, max_voxels: int = 2**31) -> list[Series]:
    """Load a ``.nii`` / ``.nii.gz`` file: one :class:`Series` per 3D volume."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, AttributeError, KeyError) as exc:
        raise IngestError(f"not a readable NIfTI file ({type(exc).__name__}); expected a NIfTI-1/2 volume.", name) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) or type(img).__name__.startswith("Cifti"):
        raise IngestError(f"{type(img).__name__} is not an image volume (e.g. CIFTI connectivity); expected a "
                          "NIfTI-1/2 volume.", name)
    shape = img.shape
    extra = [s for s in shape[4:] if s != 1]
    if len(shape) < 2 or extra:
        raise IngestError(f"image must have 2 to 4 dimensions, got shape {shape}.", name)
    if int(np.prod(shape, dtype=np.int64)) > max_voxels:
        raise IngestError(f"image has {int(np.prod(shape, dtype=np.int64))} voxels, the limit is {max_voxels}.", name)
    warnings = []
    codes = (int(img.header["sform_code"]), int(img.header["qform_code"]))
    if codes == (0, 0):
        warnings.append("NIfTI header has no sform/qform: orientation unknown, voxel sizes only.")
    try:
        data = np.asanyarray(img.dataobj)  # applies scl_slope / scl_inter; reads the file now (before cleanup)
    except (OSError, EOFError, ValueError, MemoryError) as exc:
        raise IngestError(f"NIfTI data could not be read ({type(exc).__name__}): truncated or damaged file.", name) from None
    if data.dtype.names is not None:  # RGB24 / RGBA32 records → an RGB channel axis
        if len(shape) > 3:
            raise IngestError(f"4D colour NIfTI (shape {shape}) is not supported; save one volume per file.", name)
        data = np.stack([np.asarray(data[c]) for c in data.dtype.names[:3]], axis=-1)
        volumes = [data[:, :, None, :] if data.ndim == 3 else data]
    else:
        if np.iscomplexobj(data):
            raise IngestError("complex-valued NIfTI data is not an image we can display; save the magnitude.", name)
        data = np.asarray(data).reshape(shape[:4]) if len(shape) > 4 else np.asarray(data)
        if data.ndim == 2:
            data = data[:, :, None]
        volumes = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    stem = _stem(name)
    if len(volumes) > max_volumes:
        warnings.append(f"4D file has {len(volumes)} volumes: only the first {max_volumes} were loaded.")
        volumes = volumes[:max_volumes]
    affine = np.asarray(img.affine, dtype=np.float64)
    modality = guess_modality(stem, volumes[0])
    out = []
    for t, array in enumerate(volumes):
        description = stem if len(volumes) == 1 else f"{stem} [volume {t}]"
        uid = remap_uid(f"file:{name}#{t}")
        volume = Volume(array=array, affine=affine, modality=modality, study_uid="", series_uid=uid,
                        description=description, sequence=_sequence(stem) if modality == "MR" else "",
                        meta={"source": "nifti", "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
                              "volume_index": t, "deidentified": True})
        out.append(Series(uid=uid, modality=modality, description=description, volume=volume, n_files=1,
                          warnings=list(warnings), source_format="nifti"))
    return out


def load_itk(path: Path, name: str, *, max_voxels: int = 2**31) -> list[Series]:
    """Load an NRRD / MetaImage file through SimpleITK (LPS → RAS)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError:
        raise IngestError("not a readable NRRD / MetaImage file (SimpleITK could not read it); check the header "
                          "and that the data file next to a .mhd/.nhdr is included.", name) from None
    dim, components = img.GetDimension(), img.GetNumberOfComponentsPerPixel()
    if dim not in (2, 3):
        raise IngestError(f"image must be 2D or 3D, got {dim}D.", name)
    if int(np.prod(img.GetSize(), dtype=np.int64)) > max_voxels:
        raise IngestError(f"image has {int(np.prod(img.GetSize(), dtype=np.int64))} voxels, the limit is {max_voxels}.", name)
    array = sitk.GetArrayFromImage(img)  # (z, y, x[, c]) or (y, x[, c])
    spatial = array.ndim - (1 if components > 1 else 0)
    array = array.transpose(tuple(range(spatial))[::-1] + ((spatial,) if components > 1 else ()))  # → (x, y[, z][, c])
    if dim == 2:
        array = array[:, :, None] if components == 1 else array[:, :, None, :]
    if components not in (1, 3):
        raise IngestError(f"image has {components} components per pixel; expected 1 (grey) or 3 (RGB).", name)
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

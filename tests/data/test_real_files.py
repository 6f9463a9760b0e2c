"""Every file of pydicom's test corpus, the pydicom-data package and nibabel's test images either loads
with the pixel values pydicom / nibabel decode, or is refused with an IngestError naming the problem."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut

from data import IngestError, load_study

NIBABEL = Path(nibabel.__file__).parent
DICOM_FILES = sorted({Path(p) for p in pydicom.data.get_testdata_files() if Path(p).is_file()}
                     | set((NIBABEL / "nicom" / "tests" / "data").glob("*.dcm")))
NIFTI_FILES = sorted(p for p in (NIBABEL / "tests" / "data").iterdir() if p.name.endswith((".nii", ".nii.gz")))
# Files pydicom decodes that ingest refuses on purpose, with the reason.
REFUSED = {}


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_corpora_are_installed():
    """The corpora are dev dependencies: an empty list would make the tests below vacuous."""
    assert len(DICOM_FILES) > 150 and len(NIFTI_FILES) >= 6


@pytest.mark.parametrize("path", DICOM_FILES, ids=_id)
def test_dicom_file_loads_like_pydicom_or_is_refused(path: Path):
    try:
        study = load_study(path)
    except IngestError as exc:
        assert path.name in str(exc) and len(str(exc)) > len(path.name) + 10, str(exc)
        why = _pydicom_cannot_load(path) or REFUSED.get(path.name)
        assert why, f"ingest refused a file pydicom decodes as an image: {exc}"
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own notes on odd files (padding, VR guesses)
        ds = pydicom.dcmread(path, force=True)
        expected = _expected_frames(ds)
    seen = set()
    for series in study.series:
        volume = series.volume
        assert volume.affine.shape == (4, 4) and np.isfinite(volume.affine).all()
        assert abs(np.linalg.det(volume.affine[:3, :3])) > 0
        frames = volume.array.transpose((2, 1, 0) + ((3,) if volume.array.ndim == 4 else ()))  # → (K, rows, cols[, 3])
        for k, frame_number in enumerate(volume.meta["frame_numbers"]):
            seen.add(frame_number)
            _assert_pixels_equal(frames[k], expected[frame_number])
    dropped = any("dropped" in w for s in study.series for w in s.warnings)
    assert seen == set(range(len(expected))) or dropped


@pytest.mark.parametrize("path", NIFTI_FILES, ids=_id)
def test_nifti_file_loads_like_nibabel_or_is_refused(path: Path):
    try:
        study = load_study(path)
    except IngestError as exc:
        assert path.name in str(exc)
        img = nibabel.load(str(path))
        assert not isinstance(img, (nibabel.Nifti1Image, nibabel.Nifti2Image)) or type(img).__name__.startswith("Cifti"), \
            f"ingest refused a NIfTI volume: {exc}"
        return
    img = nibabel.load(str(path))
    data = img.get_fdata()
    volumes = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    assert len(study.series) == len(volumes)
    for series, expected in zip(study.series, volumes):
        np.testing.assert_allclose(series.volume.array[..., 0] if expected.ndim == 2 else series.volume.array,
                                   expected.reshape(series.volume.array.shape), rtol=1e-6)
        np.testing.assert_allclose(series.volume.affine, img.affine)


# ---------------------------------------------------------------------------------------------------
def _pydicom_cannot_load(path: Path) -> str | None:
    """Why pydicom itself cannot give an image from this file, or None if it can."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            return f"pydicom cannot read it: {type(exc).__name__}"
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            return "no pixel data"
        name = ds.SOPClassUID.name if "SOPClassUID" in ds else ""
        if name.startswith("RT ") or any(w in name for w in ("Segmentation", "SR ", "Waveform", "Presentation")):
            return f"non-image object {name}"
        try:
            ds.pixel_array
        except Exception as exc:
            return f"pydicom cannot decode it: {type(exc).__name__}"
    return None


def _expected_frames(ds) -> np.ndarray:
    """pydicom's decoding after the modality LUT (per-frame groups too), MONOCHROME1 inverted; ``(F, ...)``."""
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    colour = arr.shape[-1] == 3 and (int(ds.get("SamplesPerPixel", 1)) == 3 or photometric == "PALETTE COLOR")
    if arr.ndim == (3 if colour else 2):
        arr = arr[None]
    if colour:
        return arr
    per_frame = _functional_group_rescale(ds, frames)
    if per_frame is not None:
        out = np.stack([arr[f].astype(np.float64) * s + i for f, (s, i) in enumerate(per_frame)])
    else:
        out = apply_modality_lut(arr, ds)
    if photometric == "MONOCHROME1":
        bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
        ends = np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1] if signed else [0, (1 << bits) - 1])
        s, i = per_frame[0] if per_frame is not None else (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
        ends = apply_modality_lut(ends, ds) if ds.get("ModalityLUTSequence") else ends * s + i
        out = float(np.min(ends)) + float(np.max(ends)) - out.astype(np.float64)
    return out


def _functional_group_rescale(ds, frames: int) -> list[tuple[float, float]] | None:
    """Per-frame (slope, intercept) from enhanced multi-frame functional groups (pydicom ignores these)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per = ds.get("PerFrameFunctionalGroupsSequence")

    def find(item):
        seq = item.get("PixelValueTransformationSequence") if item is not None else None
        return (float(seq[0].RescaleSlope), float(seq[0].get("RescaleIntercept", 0))) if seq and "RescaleSlope" in seq[0] else None

    base = find(shared[0]) if shared else None
    if not per and base is None:
        return None
    out = [(find(per[f]) if per and f < len(per) else None) or base for f in range(frames)]
    return None if any(v is None for v in out) else out


def _assert_pixels_equal(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    if np.issubdtype(ours.dtype, np.integer) and np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(ours, expected)
    else:
        scale = max(1.0, float(np.nanmax(np.abs(expected))) if expected.size else 1.0)
        np.testing.assert_allclose(ours.astype(np.float64), expected.astype(np.float64), rtol=1e-5, atol=1e-6 * scale)

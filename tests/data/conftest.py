"""Small DICOM fixtures written with pydicom in each test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

# A fake identity: every value must vanish from anything ingest lets out.
IDENTITY = {
    "PatientName": "Quixote^Rocinante^Alonso",
    "PatientID": "MRN8841957",
    "PatientBirthDate": "19471023",
    "AccessionNumber": "ACC5531902",
    "InstitutionName": "Zanzibar Memorial Infirmary",
    "ReferringPhysicianName": "Vandersloot^Hortensia",
    "PerformingPhysicianName": "Okonkwo^Bartholomew",
    "OperatorsName": "Thistlewood^Ignatius",
    "InstitutionAddress": "77 Marigold Crescent Lowestoft",
    "OtherPatientIDs": "OTH7719023",
    "PatientAddress": "12 Juniper Lane Wexford",
    "PatientTelephoneNumbers": "5550199283",
    "StationName": "ZMI-CT-ALPHA",
}


def identity_strings() -> list[str]:
    """Every identity value and its name parts (as they could leak)."""
    out = set()
    for value in IDENTITY.values():
        out.add(value)
        out.update(part for part in value.replace("^", " ").split() if len(part) >= 4)
    return sorted(out)


def write_slices(folder: Path, volume: np.ndarray, *, spacing=(0.8, 0.7, 2.5), origin=(-100.0, -80.0, 40.0),
                 orientation=(1, 0, 0, 0, 1, 0), modality="CT", slope=1.0, intercept=-1024.0, names=None,
                 series_uid=None, study_uid=None, description="Axial 2.5mm", photometric="MONOCHROME2",
                 positions=None, identity=IDENTITY, extra=None, instance_numbers=None, bits_stored=16,
                 signed=True) -> list[Path]:
    """Write ``volume`` ``(I=columns, J=rows, K=slices)`` of stored values as single-frame DICOM files.

    spacing: (column spacing Δi, row spacing Δj, slice step) mm; slice k sits at origin + k·step·normal (LPS)
    unless ``positions`` gives each slice's Image Position (Patient).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    n_i, n_j, n_k = volume.shape
    paths = []
    for k in range(n_k):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in identity.items():
            setattr(ds, keyword, value)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240315"
        ds.StudyTime = "101500"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID, ds.SeriesNumber = "4711", 3
        ds.InstanceNumber = (instance_numbers[k] if instance_numbers is not None else k + 1)
        ds.Modality, ds.SeriesDescription, ds.BodyPartExamined = modality, description, "CHEST"
        position = positions[k] if positions is not None else np.asarray(origin) + k * spacing[2] * normal
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # (between rows, between columns)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = n_j, n_i
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        dtype = np.int16 if signed else np.uint16
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).astype(dtype).tobytes()  # rows × columns
        path = folder / (names[k] if names is not None else f"IM{k:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def ct_volume() -> np.ndarray:
    """Stored values ``(I=12, J=10, K=6)`` with a distinct value per voxel."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 3000, size=(12, 10, 6)).astype(np.int16)


@pytest.fixture(scope="session")
def write_series():
    """The :func:`write_slices` writer."""
    return write_slices


@pytest.fixture
def identity() -> tuple[dict[str, str], list[str]]:
    """The fake identity written by :func:`write_slices` and the strings that must never leak."""
    return dict(IDENTITY), identity_strings()

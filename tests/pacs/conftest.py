"""A real Orthanc PACS (with DICOMweb) on free loopback ports, seeded with small CT / MR studies.

The studies are written here with pydicom (original identifiers on purpose: they play the hospital's
archive). Orthanc must be installed (scripts/system_deps.sh); otherwise the tests skip, naming it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app.config import PacsConfig

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("orthanc_fixture", ROOT / "scripts" / "orthanc_fixture.py")
orthanc_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(orthanc_fixture)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

# (patient ID, patient name, accession, study date, modality, description): the hospital's archive.
STUDIES = (
    ("PAT-001", "DOE^JANE", "ACC-1001", "20240105", "CT", "CT abdomen"),
    ("PAT-001", "DOE^JANE", "ACC-1002", "20240612", "MR", "MR brain"),
    ("PAT-002", "ROE^RICHARD", "ACC-2001", "20240110", "CT", "CT chest"),
)
SLICES, ROWS, COLS = 6, 32, 32


@dataclasses.dataclass
class SeededStudy:
    patient_id: str
    patient_name: str
    accession: str
    date: str
    modality: str
    study_uid: str
    series_uid: str
    datasets: list[Dataset]


def write_series(patient_id, patient_name, accession, date, modality, description, seed: int) -> SeededStudy:
    """One single-series study: ``SLICES`` axial slices of ``ROWS``×``COLS`` int16 voxels, 1×1×2 mm."""
    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k in range(SLICES):
        ds = Dataset()
        ds.preamble = b"\0" * 128  # a conformant Part 10 file, as a modality would send it
        ds.file_meta = FileMetaDataset()
        sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19600101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.ContentDate = date, "101500", date, date
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = accession, "1", "WHO^CARES"
        ds.StudyDescription, ds.SeriesDescription = description, description
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, k + 1
        ds.Manufacturer, ds.InstitutionName = "m3-tests", "General Hospital"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-16.0, -16.0, 2.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
            ds.KVP = 120
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.PixelData = rng.integers(0, 2000, size=(ROWS, COLS), dtype=np.int16).tobytes()
        datasets.append(ds)
    return SeededStudy(patient_id, patient_name, accession, date, modality, study_uid, series_uid, datasets)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    reason = orthanc_fixture.orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    server = orthanc_fixture.OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def archive(orthanc) -> list[SeededStudy]:
    """The seeded studies, stored in Orthanc with STOW-RS (as the hospital's modalities would)."""
    from dicomweb_client.api import DICOMwebClient

    studies = [write_series(*row, seed=i) for i, row in enumerate(STUDIES)]
    client = DICOMwebClient(orthanc.dicomweb_url)
    for study in studies:
        response = client.store_instances(study.datasets)
        assert not response.get("FailedSOPSequence"), "Orthanc refused a seeded instance"
        assert len(response.ReferencedSOPSequence) == SLICES
    return studies


@pytest.fixture
def pacs_config(orthanc, tmp_path) -> PacsConfig:
    return PacsConfig(url=orthanc.dicomweb_url, writeback_enabled=True, retries=1, backoff_s=0.05,
                      timeout_s=10, outbox_dir=tmp_path / "outbox")


@pytest.fixture(scope="session")
def make_study():
    """``write_series`` for tests that need a study of their own."""
    return write_series

"""A real Orthanc PACS (with DICOMweb and its DICOM port) on free loopback ports, seeded with small CT / MR studies,
and a certificate authority with server and client certificates for the TLS tests.

The studies are written here with pydicom (original identifiers on purpose: they play the hospital's
archive). Orthanc must be installed (scripts/system_deps.sh); otherwise the tests skip, naming it. Orthanc knows
m3's AE title (``M3_AE``) at ``m3_move_port``, so a C-MOVE from it reaches m3's storage SCP.
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

M3_AE, PACS_AE = "M3TEST", "M3TESTPACS"

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
def m3_move_port() -> int:
    """The port of m3's storage SCP, where Orthanc sends the images of a C-MOVE to ``M3_AE``."""
    return orthanc_fixture.free_port()[0]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory, m3_move_port):
    reason = orthanc_fixture.orthanc_missing_reason()
    if reason:
        pytest.skip(reason)
    dicom = {"DicomAet": PACS_AE, "DicomModalities": {"m3": {"AET": M3_AE, "Host": "127.0.0.1", "Port": m3_move_port}}}
    server = orthanc_fixture.OrthancServer(tmp_path_factory.mktemp("orthanc"), settings=dicom)
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
def orthanc_server():
    """``OrthancServer`` (scripts/orthanc_fixture.py) for tests that start an Orthanc of their own settings."""
    if reason := orthanc_fixture.orthanc_missing_reason():
        pytest.skip(reason)
    return orthanc_fixture.OrthancServer


@pytest.fixture
def dimse_config(orthanc, m3_move_port, tmp_path) -> PacsConfig:
    """The same Orthanc over DIMSE: C-FIND / C-MOVE / C-STORE on its DICOM port."""
    return PacsConfig(protocol="dimse", host="127.0.0.1", port=orthanc.dicom_port, called_ae_title=orthanc.dicom_aet,
                      ae_title=M3_AE, move_port=m3_move_port, writeback_enabled=True, retries=1, backoff_s=0.05,
                      timeout_s=10, outbox_dir=tmp_path / "outbox")


@pytest.fixture(scope="session")
def make_study():
    """``write_series`` for tests that need a study of their own."""
    return write_series


@dataclasses.dataclass
class TlsFiles:
    """PEM files of a hospital CA, a PACS server certificate naming ``localhost`` (not 127.0.0.1), m3's client
    certificate from the same CA, and a client certificate from a CA the PACS does not trust."""

    ca: Path
    server: Path  # certificate + key in one file (Orthanc's SslCertificate)
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TlsFiles:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.timezone.utc)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def certificate(name, key, issuer_name, issuer_key, ca=False, server=False):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        elif server:
            builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def authority(name):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return key, certificate(name, key, subject, key, ca=True)

    def write(name: str, *parts: bytes) -> Path:
        (folder / name).write_bytes(b"".join(parts))
        return folder / name

    ca_key, ca = authority("m3 test hospital CA")
    other_key, other = authority("some other CA")
    server_key, client_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    server = certificate("localhost", server_key, ca.subject, ca_key, server=True)
    client = certificate("m3", client_key, ca.subject, ca_key)
    stranger = certificate("m3", stranger_key, other.subject, other_key)
    pem = serialization.Encoding.PEM
    return TlsFiles(
        ca=write("ca.pem", ca.public_bytes(pem)), server=write("server.pem", server.public_bytes(pem), pem_key(server_key)),
        client_cert=write("client.pem", client.public_bytes(pem)), client_key=write("client.key", pem_key(client_key)),
        stranger_cert=write("stranger.pem", stranger.public_bytes(pem)), stranger_key=write("stranger.key", pem_key(stranger_key)),
    )

"""Write phantom volumes as real DICOM series (CT Image, MR Image, Digital X-Ray) with a fake identity.

One template dataset per series is filled once; each slice only changes its position, UIDs, numbers
and pixel bytes before ``dcmwrite`` — that keeps a 512×512×300 series to a few seconds. Geometry follows
the volume's affine: RAS → LPS for ImagePositionPatient / ImageOrientationPatient, PixelSpacing as
(row spacing, column spacing). The fake patient identity (name, IDs, dates, institution, physician,
address, a private tag) exists so that de-identification has something real to remove.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from data.study import Volume

__all__ = ["fake_patient", "write_series", "series_uids"]

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "DX": DigitalXRayImageStorageForPresentation}
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS ↔ LPS

_FIRST = ("Anna", "Jonas", "Maria", "Lukas", "Sofia", "Elias", "Emma", "Noah", "Lea", "Paul", "Mia", "Felix",
          "Clara", "David", "Nora", "Samuel", "Ida", "Oskar", "Hanna", "Leon", "Ava", "Liam", "Chloe", "Mateo")
_LAST = ("Berger", "Novak", "Lindqvist", "Moreau", "Rossi", "Kowalski", "Jensen", "Garcia", "Okafor", "Tanaka",
         "Fischer", "Dubois", "Silva", "Horvat", "Nielsen", "Costa", "Weber", "Ivanova", "Murphy", "Haddad")
_TOWNS = ("Springfield", "Riverton", "Lakeside", "Hillcrest", "Brookfield", "Fairview", "Greenville", "Maplewood")
_HOSPITALS = ("St. Elsewhere General Hospital", "Riverside Medical Centre", "Lakeside University Clinic",
              "Northfield Regional Hospital", "Mercy Valley Hospital")


def fake_patient(seed: int) -> dict[str, str]:
    """A random, plausible and entirely fictitious identity (DICOM keyword → value), fixed by ``seed``."""
    rng = np.random.default_rng([seed, 0x1D])
    first, last = str(rng.choice(_FIRST)), str(rng.choice(_LAST))
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 75)))
    study = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 6)))
    age = (study - birth).days // 365
    town = str(rng.choice(_TOWNS))
    return {
        "PatientName": f"{last}^{first}",
        "PatientID": f"PID{int(rng.integers(10**6, 10**7))}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": str(rng.choice(["F", "M"])),
        "PatientAge": f"{age:03d}Y",
        "PatientAddress": f"{int(rng.integers(1, 200))} {str(rng.choice(_LAST))} Street, {town}",
        "PatientTelephoneNumbers": f"+1-555-{int(rng.integers(1000, 9999))}",
        "OtherPatientIDs": f"MRN{int(rng.integers(10**5, 10**6))}",
        "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}",
        "StudyID": f"S{int(rng.integers(1000, 9999))}",
        "StudyDate": study.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
        "InstitutionName": str(rng.choice(_HOSPITALS)),
        "InstitutionAddress": f"{int(rng.integers(1, 99))} Hospital Road, {town}",
        "ReferringPhysicianName": f"{str(rng.choice(_LAST))}^{str(rng.choice(_FIRST))}^^Dr",
        "PerformingPhysicianName": f"{str(rng.choice(_LAST))}^{str(rng.choice(_FIRST))}",
        "OperatorsName": f"{str(rng.choice(_LAST))}^{str(rng.choice(_FIRST))}",
        "StationName": f"SCANNER{int(rng.integers(1, 9))}",
        "DeviceSerialNumber": f"SN{int(rng.integers(10**5, 10**6))}",
    }


def series_uids(seed: int, kind: str, names: list[str]) -> dict[str, str]:
    """Deterministic Study / FrameOfReference / per-series UIDs for one phantom case."""
    out = {"study": generate_uid(entropy_srcs=["m3-phantom", kind, str(seed), "study"]),
           "frame": generate_uid(entropy_srcs=["m3-phantom", kind, str(seed), "frame"])}
    for n in names:
        out[n] = generate_uid(entropy_srcs=["m3-phantom", kind, str(seed), "series", n])
    return out


def write_series(volume: Volume, out_dir: str | Path, *, patient: dict[str, str], study_uid: str, series_uid: str,
                 frame_uid: str, series_number: int, study_description: str = "", photometric: str = "MONOCHROME2",
                 name_order: np.ndarray | None = None) -> list[Path]:
    """Write ``volume`` as one DICOM series (one file per slice) into ``out_dir``; returns the file paths.

    CT is stored as uint16 with RescaleIntercept −1024 (so the reader gets HU back); MR as uint16 without
    rescale; DX as a 12-bit radiograph (``photometric`` MONOCHROME1 stores it inverted). ``name_order``
    (a permutation of slice indices) decides file names, so name order need not follow position.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mod = volume.modality
    if mod not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {tuple(_SOP_CLASS)} to write a phantom series, got {mod!r}.")
    if volume.array.ndim != 3:
        raise ValueError(f"only single-channel volumes are written, got array shape {volume.array.shape}.")
    ds = _template(volume, patient, study_uid, series_uid, frame_uid, series_number, study_description, photometric)
    stored = _stored_values(volume, photometric)  # (K, J, I) uint16, C-contiguous
    n_slices = stored.shape[0]
    order = np.arange(n_slices) if name_order is None else np.asarray(name_order)
    lps = _LPS @ volume.affine[:3, :3]
    origin = _LPS @ volume.affine[:3, 3]
    normal = lps[:, 2] / np.linalg.norm(lps[:, 2])
    paths = []
    for k in range(n_slices):
        uid = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        if mod != "DX":
            pos = origin + lps[:, 2] * k
            ds.ImagePositionPatient = [_ds(v) for v in pos]
            ds.SliceLocation = _ds(float(pos @ normal))
        ds.PixelData = stored[k].tobytes()
        path = out / f"IM{int(order[k]) + 1:05d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds(v: float) -> str:
    """A Decimal String value (≤ 16 characters)."""
    s = f"{float(v):.6g}"
    return s if len(s) <= 16 else f"{float(v):.4e}"


def _stored_values(volume: Volume, photometric: str) -> np.ndarray:
    a = volume.array
    if volume.modality == "CT":
        s = np.clip(a.astype(np.int32) + 1024, 0, 4095)
    else:
        s = np.clip(a, 0, 4095)
        if volume.modality == "DX" and photometric == "MONOCHROME1":
            s = 4095 - s
    return np.ascontiguousarray(s.astype(np.uint16).transpose(2, 1, 0))  # (K, J=rows, I=columns)


def _template(volume: Volume, patient, study_uid, series_uid, frame_uid, series_number, study_description, photometric) -> Dataset:
    mod = volume.modality
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[mod]
    meta.MediaStorageSOPInstanceUID = series_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "M3_PHANTOM_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = _SOP_CLASS[mod]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if mod != "DX" else ["ORIGINAL", "PRIMARY"]
    for key, value in patient.items():
        setattr(ds, key, value)
    date, time = patient.get("StudyDate", "20240101"), patient.get("StudyTime", "120000")
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.Modality = mod
    ds.Manufacturer = "M3 Phantom"
    ds.ManufacturerModelName = {"CT": "PhantomCT", "MR": "PhantomMR", "DX": "PhantomDX"}[mod]
    ds.StudyDescription = study_description
    ds.SeriesDescription = volume.description
    ds.BodyPartExamined = volume.body_part
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric if mod == "DX" else "MONOCHROME2"
    ds.Columns, ds.Rows = volume.shape[0], volume.shape[1]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    spacing = volume.spacing
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
    if volume.window is not None:
        centre, width = volume.window
        if mod == "DX" and photometric == "MONOCHROME1":
            centre = 4095 - centre
        ds.WindowCenter, ds.WindowWidth = _ds(centre), _ds(width)
    if mod == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = ds.PixelSpacing
        ds.PatientOrientation = ["L", "F"]
        ds.ViewPosition = volume.meta.get("view", "PA")
        ds.KVP = _ds(120)
        ds.Laterality = ""
    else:
        lps = _LPS @ volume.affine[:3, :3]
        row_dir, col_dir = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
    if mod == "CT":
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.KVP = _ds(volume.meta.get("kvp", 120.0))
        ds.ConvolutionKernel = "STANDARD"
        phase = volume.meta.get("phase", "")
        if phase and phase != "non-contrast":
            ds.ContrastBolusAgent = "IOHEXOL 350"
            ds.ContrastBolusRoute = "IV"
    elif mod == "MR":
        ds.MagneticFieldStrength = _ds(volume.meta.get("field_strength_t", 1.5))
        seq = volume.sequence
        tr_te = {"T1": (500, 12), "T1c": (500, 12), "T2": (4000, 95), "FLAIR": (9000, 110)}.get(seq, (500, 12))
        ds.RepetitionTime, ds.EchoTime = _ds(tr_te[0]), _ds(tr_te[1])
        ds.ScanningSequence = "SE" if seq != "FLAIR" else ["SE", "IR"]
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        if seq == "FLAIR":
            ds.InversionTime = _ds(2500)
        if seq == "T1c":
            ds.ContrastBolusAgent = "GADOBUTROL"
    # A private block carrying an identifier, as some scanners do: de-identification must drop it.
    block = ds.private_block(0x0029, "M3 PHANTOM PRIVATE", create=True)
    block.add_new(0x10, "LO", patient.get("PatientID", ""))
    return ds

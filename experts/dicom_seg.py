"""DICOM Segmentation objects (highdicom) for expert masks, referencing the source series.

The source is either the series' pydicom datasets, or — what the app has after ingest — the
``Volume`` itself, from whose de-identified UIDs and geometry (``meta["sop_instance_uids"]``,
``study_uid``, ``series_uid``) minimal reference datasets are rebuilt, so the SEG points at the
de-identified series and carries no PHI.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from data.study import Volume
from experts.base import ExpertError, ExpertResult

__all__ = ["dicom_seg", "reference_datasets", "STRUCTURE_CODES"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ANATOMY, _ABNORMAL = ("91723000", "Anatomical Structure"), ("49755003", "Morphologically Altered Structure")
# structure name → (SNOMED CT code, meaning, category)
STRUCTURE_CODES: dict[str, tuple[str, str, tuple[str, str]]] = {
    "liver": ("10200004", "Liver", _ANATOMY), "spleen": ("78961009", "Spleen", _ANATOMY),
    "left kidney": ("18639004", "Left kidney", _ANATOMY), "right kidney": ("9846003", "Right kidney", _ANATOMY),
    "left lung": ("44029006", "Left lung", _ANATOMY), "right lung": ("3341006", "Right lung", _ANATOMY),
    "heart": ("80891009", "Heart", _ANATOMY), "aorta": ("15825003", "Aorta", _ANATOMY), "spine": ("421060004", "Spine", _ANATOMY),
    "liver tumor": ("108369006", "Neoplasm", _ABNORMAL), "lung nodule": ("27925004", "Nodule", _ABNORMAL),
    "kidney cyst": ("367643001", "Cyst", _ABNORMAL), "necrotic core": ("6574001", "Necrosis", _ABNORMAL),
    "edema": ("79654002", "Edema", _ABNORMAL), "enhancing tumor": ("108369006", "Neoplasm", _ABNORMAL),
}
_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def dicom_seg(result: ExpertResult, source: Sequence["Dataset"] | Volume | None = None):  # noqa: F821
    """A highdicom ``Segmentation`` (BINARY, one segment per label present) of ``result``'s mask.

    ``source``: the source series' pydicom datasets (any order; each is matched to its slice by
    position), or the input ``Volume`` (default: the mask's own grid and UIDs)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    mask = result.label_volume
    if mask is None:
        raise ExpertError(f"{result.expert}: this result has no mask, so there is no DICOM SEG to write.")
    if mask.is_2d:
        raise ExpertError(f"{result.expert}: DICOM SEG output is written for 3D series only.")
    datasets = reference_datasets(source if isinstance(source, Volume) else mask) if not isinstance(source, (list, tuple)) else list(source)
    frames = _frames_for(datasets, mask)  # (n_datasets, rows, cols) label values
    values = [v for v in sorted(result.label_names) if (frames == v).any()]
    seg_numbers = np.zeros(int(frames.max(initial=0)) + 1, dtype=np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name=f"m3 {result.expert}", family=codes.cid7162.ArtificialIntelligence,
                                                   version=result.version or "unversioned")
    for n, v in enumerate(values, start=1):
        seg_numbers[v] = n
        name = result.label_names[v]
        code, meaning, category = STRUCTURE_CODES.get(name, ("85756007", "Tissue", _ANATOMY))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=name[:64], segmented_property_category=Code(category[0], "SCT", category[1]),
            segmented_property_type=Code(code, "SCT", meaning), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        ))
    if not descriptions:
        raise ExpertError(f"{result.expert}: the mask is empty, so there is no segment to write as DICOM SEG.")
    pixel = seg_numbers[frames]
    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="m3", manufacturer_model_name=result.expert[:64], software_versions=result.version or "0",
        device_serial_number="0", series_description=f"{result.expert} mask"[:64],
    )


def reference_datasets(volume: Volume) -> list:
    """Minimal image datasets standing for ``volume``'s source slices: de-identified UIDs, geometry
    and an anonymous patient module (what highdicom needs to reference them; no pixel data)."""
    from pydicom.dataset import Dataset

    uids = volume.meta.get("sop_instance_uids")
    if not uids or len(uids) != volume.shape[2] or not volume.series_uid or not volume.study_uid:
        raise ExpertError(
            "DICOM SEG needs the source DICOM series (its de-identified instance UIDs); this volume was not loaded from a "
            "single-frame DICOM series (NIfTI or image input?). Use the NIfTI mask instead."
        )
    lps = LPS_TO_RAS @ volume.affine  # voxel → LPS
    row_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0])  # i runs along a row (column index)
    col_dir = lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    sx, sy, _ = volume.spacing
    out = []
    for k, uid in enumerate(uids):
        ds = Dataset()
        ds.SOPClassUID = _SOP_CLASS.get(volume.modality, "1.2.840.10008.5.1.4.1.1.7")
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = volume.study_uid, volume.series_uid
        ds.FrameOfReferenceUID = volume.meta.get("frame_of_reference_uid") or volume.study_uid + ".1"
        ds.Modality = volume.modality
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Anonymous^", "ANON", "", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", "", ""
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.SliceThickness = float(volume.spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.InstanceNumber = k + 1
        out.append(ds)
    return out


def _frames_for(datasets: list, mask: Volume) -> np.ndarray:
    """The mask slice under each source dataset, ``(n, rows, cols)``: the dataset's first pixel must be
    voxel ``(0, 0, k)`` of the mask's grid, rows along ``j`` and columns along ``i``."""
    inv = np.linalg.inv(mask.affine)
    frames = []
    for ds in datasets:
        try:
            ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
            rows, cols = int(ds.Rows), int(ds.Columns)
        except AttributeError as exc:
            raise ExpertError(f"DICOM SEG: a source dataset lacks geometry ({exc}); pass the series' image datasets.") from None
        ijk = inv @ (LPS_TO_RAS @ np.append(ipp, 1.0))
        k = int(round(ijk[2]))
        if (rows, cols) != (mask.shape[1], mask.shape[0]) or abs(ijk[0]) > 0.5 or abs(ijk[1]) > 0.5 or not 0 <= k < mask.shape[2] or abs(ijk[2] - k) > 0.1:
            raise ExpertError(
                f"DICOM SEG: source slice at {np.round(ipp, 1).tolist()} mm ({rows}x{cols}) does not lie on the mask's grid "
                f"{mask.shape}; pass the datasets of the series the expert ran on."
            )
        frames.append(np.asarray(mask.array[:, :, k]).T)
    return np.stack(frames).astype(np.int64)

"""DICOM SEG from an expert mask: readable by highdicom, pointing at the de-identified source series,
frames matching the mask slice for slice; a clear error without a DICOM source."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import data
import data.phantoms
from data.phantoms.labels import CT_LABELS
from data.study import Volume
from experts.base import ExpertError, ExpertResult
from experts.dicom_seg import dicom_seg


@pytest.fixture(scope="module")
def ct_study(tmp_path_factory):
    case = data.phantoms.generate("ct", 7, shape=(48, 48, 16), lesion_rate=1.0)
    folder = data.phantoms.write_study(case, tmp_path_factory.mktemp("ct") / "study")
    return case, folder, data.load_study(folder / "dicom").series[0].volume


def _result(volume: Volume, labels: np.ndarray) -> ExpertResult:
    return ExpertResult(expert="ct_segmentation", label_volume=volume.like(labels), label_names=dict(CT_LABELS), version="test")


def test_seg_from_the_ingested_volume_references_its_deidentified_series(ct_study, tmp_path):
    case, _, volume = ct_study
    seg = dicom_seg(_result(volume, case.labels), volume)
    seg.save_as(tmp_path / "seg.dcm")
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_uid
    referenced = {i.ReferencedSOPInstanceUID for i in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(volume.meta["sop_instance_uids"])
    assert "Anonymous" in str(back.PatientName)
    present = [CT_LABELS[v] for v in sorted(np.unique(case.labels)) if v > 0]
    assert [s.SegmentLabel for s in back.SegmentSequence] == present
    # slice k of the mask is the frame referencing SOP instance k; rows = j, columns = i
    liver_no = present.index("liver") + 1
    k = int(np.argmax((case.labels == 1).sum(axis=(0, 1))))
    pixels = back.get_pixels_by_source_instance(source_sop_instance_uids=[volume.meta["sop_instance_uids"][k]], segment_numbers=[liver_no])
    assert np.array_equal(pixels[0, :, :, 0] > 0, (case.labels[:, :, k] == 1).T)


def test_seg_from_source_datasets_in_any_order(ct_study):
    case, folder, _ = ct_study
    datasets = [pydicom.dcmread(p) for p in sorted(Path(folder, "dicom", "CT").glob("*.dcm"))][::-1]
    seg = dicom_seg(_result(case.volumes["CT"], case.labels), datasets)
    assert seg.NumberOfFrames == sum(int((case.labels[:, :, k] == v).any()) for k in range(16) for v in np.unique(case.labels) if v > 0)


def test_no_dicom_source_or_empty_mask_is_a_clear_error(ct_study):
    case, _, volume = ct_study
    nifti_like = Volume(volume.array, volume.affine, modality="CT")
    with pytest.raises(ExpertError, match="NIfTI mask instead"):
        dicom_seg(_result(nifti_like, case.labels))
    with pytest.raises(ExpertError, match="mask is empty"):
        dicom_seg(_result(volume, np.zeros_like(case.labels)), volume)

"""The experts on real public files (pydicom-data, nibabel's test data): no crash, and "uncertain" where the input
is not what they were built for."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest
from pydicom.data import get_testdata_file

import data
from experts.base import ExpertError

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"


@pytest.fixture(scope="module")
def ct_expert():
    from experts.ct_segmentation import CTSegmentationExpert

    return CTSegmentationExpert(device="cpu")


@pytest.fixture(scope="module")
def mri_expert():
    from experts.mri_brain_tumor import BrainTumorExpert

    return BrainTumorExpert(device="cpu")


@pytest.mark.parametrize("name", ["CT_small.dcm", "eCT_Supplemental.dcm"])
def test_real_ct_files_too_thin_for_3d_are_refused_with_a_reason(ct_expert, name):
    volume = data.load_study(get_testdata_file(name)).series[0].volume
    with pytest.raises(ExpertError, match="3D|too small"):
        ct_expert.run(volume)


def test_a_single_real_ct_slice_repeated_into_a_block_is_segmented_and_marked_uncertain(ct_expert):
    v = data.load_study(get_testdata_file("CT_small.dcm")).series[0].volume
    block = v.like(np.repeat(v.array, 16, axis=2))
    result = ct_expert.run(block)
    assert result.label_volume.shape == block.shape
    assert result.uncertain and any("far below the adult range" in r for r in result.uncertain)
    assert "Uncertain:" in result.summary


def test_a_real_single_series_mr_file_is_refused_naming_the_missing_sequences(mri_expert):
    volume = data.load_study(get_testdata_file("emri_small.dcm")).series[0].volume
    with pytest.raises(ExpertError, match="missing MRI sequence|100 mm"):
        mri_expert.run({"T1": volume})


@pytest.mark.slow
def test_a_real_brain_epi_given_as_every_sequence_runs_to_a_mask_on_its_grid(mri_expert):
    v = data.load_study(NIBABEL_DATA / "example4d.nii.gz").series[0].volume
    e = v.like(np.asarray(v.array), modality="MR")
    result = mri_expert.run({s: e for s in ("T1", "T1c", "T2", "FLAIR")})
    assert result.label_volume.shape == e.shape
    wt = next(m.value for m in result.measurements if m.structure == "whole tumor" and m.quantity == "volume")
    assert wt < 400.0 or result.uncertain, "a huge 'tumour' on an input it was not built for is marked uncertain"


@pytest.mark.slow
def test_a_real_brain_mri_read_as_ct_is_marked_uncertain(ct_expert):
    e = data.load_study(NIBABEL_DATA / "example4d.nii.gz").series[0].volume
    result = ct_expert.run(e.like(np.asarray(e.array, dtype=np.int16), modality="CT"))
    assert result.uncertain, "a brain EPI is no abdomen: organ volumes are implausible"

"""What the clinician sees and signs: slice orientation, window, overlay opacity and legend; the report
drafts, their grounding check, and the exported files (Markdown, PDF, DICOM SR)."""

from __future__ import annotations

import numpy as np
import pydicom

from app.report import Report, draft_from_results, draft_with_model, to_markdown, write_pdf, write_sr
from app.viewer import render_view, slice_count
from data.study import Volume
from experts.base import ExpertResult, Finding, Measurement
from experts.overlay import label_colour


def _volume():
    """RAS-aligned 40x30x20 volume (i → patient right, j → anterior, k → superior), 1 x 1 x 2 mm."""
    array = np.zeros((40, 30, 20), np.int16)
    array[35:, 10:20, 8:12] = 1000  # at the patient's right
    array[5:10, 25:, 8:12] = 500  # anterior, at the patient's left
    return Volume(array, np.diag([1.0, 1.0, 2.0, 1.0]), modality="CT", window=(500, 1000))


def test_axial_view_is_radiological_and_square_millimetre():
    view = render_view(_volume(), "axial", 10)
    grey = view.image[..., 0].astype(float)
    h, w = grey.shape
    assert (h, w) == (384, 512)  # 30 mm x 40 mm, longest side 512 px
    assert grey[:, : w // 4].max() == 255  # the patient's right is on the image's left
    assert grey[: h // 3, w // 2:].max() >= 120  # anterior at the top
    assert view.caption.startswith("axial 11/20")


def test_coronal_and_sagittal_have_superior_at_the_top_and_the_right_slice_count():
    vol = _volume()
    vol.array[:, :, 19] = 1000  # the most superior slice
    assert slice_count(vol, "coronal") == 30 and slice_count(vol, "sagittal") == 40
    for plane in ("coronal", "sagittal"):
        grey = render_view(vol, plane, 5).image[..., 0]
        assert grey[0].mean() > 200 and grey[-1].mean() < 50


def test_window_and_opacity_change_the_pixels_as_set():
    vol = _volume()
    mask = np.zeros(vol.shape, np.uint8)
    mask[35:, 10:20, 8:12] = 2
    result = ExpertResult("seg", label_volume=vol.like(mask), label_names={2: "lesion"},
                          measurements=[Measurement("lesion", "volume", 1.6, "mL")])
    plain = render_view(vol, "axial", 10, (0.0, 100.0)).image
    assert plain.max() == 255 and render_view(vol, "axial", 10, (5000.0, 100.0)).image.max() == 0
    opaque = render_view(vol, "axial", 10, None, result, opacity=1.0)
    hidden = render_view(vol, "axial", 10, None, result, opacity=0.0)
    assert np.array_equal(hidden.image, render_view(vol, "axial", 10).image)
    assert (np.all(opaque.image == label_colour(2), axis=-1)).sum() > 1000
    assert "lesion — lesion volume: 1.6 mL" in opaque.legend and "font-weight:bold" in opaque.legend


def _results():
    return [ExpertResult("ct_segmentation", version="1.0",
                         measurements=[Measurement("liver", "volume", 1523.4, "mL"), Measurement("liver tumor", "count", 2, "count")]),
            ExpertResult("cxr_classification", findings=[Finding("cardiomegaly", True, 0.91)])]


def test_template_draft_names_the_lesions_and_positive_findings():
    findings, impression = draft_from_results(_results(), "CT")
    assert "liver volume: 1523.4 mL" in findings and "cardiomegaly: present (p=0.91)" in findings
    assert "cardiomegaly" in impression and "liver tumor" in impression


def test_model_draft_with_an_invented_number_is_flagged():
    class Writer:
        def stream_chat(self, messages, images=None, tools=None, **_):
            yield "Findings: Liver 1523.4 mL, spleen 310 mL.\nImpression: Two liver lesions."

    findings, impression, flags = draft_with_model(Writer(), _results(), "CT")
    assert findings.startswith("Liver 1523.4 mL") and impression == "Two liver lesions."
    assert flags == ["number not given by any expert: 310"]


def test_exports_carry_the_edited_text_and_the_measurements(tmp_path):
    from pydicom.uid import generate_uid

    vol = _volume()
    vol.study_uid, vol.series_uid = str(generate_uid()), str(generate_uid())
    vol.meta.update(sop_instance_uids=[str(generate_uid()) for _ in range(20)], sop_class="CT Image Storage")
    report = Report("Liver 1523.4 mL — edited.", "No acute finding.", study_uid=vol.study_uid, modality="CT",
                    results=[r.to_json() for r in _results()])
    md = to_markdown(report)
    assert "## Findings" in md and "Liver 1523.4 mL — edited." in md and "ct_segmentation 1.0" in md
    assert write_pdf(report, tmp_path / "r.pdf", [np.zeros((64, 64, 3), np.uint8)]).read_bytes()[:5] == b"%PDF-"
    ds = pydicom.dcmread(write_sr(report, tmp_path / "r.dcm", vol))
    assert ds.StudyInstanceUID == vol.study_uid and ds.Modality == "SR" and str(ds.PatientName) in ("", "Anonymous^")
    texts = [item.get("TextValue") for item in ds.ContentSequence]
    assert "Liver 1523.4 mL — edited." in texts and "No acute finding." in texts
    numbers = [float(item.MeasuredValueSequence[0].NumericValue) for item in ds.ContentSequence if "MeasuredValueSequence" in item]
    assert 1523.4 in numbers

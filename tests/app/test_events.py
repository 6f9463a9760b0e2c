"""The page's events called directly (no HTTP): examples, multi-sequence studies, NIfTI uploads, a study
with no language model, expert errors shown to the user, window presets."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from app.audit import AuditLog
from app.chat import NO_MODEL_MESSAGE, ChatEngine
from app.events import AppEvents, UploadLimits
from app.session import SessionState


class _Request:
    username = "carol"


def _events(tmp_path, scripted_module, backend="scripted"):
    from experts.registry import ExpertRegistry

    reg = ExpertRegistry()
    reg.register("threshold_volume", scripted_module.ThresholdExpert)
    audit = AuditLog(tmp_path / "audit.jsonl")
    engine = ChatEngine(scripted_module.ScriptedBackend() if backend == "scripted" else None, reg, audit)
    return AppEvents(engine, audit, UploadLimits(max_files=100, max_upload_mb=50))


def _no_progress(*_, **__):
    return None


def test_mri_example_has_four_sequences_and_a_ct_expert_says_why_it_cannot_run(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module), SessionState()
    out = events.example("Example brain MRI", state, _Request(), progress=_no_progress)
    table, message = out[1], out[3]
    assert "Loaded 4 series" in message and sorted(row[1] for row in table) == ["MR"] * 4
    assert {s.volume.sequence for s in state.study.series} == {"T1", "T1c", "T2", "FLAIR"}
    state, history, *_ = events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    assert history[-1]["metadata"]["title"] == "Expert: threshold_volume"
    assert "needs a CT volume" in history[-1]["content"]
    presets = out[-3]["choices"]
    assert "lung" not in presets and "percentile" in presets  # HU presets only for CT
    state.close()


def test_without_a_model_chat_is_disabled_but_experts_and_viewer_work(tmp_path, scripted_module):
    from app.server import ModelStatus

    assert "Chat is off: none here" in ModelStatus(problem="none here").banner
    events, state = _events(tmp_path, scripted_module, backend=None), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    reply = list(events.ask("What is the dense tissue volume?", state, _Request()))[-1][1]
    assert NO_MODEL_MESSAGE in reply[-1]["content"]
    state, history, image, caption, legend, *_ = events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    assert "dense tissue volume:" in history[-1]["content"] and "dense tissue" in legend
    findings = events.draft_report(state, progress=_no_progress)[1]
    assert "dense tissue volume:" in findings  # the template draft, from the expert result alone
    assert [e["event"] for e in events.audit.read()] == ["ingest", "expert_run"]
    state.close()


def test_nifti_upload_exports_markdown_and_pdf_and_explains_why_no_dicom(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module), SessionState()
    data = np.full((40, 40, 20), -100, np.int16)
    data[10:20, 10:20, 5:15] = 300
    path = tmp_path / "scan.nii.gz"
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0]))
    img.header["descrip"] = b"CT"
    nib.save(img, str(path))
    message = events.upload([str(path)], state, _Request(), progress=_no_progress)[3]
    assert "Loaded 1 series" in message, message
    state.series.volume.modality = "CT"  # NIfTI carries no modality; the clinician knows it is CT
    events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    state, findings, impression, _ = events.draft_report(state, progress=_no_progress)
    state, files, note = events.export_report(findings, impression, state, _Request())
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == ["report.md", "report.pdf"]
    assert "need a DICOM source series" in note
    state.close()


def test_upload_limits_give_a_clear_message(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module), SessionState()
    big = tmp_path / "big.dcm"
    big.write_bytes(b"\0" * (51 * 2**20))
    message = events.upload([str(big)], state, _Request(), progress=_no_progress)[3]
    assert "51 MB is more than the limit of 50 MB" in message and state.study is None


def test_closing_a_session_deletes_its_files(scripted_module, tmp_path):
    from app.session import live_sessions

    before = live_sessions()
    state = SessionState()
    folder = state.workdir
    (folder / "x.png").write_bytes(b"x")
    assert live_sessions() == before + 1
    state.close()
    assert not folder.exists() and live_sessions() == before


@pytest.fixture()
def scripted_module():
    import scripted_backend

    return scripted_backend


def test_a_question_knows_the_axial_slice_on_screen(tmp_path, scripted_module):
    """The agent is told the volume index of the axial slice the clinician looks at (for "in this slice"
    questions); none when the view is another plane."""
    from dataclasses import replace

    from data.display import native_axial_index

    events, state = _events(tmp_path, scripted_module), SessionState()
    events.engine.backend.info = replace(events.engine.backend.info, takes_images=True)
    events.example("Example CT", state, _Request(), progress=_no_progress)
    events.set_slice(3, state)  # the slider counts from 1
    list(events.ask("Is dense tissue shown in this slice?", state, _Request()))
    assert state.chat.conversation.shown_slice == native_axial_index(state.volume, 2) is not None
    events.set_plane("coronal", state)
    list(events.ask("And here?", state, _Request()))
    assert state.chat.conversation.shown_slice is None
    state.close()

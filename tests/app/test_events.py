"""The page's events called directly (no HTTP): examples, multi-sequence studies, NIfTI uploads, a study
with no language model, expert errors shown to the user, window presets, the series table, an upload of two
studies, Draft report waiting for a running expert, progress that advances, clinician wording."""

from __future__ import annotations

import logging
import re
import threading
import time

import gradio as gr
import nibabel as nib
import numpy as np
import pytest
from stand_in_experts import BROKEN_MESSAGE, BrokenExpert, SlowExpert

from app.audit import AuditLog
from app.chat import NO_MODEL_MESSAGE, ChatEngine, flag_text, result_message
from app.events import SERIES_COLUMNS, AppEvents, UploadLimits
from app.session import SessionState


class _Request:
    username = "carol"


def _events(tmp_path, scripted_module, backend="scripted", extra=()):
    from experts.registry import ExpertRegistry

    reg = ExpertRegistry()
    reg.register("threshold_volume", scripted_module.ThresholdExpert)
    for expert in extra:
        reg.register(expert.name, expert)
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
    state, history, *_, status, report_status = events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    reason = "The threshold_volume expert reads CT series; this study is a brain MRI."
    assert history[-1] == {"role": "assistant", "content": reason}
    assert status == reason and report_status == gr.skip()  # the status line says why, in plain words
    assert [e["event"] for e in events.audit.read()] == ["ingest"]  # nothing ran, so nothing failed
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


def test_the_series_table_reads_as_numbered_rows_without_uids(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module), SessionState()
    table = events.example("Example brain MRI", state, _Request(), progress=_no_progress)[1]
    assert SERIES_COLUMNS == ["#", "Modality", "Description", "Voxels", "Spacing (mm)"]
    assert [row[0] for row in table] == [1, 2, 3, 4] and all(len(row) == len(SERIES_COLUMNS) for row in table)
    assert sorted(row[2] for row in table) == ["FLAIR AX", "T1 AX", "T1c AX", "T2 AX"]
    uids = {s.uid[-12:] for s in state.study.series}
    assert not uids & {str(cell) for row in table for cell in row}
    state.close()


def test_an_upload_of_two_studies_says_so_in_plain_words(tmp_path, scripted_module):
    from data.phantoms import DICOM_DIRNAME, generate, write_study

    events, state = _events(tmp_path, scripted_module), SessionState()
    paths = []
    for kind, seed in (("ct", 3), ("cxr", 4)):
        folder = write_study(generate(kind, seed, **({"shape": (32, 32, 8)} if kind == "ct" else {})), tmp_path / kind)
        paths += [str(p) for p in sorted((folder / DICOM_DIRNAME).rglob("*")) if p.is_file()]
    message = events.upload(paths, state, _Request(), progress=_no_progress)[3]
    assert message == "The upload holds 2 different studies (patients or visits); upload one study at a time."
    assert state.study is None


def test_a_slice_move_does_not_send_the_slider_back(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    state, image, caption, legend, slider, overlay, payload = events.set_slice(52, state)
    assert slider == gr.skip() and caption.startswith("axial 52/64")
    assert events.set_plane("coronal", state)[4]["value"] == 65  # another plane: the slider is set to its middle
    state.close()


def test_a_failing_expert_is_shown_logged_and_audited(tmp_path, scripted_module, caplog):
    events, state = _events(tmp_path, scripted_module, extra=[BrokenExpert]), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    with caplog.at_level(logging.WARNING, logger="app.events"):
        state, history, image, caption, legend, slider, overlay, payload, status, _ = events.run_expert(
            "Broken test expert", state, _Request(), progress=_no_progress)  # the button's label is the title
    assert status == f"**Broken test expert failed:** {BROKEN_MESSAGE}"
    assert "Broken test expert failed" in legend and BROKEN_MESSAGE in legend
    assert history[-1] == {"role": "assistant", "content": f"Broken test expert failed: {BROKEN_MESSAGE}"}
    logged = [r.getMessage() for r in caplog.records if r.name == "app.events"]
    assert logged == [f"expert broken_ct failed: RuntimeError: {BROKEN_MESSAGE}"]  # expert and error, nothing of the study
    entry = events.audit.read()[-1]
    assert entry["event"] == "expert_run" and entry["flags"] == ["expert failed"]
    assert entry["tool_calls"] == [{"name": "broken_ct", "arguments": {}, "result": None,
                                    "error": f"RuntimeError: {BROKEN_MESSAGE}", "seconds": entry["tool_calls"][0]["seconds"]}]
    assert "failed" in events.set_slice(10, state)[3]  # the legend keeps saying so while the user scrolls
    legend = events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)[4]
    assert "failed" not in legend and "dense tissue" in legend  # until an expert runs
    state.close()


def test_draft_report_waits_for_the_expert_that_is_running(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module, backend=None, extra=[SlowExpert]), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    assert events.draft_report(state, progress=_no_progress)[3].startswith("There are no expert results for this series yet.")
    ran: list[tuple] = []
    run = threading.Thread(target=lambda: ran.append(events.run_expert("Slow test expert", state, _Request(), progress=_no_progress)))
    run.start()
    deadline = time.monotonic() + 10
    while not events.jobs.now(state.id) and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting: list[str] = []
    _, findings, impression, status = events.draft_report(state, progress=lambda *_, desc="", **__: waiting.append(desc))
    run.join()
    assert findings.startswith("- Slow test expert: dense tissue volume:")  # the expert by its title
    assert status.startswith("Draft by expert results template from 1 expert result.")
    assert "Waiting for Slow test expert to finish before drafting" in waiting
    assert ran[0][-1] == "Expert results are ready: press Draft report."  # replaces the "no expert results" line
    assert events.run_expert("Slow test expert", state, _Request(), progress=_no_progress)[-1] == gr.skip()  # said once
    state.close()


def test_an_expert_run_reports_progress_that_advances(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module, extra=[SlowExpert]), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    SlowExpert.delay_s, calls = 1.6, []
    try:
        status = events.run_expert("slow_threshold", state, _Request(),
                                   progress=lambda f, desc="", **_: calls.append((f, desc)))[-2]
    finally:
        SlowExpert.delay_s = 4.0
    fractions = [f for f, _ in calls]
    assert len(calls) >= 3 and fractions == sorted(fractions) and len(set(fractions)) == len(fractions) and 0 < fractions[-1] < 1
    seconds = [int(re.fullmatch(r"Slow test expert: running for (\d+) s", desc).group(1)) for _, desc in calls[1:]]
    assert calls[0][1] == "Slow test expert: starting" and seconds == sorted(seconds) and seconds[-1] >= 1
    assert status.startswith("Slow test expert finished in 1.")
    calls.clear()
    events.run_expert("slow_threshold", state, _Request(), progress=lambda f, desc="", **_: calls.append((f, desc)))
    assert calls == []  # the same expert on the same series: the result is reused, nothing runs
    state.close()


def test_chat_steps_and_checks_are_in_clinician_words():
    step = result_message("ct_segmentation", {"targets": "liver"}, None, "no CT series in this study", 0.4, "CT segmentation")
    assert step["metadata"]["title"] == "CT segmentation · liver" and "log" not in step["metadata"]
    assert step["content"] == "Could not run: no CT series in this study"
    both = result_message("ct_segmentation", {"targets": ["liver", "spleen"]}, None, "x", 0.1, "CT segmentation")
    assert both["metadata"]["title"] == "CT segmentation · liver, spleen"
    malformed = flag_text("unresolved reference: malformed reference")
    assert malformed == "part of the answer could not be filled in from the expert results"
    assert flag_text("unresolved reference: spleen volume") == "no expert result gives the spleen volume the answer refers to"
    assert flag_text("ungrounded number: 12.5") == "12.5 is not in any expert result"


def test_opening_another_study_empties_the_report_and_status_lines(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    assert events.after_study(state) == (None, "", "", "", None, "")  # the upload box too: the next upload replaces this
    events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    events.draft_report(state, progress=_no_progress)
    refused = events.upload([], state, _Request(), progress=_no_progress)[3]
    assert refused.startswith("Choose DICOM files") and events.after_study(state) == (None, *(gr.skip(),) * 5)  # draft kept
    events.example("Example chest X-ray", state, _Request(), progress=_no_progress)
    assert events.after_study(state) == (None, "", "", "", None, "")  # a draft never outlives its study
    state.close()


def test_a_result_opens_where_its_mask_is_unless_the_user_scrolled_meanwhile(tmp_path, scripted_module):
    events, state = _events(tmp_path, scripted_module, extra=[SlowExpert]), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    jumped = events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)[5]["value"]
    assert jumped != 33  # untouched: the view opens on the slice showing most of the mask
    SlowExpert.delay_s, outputs = 1.0, []
    try:
        run = threading.Thread(target=lambda: outputs.append(
            events.run_expert("slow_threshold", state, _Request(), progress=_no_progress)))
        run.start()
        time.sleep(0.3)
        events.set_slice(10, state)  # the user scrolls while the expert runs
        run.join()
    finally:
        SlowExpert.delay_s = 4.0
    assert outputs[0][5]["value"] == 10 and outputs[0][3].startswith("axial 10/64")  # it stays where the user left it
    state.close()


def test_an_expert_that_fails_on_the_models_call_is_named_in_the_legend_and_logged(tmp_path, scripted_module, caplog):
    events, state = _events(tmp_path, scripted_module, extra=[BrokenExpert]), SessionState()
    events.engine.backend = scripted_module.ScriptedBackend(topics={"broken_ct": ("broken",)})
    events.example("Example CT", state, _Request(), progress=_no_progress)
    with caplog.at_level(logging.WARNING, logger="app.events"):
        *_, (state, history, question, image, caption, legend, slider, overlay, payload) = events.ask("Is it broken?", state, _Request())
    said = "Broken test expert failed internally (RuntimeError); try another question or expert."  # the agent's words
    step = next(m for m in history if (m.get("metadata") or {}).get("title"))
    assert step["metadata"]["title"] == "Broken test expert" and step["content"] == f"Could not run: {said}"
    assert "Broken test expert failed" in legend and said in legend
    assert [r.getMessage() for r in caplog.records if r.name == "app.events"] == [
        "expert broken_ct failed on a chat question: broken_ct failed internally (RuntimeError); try another question or expert."]
    state.close()


def test_a_chat_turn_holds_the_language_model_only_while_it_writes(tmp_path, scripted_module):
    """With one model slot, the slot is free while the turn's expert runs: another session's follow-up answered from
    a kept result does not wait behind this expert run."""
    from experts.registry import ExpertRegistry

    seen = []

    class Probe(scripted_module.ThresholdExpert):
        def _run(self, volumes, **arguments):
            free = engine.backend._slots.acquire(blocking=False)
            seen.append(free)
            if free:
                engine.backend._slots.release()
            return super()._run(volumes, **arguments)

    reg = ExpertRegistry()
    reg.register("threshold_volume", Probe)
    audit = AuditLog(tmp_path / "audit.jsonl")
    engine = ChatEngine(scripted_module.ScriptedBackend(), reg, audit, model_slots=1)
    events, state = AppEvents(engine, audit, UploadLimits(max_files=100, max_upload_mb=50)), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    list(events.ask("What is the dense tissue volume?", state, _Request()))
    assert seen == [True]
    assert engine.backend._slots.acquire(blocking=False)  # and released once the answer is written
    state.close()


def test_a_series_warning_from_ingest_is_shown_with_the_loaded_study(tmp_path, scripted_module):
    import time

    events, state = _events(tmp_path, scripted_module), SessionState()
    events.example("Example CT", state, _Request(), progress=_no_progress)
    study = state.study
    study.series[0].warnings.append("pixel spacing 0 mm in the header was replaced by 1 mm")
    message = events.show_study(study, state, _Request(), time.perf_counter())[3]
    assert "Check: series 1: pixel spacing 0 mm in the header was replaced by 1 mm" in message
    state.close()

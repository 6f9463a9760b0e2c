"""The app's PACS section against a real Orthanc, through its event functions and once over HTTP: search,
load into the de-identified session, send the report (SR) and mask (SEG) back, write-back switched off,
an uploaded study refused, a PACS that stops answering (outbox kept, then retried).

Each test seeds its own CT study (patients PAT-APP-*, dated 2023) into the session's Orthanc, so the
archive searches of test_pacs_orthanc.py (2024, PAT-00*, the MR study) find exactly what they expect."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from app.audit import AuditLog
from app.chat import ChatEngine
from app.events import AppEvents, UploadLimits
from app.pacs import PacsClient
from app.pacs_panel import WRITEBACK_OFF_MESSAGE, PacsPanel
from app.session import SessionState

pytestmark = pytest.mark.orthanc
HERE = Path(__file__).parent
PASSWORD = "correct horse battery"


class _Request:
    username = "carol"


def _no_progress(*_, **__):
    return None


@pytest.fixture(scope="module")
def scripted():
    """tests/scripted_backend.py: the threshold test expert and the scripted chat backend."""
    import scripted_backend

    return scripted_backend


def _seed(orthanc, make_study, *row, seed):
    study = make_study(*row, seed=seed)
    response = DICOMwebClient(orthanc.dicomweb_url).store_instances(study.datasets)
    assert len(response.ReferencedSOPSequence) == len(study.datasets)
    return study


def _panel(tmp_path, config, scripted) -> PacsPanel:
    from experts.registry import ExpertRegistry

    registry = ExpertRegistry()
    registry.register("threshold_volume", scripted.ThresholdExpert)
    audit = AuditLog(tmp_path / "audit.jsonl")
    return PacsPanel(config, AppEvents(ChatEngine(None, registry, audit), audit, UploadLimits()))


def _load_and_draft(panel, state, patient_id):
    """Search by patient ID, load the first hit, run the expert, draft: (findings, impression)."""
    state, rows, choice, _ = panel.search(patient_id, "", None, None, "", state, _Request())
    panel.load(choice["value"], state, _Request(), progress=_no_progress)
    panel.events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    _, findings, impression, _ = panel.events.draft_report(state, progress=_no_progress)
    return findings, impression


def _series_by_modality(url, study_uid):
    web = DICOMwebClient(url)
    found = {}
    for s in web.search_for_series(study_uid):
        ds = pydicom.Dataset.from_json(s)
        found.setdefault(str(ds.Modality), []).append(web.retrieve_series(study_uid, str(ds.SeriesInstanceUID)))
    return found


def test_search_load_and_send_sr_and_seg_to_the_original_study(orthanc, make_study, pacs_config, scripted, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    study = _seed(orthanc, make_study, "PAT-APP-7", "SMITH^ANNA", "ACC-APP-7", "20230314", "CT", "CT abdomen", seed=71)
    panel, state = _panel(tmp_path, pacs_config, scripted), SessionState()

    state, rows, _, status = panel.search("PAT-APP-7", "", "2023-04-01", "", "", state, _Request())
    assert rows == [] and "No study on the PACS matches" in status  # the date filter reaches the PACS
    state, rows, choice, status = panel.search("PAT-APP-7", "", "2023-03-01", "2023-03-31", "CT", state, _Request())
    assert rows == [[1, "SMITH, ANNA", "PAT-APP-7", "2023-03-14", "ACC-APP-7", "CT", "CT abdomen", 1]]
    assert "1 study found" in status and choice["value"] == 0
    assert panel.search("", "ACC-APP-7", None, None, "", state, _Request())[1][0][2] == "PAT-APP-7"

    out = panel.load(choice["value"], state, _Request(), progress=_no_progress)
    table, message, pacs_status = out[1], out[3], out[-1]
    assert [row[1] for row in table] == ["CT"] and table[0][3] == "32x32x6"
    assert "Loaded 1 series (de-identified)" in message and "loaded from the PACS" in pacs_status
    assert state.study.uid != study.study_uid and state.pacs_study == state.study.uid
    assert "SMITH" not in repr(state.study) and "PAT-APP-7" not in repr(state.study)

    panel.events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    _, findings, impression, _ = panel.events.draft_report(state, progress=_no_progress)
    state, send_status, retry = panel.send(findings, impression, state, _Request(), progress=_no_progress)
    assert send_status.startswith("Sent to the PACS") and "1 mask(s)" in send_status and retry["visible"] is False

    back = _series_by_modality(pacs_config.url, study.study_uid)
    assert sorted(back) == ["CT", "SEG", "SR"]
    [[sr]], [[seg]] = back["SR"], back["SEG"]
    for obj in (sr, seg):  # re-identified: the original patient, accession and study
        assert (obj.StudyInstanceUID, obj.PatientID, str(obj.PatientName), obj.AccessionNumber) == (
            study.study_uid, "PAT-APP-7", "SMITH^ANNA", "ACC-APP-7")
    assert sr.ContentSequence[0].TextValue == findings.strip() and "dense tissue volume" in findings
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == study.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    assert PacsClient(pacs_config).pending_batches() == []

    records = panel.events.audit.read()
    assert [r["event"] for r in records] == ["pacs_search"] * 3 + ["pacs_load", "expert_run", "pacs_send"]
    assert records[3]["study_uid"] == state.study.uid and records[-1]["answer"] == "sent"
    assert records[1]["question"] == "[pacs search] by patient ID, modality, study date"
    logged = (tmp_path / "audit.jsonl").read_text() + caplog.text
    for identifier in ("PAT-APP-7", "SMITH", "ANNA", "ACC-APP-7", "20230314", "2023-03-14", study.study_uid, study.series_uid):
        assert identifier not in logged, f"{identifier} reached the audit log or a log line"


def test_writeback_off_refuses_and_the_button_is_disabled(orthanc, make_study, pacs_config, scripted, tmp_path):
    from app.server import ModelStatus, ServeOptions, build_blocks

    study = _seed(orthanc, make_study, "PAT-APP-8", "ROE^MAX", "ACC-APP-8", "20230402", "CT", "CT chest", seed=81)
    off = dataclasses.replace(pacs_config, writeback_enabled=False)
    panel, state = _panel(tmp_path, off, scripted), SessionState()
    findings, impression = _load_and_draft(panel, state, "PAT-APP-8")
    state, status, _ = panel.send(findings, impression, state, _Request(), progress=_no_progress)
    assert status == WRITEBACK_OFF_MESSAGE
    assert sorted(_series_by_modality(pacs_config.url, study.study_uid)) == ["CT"]
    assert PacsClient(off).pending_batches() == []

    blocks = build_blocks(panel.events, ModelStatus(), ["threshold_volume"], ServeOptions(), 1, panel)
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    assert by_id["m3-pacs-send"].interactive is False and "turned off" in by_id["m3-pacs-send-status"].value
    plain = build_blocks(panel.events, ModelStatus(), ["threshold_volume"], ServeOptions(), 1)
    assert not any(str(getattr(b, "elem_id", "")).startswith("m3-pacs") for b in plain.blocks.values())

    # write-back on, but the study on screen was uploaded (not pulled from the PACS): refused too
    on = _panel(tmp_path, pacs_config, scripted)
    files = []
    for n, ds in enumerate(study.datasets):
        files.append(tmp_path / f"upload-{n}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    on.events.upload([str(f) for f in files], state, _Request(), progress=_no_progress)
    assert state.study is not None and state.pacs_study == ""
    on.events.run_expert("threshold_volume", state, _Request(), progress=_no_progress)
    status = on.send(findings, impression, state, _Request(), progress=_no_progress)[1]
    assert "only to a study loaded from the PACS" in status
    assert sorted(_series_by_modality(pacs_config.url, study.study_uid)) == ["CT"]


def test_pacs_not_answering_keeps_results_in_the_outbox_until_retry(orthanc, make_study, pacs_config, scripted, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    study = _seed(orthanc, make_study, "PAT-APP-9", "POE^EDGAR", "ACC-APP-9", "20230517", "CT", "CT liver", seed=91)
    config = dataclasses.replace(pacs_config, timeout_s=1.0, retries=0)
    panel, state = _panel(tmp_path, config, scripted), SessionState()
    findings, impression = _load_and_draft(panel, state, "PAT-APP-9")
    orthanc.pause()  # connections are accepted but never answered
    try:
        state, status, retry = panel.send(findings, impression, state, _Request(), progress=_no_progress)
        search_status = panel.search("PAT-APP-9", "", None, None, "", state, _Request())[3]
    finally:
        orthanc.resume()
    assert re.match(r"\*\*Not sent\.\*\* .*the PACS at http://127\.0\.0\.1:\d+/dicom-web (is unreachable|timed out).*"
                    r"The results wait in the outbox", status), status
    assert retry["visible"] is True and retry["value"] == "Retry sending (1 waiting)"
    assert re.match(r"\*\*PACS search failed\.\*\* .*(is unreachable|timed out)", search_status), search_status
    assert "PAT-APP-9" not in caplog.text  # the failed query's URL is not logged
    assert state.pacs_hits and state.study is not None  # the session keeps what it had
    assert panel.events.audit.read()[-1]["answer"].startswith("not sent")
    [batch] = PacsClient(config).pending_batches()
    assert len(list(batch.glob("*.dcm"))) == 2  # SR + SEG, nothing lost

    state, status, retry = panel.retry(state, _Request())
    assert status == "Sent 1 waiting batch(es) to the PACS." and retry["visible"] is False
    assert sorted(_series_by_modality(pacs_config.url, study.study_uid)) == ["CT", "SEG", "SR"]
    assert panel.retry(state, _Request())[1] == "Nothing is waiting in the outbox."


def test_pacs_section_over_http_needs_a_login(orthanc, make_study, pacs_config, scripted, tmp_path):
    """The page's API as a browser uses it: refused without login; with it, search then load."""
    import socket

    from gradio_client import Client

    from app.auth import hash_password
    from app.config import AppConfig
    from app.server import serve
    from experts.registry import ExpertRegistry

    _seed(orthanc, make_study, "PAT-APP-6", "DOE^OTTO", "ACC-APP-6", "20230220", "CT", "CT neck", seed=61)
    config = AppConfig(pacs=pacs_config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        config.server.port = s.getsockname()[1]
    config.audit.log_path = tmp_path / "audit.jsonl"
    config.auth.users_file = tmp_path / "users.toml"
    config.auth.users_file.write_text(f'[users]\nalice = "{hash_password(PASSWORD)}"\n')
    registry = ExpertRegistry()
    registry.register("threshold_volume", scripted.ThresholdExpert)
    server = serve(config, backend=scripted.ScriptedBackend(), registry=registry, block=False)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            refused = http.post("/gradio_api/call/pacs_search", json={"data": ["PAT-APP-6", "", None, None, ""]})
            assert refused.status_code == 401 and "PAT-APP-6" not in refused.text
        client = Client(server.url, auth=("alice", PASSWORD), verbose=False)
        rows, choice, status = client.predict("PAT-APP-6", "", None, None, "", api_name="/pacs_search")
        assert rows["data"] == [[1, "DOE, OTTO", "PAT-APP-6", "2023-02-20", "ACC-APP-6", "CT", "CT neck", 1]], status
        table, _, message, *_, pacs_status = client.predict(0, api_name="/pacs_load")
        assert table["data"][0][1] == "CT" and "Loaded 1 series (de-identified)" in message, pacs_status
        assert [r["event"] for r in AuditLog(config.audit.log_path).read() if r["event"].startswith("pacs_")] == ["pacs_search", "pacs_load"]
    finally:
        server.close()


def test_the_retry_button_never_sends_an_expired_batch_and_says_who_drops_it(orthanc, make_study, pacs_config, scripted, tmp_path):
    import datetime as dt

    from app.pacs_outbox import Outbox

    study = make_study("PAT-APP-5", "OLD^OTTO", "ACC-APP-5", "20230101", "CT", "CT old", seed=51)
    batch = Outbox(pacs_config.outbox_dir).add(study.datasets[:1])
    three_days_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    Outbox.write_state(batch, {**Outbox.read_state(batch), "created": three_days_ago.isoformat()})
    panel = _panel(tmp_path, dataclasses.replace(pacs_config, outbox_max_age_days=2), scripted)

    state, status, retry = panel.retry(SessionState(), _Request())

    assert status.startswith("Sent 0 waiting batch(es)") and "1 batch(es) older than 2 days were not sent (expired)" in status
    assert "m3 pacs outbox drop --expired" in status and retry["visible"] is True
    assert Outbox.read_state(batch)["attempts"] == 0 and DICOMwebClient(orthanc.dicomweb_url).search_for_studies(
        search_filters={"StudyInstanceUID": study.study_uid}) == []

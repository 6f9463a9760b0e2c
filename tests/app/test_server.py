"""The app over HTTP, as a browser or a script would use it: login, upload, viewer, chat with an expert
call, audit, report export, per-session isolation, limits, refusals.

Uses the scripted backend and the threshold test expert from conftest (mechanics, not model quality).
"""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest
from gradio_client import Client, handle_file

PASSWORD = "correct horse battery"  # the conftest's users


def _client(url: str, user: str = "alice") -> Client:
    return Client(url, auth=(user, PASSWORD), verbose=False)


def _upload(client: Client, path) -> tuple:
    return client.predict([handle_file(str(path))], api_name="/upload")


def test_unauthenticated_and_wrong_password_get_no_data(served):
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/config").status_code == 401
        assert http.post("/gradio_api/call/ask", json={"data": ["liver?"]}).status_code == 401
        bad = http.post("/login", data={"username": "alice", "password": "wrong"})
        assert bad.status_code == 400 and "access-token" not in "".join(bad.cookies.keys())
        assert http.get("/config").status_code == 401
        assert http.get("/healthz").status_code == 200  # no PHI, no login needed
    with pytest.raises(Exception):
        Client(server.url, auth=("alice", "wrong"), verbose=False)


def test_upload_view_ask_audit_and_export(served, ct_zip):
    server, cfg = served
    client = _client(server.url)
    table, series, status, image, caption, legend, slider, overlay, payload, chat, preset, centre, width = _upload(client, ct_zip)
    assert "Loaded 1 series (de-identified)" in status
    assert json.loads(payload)["volume"].startswith("m3/volume/")  # the browser viewer's copy of the series
    assert table["data"][0][1] == "CT" and table["data"][0][3] == "64x64x24"
    assert "axial 13/24" in caption
    # scroll and change plane: the caption follows
    _, caption2, *_ = client.predict(3, api_name="/slice")
    assert "axial 3/24" in caption2
    _, caption3, *_ = client.predict("coronal", api_name="/plane")
    assert caption3.startswith("coronal")
    # ask: the scripted model calls the expert; the answer quotes the expert's number; the overlay appears
    chat, question, image, caption, legend, slider, overlay, payload = client.predict("What is the dense tissue volume?", api_name="/ask")
    steps = [m for m in chat if (m.get("metadata") or {}).get("title")]
    assert steps and "threshold_volume" in steps[0]["metadata"]["title"] and steps[0]["metadata"]["status"] == "done"
    answer = _text(chat[-1])
    volume = _text(steps[0]).split("dense tissue volume: ")[1].split(" mL")[0]
    assert volume in str(answer) and "According to threshold_volume" in str(answer)
    assert "dense tissue" in legend and overlay["value"] == "threshold_volume"
    assert json.loads(payload)["overlay"]["labels"][0]["name"] == "dense tissue"
    entry = [e for e in _audit(cfg) if e["event"] == "answer"][-1]
    assert entry["user"] == "alice" and entry["study_uid"] and entry["tool_calls"][0]["name"] == "threshold_volume"
    assert entry["model"] == "scripted-test-backend" and volume in entry["answer"]
    # report: drafted from the results, exported in four formats
    findings, impression, note = client.predict(api_name="/draft_report")
    assert volume in findings and "Draft by scripted-test-backend" in note
    files, note = client.predict(findings, impression, api_name="/export_report")
    names = sorted(p.rsplit("/", 1)[-1] for p in files)
    assert names == ["report.md", "report.pdf", "report_sr.dcm", "threshold_volume_seg_1.dcm"], note


def test_two_sessions_never_see_each_others_study(served, ct_zip):
    server, _ = served
    a, b = _client(server.url, "alice"), _client(server.url, "bob")
    _upload(a, ct_zip)
    image, caption, legend, slider, overlay, payload = b.predict(2, api_name="/slice")
    assert image is None and caption == "No study loaded."
    chat = b.predict("What is the dense tissue volume?", api_name="/ask")[0]
    assert "Load a study first" in _text(chat[-1])
    # a second session of the same user is separate too
    a2 = _client(server.url, "alice")
    assert a2.predict(2, api_name="/slice")[1] == "No study loaded."
    assert "axial 5/24" in a.predict(5, api_name="/slice")[1]


def test_too_many_files_are_refused_with_a_clear_message(served, tmp_path):
    server, _ = served
    files = []
    for n in range(51):
        f = tmp_path / f"f{n}.dcm"
        f.write_bytes(b"x")
        files.append(handle_file(str(f)))
    status = _client(server.url).predict(files, api_name="/upload")[2]
    assert "51 files is more than the limit of 50" in status


def _text(message) -> str:
    """A chat message's text (Gradio 6 sends content as a list of typed parts)."""
    content = message["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if isinstance(p, dict))


def _audit(cfg):
    import json

    return [json.loads(line) for line in cfg.audit.log_path.read_text().splitlines()]


def test_the_app_sweeps_raw_upload_folders_left_by_a_killed_ingest_at_start(tmp_path, monkeypatch, scripted_module):
    """A folder named for an ingest whose process has ended (kill -9, out of memory) is removed when the app starts."""
    import tempfile

    from app.config import AppConfig
    from app.server import ServeOptions, build_app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / "m3-ingest-999999999-1-abc"  # a pid no process has
    stale.mkdir()
    (stale / "IM0001.dcm").write_bytes(b"Doe^Jane")
    config = AppConfig()
    config.audit = replace(config.audit, log_path=tmp_path / "audit.jsonl")
    build_app(config, backend=scripted_module.ScriptedBackend(), registry=scripted_module.registry_for_tests()[0],
              options=ServeOptions(sweep_interval_s=3600))
    assert not stale.exists()

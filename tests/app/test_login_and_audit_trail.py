"""Sign-in as a hospital runs it, and the audit trail an auditor reads: the password policy; idle sessions signed
out; one login method at a time; the proxy's user header through a real proxy hop (X-Forwarded-For); sign-ins,
failures, sign-outs and downloads in a hash-chained log whose edits and deletions `m3 audit verify` finds;
rotation with retention; `m3 audit export` of a date range; no PHI in what is written."""

from __future__ import annotations

import io
import json
import time

import httpx
import pytest
from starlette.testclient import TestClient

from app.audit import AuditLog, export_audit_log, parse_time, verify_audit_log
from app.auth import PasswordAuth, hash_password
from app.config import AppConfig, ConfigError, load_config
from app.main import main
from app.password_policy import PasswordPolicyError
from app.route_guard import SessionActivity

PASSWORD = "correct horse battery"


def _registry(scripted_module):
    from experts.registry import ExpertRegistry

    registry = ExpertRegistry()
    registry.register("threshold_volume", scripted_module.ThresholdExpert)
    return registry


def _config(tmp_path, **auth) -> AppConfig:
    cfg = AppConfig()
    cfg.audit.log_path = tmp_path / "audit.jsonl"
    for key, value in auth.items():
        setattr(cfg.auth, key, value)
    return cfg


def _with_users(cfg: AppConfig, tmp_path) -> AppConfig:
    cfg.auth.users_file = tmp_path / "users.toml"
    cfg.auth.users_file.write_text(f'[users]\nalice = "{hash_password(PASSWORD)}"\n')
    return cfg


def _events(cfg: AppConfig, name: str) -> list[dict]:
    return [e for e in AuditLog(cfg.audit.log_path).read() if e["event"] == name]


# --- password policy -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("password", "why"), [
    ("hunter2", "at least 8 characters, got 7"),
    ("Password123!", "most breached passwords"),
    ("12345678", "sequence"),
    ("aaaaaaaaaa", "repeated character"),
    ("qwertyuiop", "sequence"),
    ("dr.house-rocks", "user name"),
])
def test_m3_hash_password_refuses_short_breached_and_patterned_passwords(monkeypatch, capsys, password, why):
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    assert main(["hash-password", "--user", "dr.house"]) == 1
    err = capsys.readouterr()
    assert why in err.err and err.out == "" and password not in err.err
    with pytest.raises(PasswordPolicyError):
        hash_password(password, username="dr.house")


# --- login settings ------------------------------------------------------------------------------------------------


def test_both_login_methods_refuse_to_start_with_a_clear_message(tmp_path, scripted_module):
    from app.server import build_app

    users = tmp_path / "users.toml"
    users.write_text(f'[users]\nalice = "{hash_password(PASSWORD)}"\n')
    with pytest.raises(ConfigError, match="auth.users_file and auth.trusted_header are both set"):
        load_config(env={"M3_AUTH_USERS_FILE": str(users), "M3_AUTH_TRUSTED_HEADER": "X-Remote-User"})
    cfg = _config(tmp_path, trusted_header="X-Remote-User")
    with pytest.raises(ConfigError, match="both login methods are configured.*M3_USERS"):
        import os

        os.environ["M3_USERS"] = f"bob:{hash_password(PASSWORD)}"
        try:
            build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
        finally:
            del os.environ["M3_USERS"]


def test_trusted_proxies_take_cidr_networks_from_the_file_and_the_environment(tmp_path):
    path = tmp_path / "m3.toml"
    path.write_text('[auth]\ntrusted_header = "X-Remote-User"\ntrusted_proxies = ["10.20.0.0/16", "fd00::/8"]\n')
    assert load_config(path, env={}).auth.trusted_proxies == ("10.20.0.0/16", "fd00::/8")
    assert load_config(env={"M3_AUTH_TRUSTED_PROXIES": "172.17.0.1, 10.0.0.0/8"}).auth.trusted_proxies == ("172.17.0.1", "10.0.0.0/8")


def test_a_proxy_header_login_arriving_with_x_forwarded_for_through_the_served_app_signs_in(tmp_path, scripted_module,
                                                                                           caplog):
    """The server's forwarded-header handling trusts the same CIDRs: the user is signed in by the header, the
    client address becomes the workstation's, and a header from elsewhere is still refused. The access log names
    the workstation and the user, never a file's path."""
    import logging

    from app.server import serve

    from localhost import free_port

    caplog.set_level(logging.INFO, logger="m3.access")

    cfg = _config(tmp_path, trusted_header="X-Remote-User", trusted_proxies=("127.0.0.0/8",))
    cfg.server.port = free_port()
    server = serve(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module), block=False)
    try:
        proxied = {"X-Remote-User": "dr.grey", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/config", headers=proxied).status_code == 200
            assert http.get("/config", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 401
            http.get("/gradio_api/file=/tmp/gradio/x/Smith_John_1970-01-02.dcm?download=1", headers=proxied)
    finally:
        server.close()
    access = [r.getMessage() for r in caplog.records if r.name == "m3.access"]
    assert any(line.startswith("203.0.113.9 dr.grey GET /config 200 ") for line in access), access
    assert any(line.startswith("203.0.113.9 - GET /config 401 ") for line in access), access
    assert any(" GET /gradio_api/file=[file] " in line for line in access) and "Smith" not in " ".join(access)
    login = _events(cfg, "login")
    assert login and login[0]["user"] == "dr.grey" and login[0]["method"] == "proxy header"
    assert login[0]["client"] == "203.0.113.9"  # the workstation, as the proxy reported it


def test_the_proxy_header_is_refused_from_an_address_outside_the_trusted_networks(tmp_path, scripted_module):
    from app.route_guard import behind_proxies
    from app.server import build_app

    cfg = _config(tmp_path, trusted_header="X-Remote-User", trusted_proxies=("10.20.0.0/16",))
    api, _, _ = build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
    app = behind_proxies(api, cfg.auth.trusted_proxies)
    headers = {"X-Remote-User": "dr.grey", "X-Forwarded-For": "10.20.0.7"}  # a forged hop naming a proxy address
    assert TestClient(app, client=("10.20.3.4", 5000)).get("/config", headers=headers).status_code == 200
    assert TestClient(app, client=("192.0.2.50", 5000)).get("/config", headers=headers).status_code == 401


# --- idle logout, sign-in audit ------------------------------------------------------------------------------------


def test_session_activity_expires_after_the_idle_time_and_heartbeats_do_not_count():
    now = [0.0]
    activity = SessionActivity(60.0, clock=lambda: now[0])
    assert activity.touch("t") == "new"
    now[0] = 50.0
    assert activity.touch("t", refresh=False) == "active"  # a heartbeat: checked, not counted
    now[0] = 100.0
    assert activity.touch("t") == "expired"
    assert activity.touch("t") == "new"
    assert SessionActivity(0.0, clock=lambda: 1e9).touch("x") == "new"  # 0 = never


def test_sign_in_failures_sign_out_and_idle_logout_are_audited_without_the_password(tmp_path, scripted_module):
    from app.server import build_app

    cfg = _with_users(_config(tmp_path, idle_logout_min=0.02), tmp_path)  # 1.2 s
    api, _, _ = build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
    browser = TestClient(api, client=("192.0.2.10", 40000))
    assert browser.post("/login", data={"username": "alice", "password": "not it at all"}).status_code == 400
    assert browser.post("/login", data={"username": "<b>1985-02-03</b>", "password": "x"}).status_code == 400
    assert browser.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
    assert browser.get("/config").status_code == 200
    time.sleep(1.5)
    assert browser.get("/config").status_code == 401  # idle too long: signed out
    assert browser.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
    browser.get("/logout", follow_redirects=False)
    assert browser.get("/config").status_code == 401

    failed = _events(cfg, "login_failed")
    assert [f["user"] for f in failed] == ["alice", "[invalid]"] and failed[0]["client"] == "192.0.2.10"
    assert [e["user"] for e in _events(cfg, "login")] == ["alice", "alice"]
    assert [e["reason"] for e in _events(cfg, "logout")] == ["idle", "signed out"]
    text = cfg.audit.log_path.read_text()
    assert "not it at all" not in text and PASSWORD not in text and "1985" not in text
    assert verify_audit_log(cfg.audit.log_path).ok


def test_a_downloaded_report_file_is_audited_and_a_missing_one_is_not(tmp_path, scripted_module):
    import uuid

    from gradio.utils import get_cache_folder

    from app.server import build_app

    cfg = _with_users(_config(tmp_path), tmp_path)
    api, _, _ = build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
    folder = get_cache_folder() / f"m3-test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 test")
    try:
        browser = TestClient(api, client=("192.0.2.11", 40000))
        assert browser.get(f"/gradio_api/file={folder / 'report.pdf'}").status_code == 401  # not signed in
        assert browser.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        assert browser.get(f"/gradio_api/file={folder / 'report.pdf'}").content == b"%PDF-1.4 test"
        assert browser.get(f"/gradio_api/file={folder / 'report_sr.dcm'}").status_code != 200
    finally:
        (folder / "report.pdf").unlink()
        folder.rmdir()
    assert [(e["user"], e["file"]) for e in _events(cfg, "download")] == [("alice", "report.pdf")]


def test_password_auth_records_the_address_of_the_attempt_only_through_the_guard():
    log = []

    class Audit:
        def event(self, name, **fields):
            log.append((name, fields))

    auth = PasswordAuth({"alice": hash_password(PASSWORD)}, audit=Audit())
    assert not auth("alice", "wrong guess here") and auth("alice", PASSWORD)
    assert [name for name, _ in log] == ["login_failed", "login"] and log[0][1]["known_user"] is True


# --- the hash chain ------------------------------------------------------------------------------------------------


def _write_events(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.event("study_view", user="alice", study_uid=f"2.25.{i}")


def test_m3_audit_verify_passes_an_untouched_log_and_names_an_edited_record(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    _write_events(AuditLog(path), 5)
    assert main(["audit", "verify", "--log", str(path)]) == 0
    assert "5 record(s) in 1 file(s), seq 1-5, chain intact" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"alice"', '"mallory"')
    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", "--log", str(path)]) == 1
    err = capsys.readouterr().err
    assert "line 4: seq 4 does not match the record before it (seq 3)" in err and "TAMPERED" in err


@pytest.mark.parametrize(("which", "message"), [
    (2, "seq 4 follows seq 2: records were deleted"),
    (4, "the log ends at seq 4 but 5 were written: the last records were deleted"),
])
def test_a_deleted_record_breaks_the_chain(tmp_path, which, message):
    path = tmp_path / "audit.jsonl"
    _write_events(AuditLog(path), 5)
    lines = path.read_text().splitlines()
    del lines[which]
    path.write_text("\n".join(lines) + "\n")
    report = verify_audit_log(path)
    assert not report.ok and any(message in p for p in report.problems)


def test_a_log_from_before_the_chain_continues_with_a_chain_and_verifies(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"time": "2025-01-01T00:00:00+00:00", "event": "answer", "user": "alice"}\n' * 2)  # an older m3
    _write_events(AuditLog(path), 3)
    report = verify_audit_log(path)
    assert report.ok and report.records == 3 and "2 record(s) at the start were written before" in report.notes[0]
    path.write_text(path.read_text().replace('"2.25.1"', '"2.25.7"'))
    assert not verify_audit_log(path).ok


def test_an_edited_last_record_is_found_by_the_head(tmp_path):
    path = tmp_path / "audit.jsonl"
    _write_events(AuditLog(path), 3)
    path.write_text(path.read_text().replace('"2.25.2"', '"2.25.9"'))
    assert verify_audit_log(path).problems == ["the last record (seq 3) was edited after it was written"]


def test_the_log_rotates_by_size_keeps_the_configured_number_of_files_and_the_chain_runs_across_them(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=1000, keep_files=2)
    _write_events(log, 40)
    names = sorted(p.name for p in tmp_path.glob("audit.jsonl*") if not p.name.endswith((".head", ".lock")))
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.glob("audit.jsonl*"))
    report = verify_audit_log(path)
    assert report.ok and report.last_seq == 40 and report.first_seq > 1 and "retention" in report.notes[0]
    # an edit in a rotated file is found as well
    rotated = tmp_path / "audit.jsonl.2"
    rotated.write_text(rotated.read_text().replace('"alice"', '"eve"', 1))
    assert not verify_audit_log(path).ok


def test_m3_audit_export_writes_the_records_of_a_date_range_as_written(tmp_path, monkeypatch, capsys):
    import app.audit as audit_module

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for day in ("2025-01-30", "2025-01-31", "2025-02-01"):
        monkeypatch.setattr(audit_module, "_now", lambda day=day: f"{day}T12:00:00.000+00:00")
        log.event("study_view", user="alice", study_uid=day)
    out = tmp_path / "january.jsonl"
    assert main(["audit", "export", "--log", str(path), "--since", "2025-01-31", "--until", "2025-01-31", "--out", str(out)]) == 0
    assert [json.loads(line)["study_uid"] for line in out.read_text().splitlines()] == ["2025-01-31"]
    assert "exported 1 record(s)" in capsys.readouterr().err
    assert len(list(export_audit_log(path, parse_time("2025-01-31")))) == 2
    with pytest.raises(Exception, match="dates must be ISO"):
        parse_time("31/01/2025")


def test_free_text_in_an_event_is_scrubbed_of_identifiers(tmp_path):
    entry = AuditLog(tmp_path / "a.jsonl").event("answer", user="alice", question="Patient 12345678 born 03.02.1985, "
                                                 "call 555 123 4567 or jane@example.org", notes=["MRN 99887766"],
                                                 client="192.0.2.10", study_uid="2.25.4242")
    text = json.dumps(entry)
    for identifier in ("12345678", "1985", "555 123 4567", "jane@example.org", "99887766"):
        assert identifier not in text
    assert entry["client"] == "192.0.2.10" and entry["study_uid"] == "2.25.4242"  # structured fields as given


def test_a_service_start_records_configuration_and_model_changes(tmp_path, scripted_module):
    from app.server import build_app

    cfg = _config(tmp_path)
    build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
    cfg.limits.max_files = 99
    build_app(cfg, backend=scripted_module.ScriptedBackend(), registry=_registry(scripted_module))
    starts = _events(cfg, "service_start")
    assert len(starts) == 2 and starts[0]["settings_sha256"] != starts[1]["settings_sha256"]
    [change] = _events(cfg, "config_change")
    assert change["changed"] == {"limits.max_files": [5000, 99]}
    assert "lm_api_key" not in json.dumps(starts) and "pacs.password" not in json.dumps(starts)


def test_two_processes_writing_one_log_at_once_keep_one_unbroken_chain(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "audit.jsonl"
    script = ("import sys; from app.audit import AuditLog; log = AuditLog(sys.argv[1], max_bytes=20000, keep_files=50)\n"
              "for i in range(150): log.event('study_view', user=sys.argv[2], study_uid=f'2.25.{i}')")
    root = Path(__file__).resolve().parents[2]
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), user], cwd=root) for user in ("alice", "bob")]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    report = verify_audit_log(path)
    assert report.ok, report.problems
    assert report.records == 300 and report.first_seq == 1 and report.files > 1  # rotated while both wrote

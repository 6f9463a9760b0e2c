"""The audit log: one JSON line per answer with the fields an auditor needs, identifiers scrubbed."""

from __future__ import annotations

import os
import stat
import threading

from app.audit import AuditLog, AuditRecord, scrub_text


def test_one_json_line_per_record_with_required_fields(tmp_path):
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    log.write(AuditRecord(user="alice", study_uid="2.25.1", series_uid="2.25.2", question="What is the liver volume?",
                          answer="1523.4 mL", model="m3-tiny", model_version="abc", expert_versions={"ct_segmentation": "1.0"},
                          tool_calls=[{"name": "ct_segmentation", "arguments": {}, "result": {"measurements": []}}]))
    entries = log.read()
    assert len(entries) == 1
    e = entries[0]
    for key in ("time", "user", "study_uid", "question", "model", "model_version", "expert_versions", "tool_calls", "answer"):
        assert key in e
    assert e["user"] == "alice" and e["expert_versions"] == {"ct_segmentation": "1.0"}
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600


def test_identifiers_typed_in_a_question_are_scrubbed(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    log.write(AuditRecord(user="u", study_uid="", series_uid="", question="MRN 12345678 born 1961-04-03, mail jo@x.org",
                          answer="ok", model="m"))
    text = (tmp_path / "a.jsonl").read_text()
    assert "12345678" not in text and "1961-04-03" not in text and "jo@x.org" not in text
    assert scrub_text("liver 1523.4 mL") == "liver 1523.4 mL"  # measurements survive


def test_concurrent_writers_do_not_interleave_lines(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")

    def write(n):
        for i in range(50):
            log.write(AuditRecord(user=f"u{n}", study_uid="s", series_uid="", question="q" * 500, answer="a" * 500, model="m"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(log.read()) == 200

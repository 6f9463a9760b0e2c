"""`m3 pacs outbox list | retry | drop`: an administrator sees what waits to be sent (never a patient identifier),
sends it again (to a real Orthanc, or a PACS that is down: the batch stays, the message says so consistently), and
drops batches by name or by age; batches older than pacs.outbox_max_age_days are expired: listed as such, never
sent, dropped with --expired. Each retry and drop is recorded in the audit log."""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
from pathlib import Path

import pytest
from localhost import cli_options
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app.audit import AuditLog
from app.main import main
from app.pacs_outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]
PATIENT_NAME, PATIENT_ID = "DOE^JANE", "PAT-777"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _result(study_uid: str | None = None) -> Dataset:
    """A small re-identified object as the outbox holds it (original patient identifiers on purpose)."""
    ds = Dataset()
    ds.preamble = b"\0" * 128
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, PATIENT_ID, "OT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    return ds


@pytest.fixture
def site(tmp_path, monkeypatch) -> dict[str, Path]:
    """The outbox and audit log of a site configured through M3_* variables (no config file)."""
    paths = {"outbox": tmp_path / "outbox", "audit": tmp_path / "audit.jsonl"}
    monkeypatch.delenv("M3_CONFIG", raising=False)
    monkeypatch.setenv("M3_PACS_OUTBOX_DIR", str(paths["outbox"]))
    monkeypatch.setenv("M3_AUDIT_LOG_PATH", str(paths["audit"]))
    return paths


def _closed_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_list_shows_each_waiting_batch_with_counts_and_no_patient_identifier(site, capsys):
    outbox = Outbox(site["outbox"])
    first, second = outbox.add([_result(), _result()]), outbox.add([_result()])
    assert main(["pacs", "outbox", "list"]) == 0
    out = capsys.readouterr().out
    assert f"2 batch(es) waiting in {site['outbox']}" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split() and line.split()[0] in (first.name, second.name)}
    assert rows[first.name][4:6] == ["2", "0"] and rows[second.name][4:6] == ["1", "0"]  # objects, attempts
    assert PATIENT_NAME not in out and PATIENT_ID not in out
    assert main(["pacs", "outbox", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(b["name"], b["objects"], b["attempts"]) for b in listed] == [(first.name, 2, 0), (second.name, 1, 0)]


def test_an_empty_outbox_says_so(site, capsys):
    assert main(["pacs", "outbox", "list"]) == 0
    assert "is empty: nothing waits to be sent" in capsys.readouterr().out


def test_retry_to_a_pacs_that_is_down_keeps_the_batch_and_says_only_that_it_waits(site, monkeypatch, capsys):
    batch = Outbox(site["outbox"]).add([_result()])
    monkeypatch.setenv("M3_PACS_URL", f"http://127.0.0.1:{_closed_port()}/dicom-web")
    monkeypatch.setenv("M3_PACS_RETRIES", "0")
    assert main(["pacs", "outbox", "retry"]) == 1
    out = capsys.readouterr().out
    assert "is unreachable" in out and f"wait in the outbox ({batch.name})" in out and f"m3 pacs outbox retry {batch.name}" in out
    assert "Nothing was changed" not in out  # the results do wait in the outbox: one message, not two contradicting ones
    assert "0 batch(es) sent, 1 still waiting" in out
    [waiting] = Outbox(site["outbox"]).batches()
    assert (waiting.name, waiting.objects, waiting.attempts) == (batch.name, 1, 1)
    assert "is unreachable" in waiting.last_error and waiting.last_attempt
    [record] = AuditLog(site["audit"]).read()
    assert (record["event"], record["sent"], record["pending"]) == ("pacs_outbox_retry", 0, 1)


def test_drop_by_name_deletes_only_that_batch_and_records_it_and_an_unknown_name_drops_nothing(site, capsys):
    outbox = Outbox(site["outbox"])
    keep, gone = outbox.add([_result()]), outbox.add([_result(), _result()])
    assert main(["pacs", "outbox", "drop", gone.name, "20990101T000000-00000000"]) == 1
    assert "has no batch '20990101T000000-00000000'" in capsys.readouterr().err
    assert gone.is_dir() and keep.is_dir()  # every name is checked before anything is deleted
    assert main(["pacs", "outbox", "drop", "../outbox"]) == 1  # only batch folders of this outbox
    assert site["outbox"].is_dir()

    assert main(["pacs", "outbox", "drop", gone.name]) == 0
    assert f"dropped {gone.name}: 2 object(s) never sent" in capsys.readouterr().out
    assert not gone.exists() and keep.is_dir()
    [record] = AuditLog(site["audit"]).read()
    assert (record["event"], record["batch"], record["objects"], record["reason"]) == ("pacs_outbox_drop", gone.name, 2, "by name")
    assert record["user"].startswith("cli:")
    assert PATIENT_NAME not in site["audit"].read_text() and PATIENT_ID not in site["audit"].read_text()


def test_drop_older_than_expires_only_batches_past_the_age(site, capsys):
    outbox = Outbox(site["outbox"])
    fresh = outbox.add([_result()])
    old = outbox.add([_result()])
    Outbox.write_state(old, {**Outbox.read_state(old), "created": "2020-01-01T00:00:00+00:00"})  # written in 2020
    assert main(["pacs", "outbox", "drop", "--older-than", "30"]) == 0
    assert "1 batch(es) dropped; 1 still waiting" in capsys.readouterr().out
    assert not old.exists() and fresh.is_dir()
    assert AuditLog(site["audit"]).read()[0]["reason"] == "expired"
    assert main(["pacs", "outbox", "drop"]) == 1  # neither names nor an age: refused
    assert "nothing was dropped" in capsys.readouterr().err and fresh.is_dir()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("orthanc_fixture", ROOT / "scripts" / "orthanc_fixture.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    if reason := fixture.orthanc_missing_reason():
        pytest.skip(reason)
    with fixture.OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def test_retry_sends_a_named_batch_to_a_real_pacs_and_empties_it_from_the_outbox(site, orthanc, monkeypatch, capsys):
    from dicomweb_client.api import DICOMwebClient

    study_uid = generate_uid()
    outbox = Outbox(site["outbox"])
    sent, other = outbox.add([_result(study_uid), _result(study_uid)]), outbox.add([_result()])
    monkeypatch.setenv("M3_PACS_URL", orthanc.dicomweb_url)
    assert main(["pacs", "outbox", "retry", sent.name]) == 0
    assert "1 batch(es) sent, 0 still waiting" in capsys.readouterr().out
    assert not sent.exists() and other.is_dir()  # only the batch named
    assert len(DICOMwebClient(orthanc.dicomweb_url).search_for_instances(study_uid)) == 2



def _written_days_ago(batch: Path, days: int) -> None:
    import datetime as dt

    created = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    Outbox.write_state(batch, {**Outbox.read_state(batch), "created": created.isoformat()})


def test_batches_past_the_max_age_are_listed_expired_never_sent_and_dropped_with_expired(site, orthanc, monkeypatch, capsys):
    from dicomweb_client.api import DICOMwebClient

    outbox = Outbox(site["outbox"])
    old_study, fresh_study = generate_uid(), generate_uid()
    old, fresh = outbox.add([_result(old_study)]), outbox.add([_result(fresh_study)])
    _written_days_ago(old, 10)
    monkeypatch.setenv("M3_PACS_OUTBOX_MAX_AGE_DAYS", "7")
    monkeypatch.setenv("M3_PACS_URL", orthanc.dicomweb_url)

    assert main(["pacs", "outbox", "list"]) == 0
    out = capsys.readouterr().out
    states = {line.split()[0]: line.split()[6] for line in out.splitlines() if line.split() and line.split()[0] in (old.name, fresh.name)}
    assert states == {old.name: "expired", fresh.name: "waiting"}
    assert "1 batch(es) are older than pacs.outbox_max_age_days (7) and will not be sent" in out
    assert main(["pacs", "outbox", "list", "--json"]) == 0
    assert {b["name"]: b["expired"] for b in json.loads(capsys.readouterr().out)} == {old.name: True, fresh.name: False}

    assert main(["pacs", "outbox", "retry"]) == 1  # the expired batch still waits: not done
    out = capsys.readouterr().out
    assert "1 batch(es) sent, 0 still waiting" in out and "1 expired batch(es)" in out and "drop --expired" in out
    web = DICOMwebClient(orthanc.dicomweb_url)
    assert len(web.search_for_instances(fresh_study)) == 1 and web.search_for_instances(old_study) == []
    assert not fresh.exists() and Outbox.read_state(old)["attempts"] == 0  # never even tried
    assert AuditLog(site["audit"]).read()[-1]["expired"] == 1

    assert main(["pacs", "outbox", "drop", "--expired"]) == 0
    assert f"dropped {old.name}" in capsys.readouterr().out and not old.exists()
    assert AuditLog(site["audit"]).read()[-1]["reason"] == "expired"


def test_drop_expired_without_an_age_limit_is_refused(site, monkeypatch, capsys):
    batch = Outbox(site["outbox"]).add([_result()])
    _written_days_ago(batch, 400)
    monkeypatch.setenv("M3_PACS_OUTBOX_MAX_AGE_DAYS", "0")  # no expiry
    assert main(["pacs", "outbox", "drop", "--expired"]) == 1
    assert "needs pacs.outbox_max_age_days > 0" in capsys.readouterr().err and batch.is_dir()
    assert main(["pacs", "outbox", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["expired"] is False


def test_every_option_of_the_pacs_commands_has_help_text():
    from app.main import build_parser

    root = build_parser()
    pacs = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices["pacs"]
    options = list(cli_options(pacs, "m3 pacs"))
    assert {"m3 pacs outbox list", "m3 pacs outbox retry", "m3 pacs outbox drop"} <= {p for p, _, _ in options}
    missing = [f"{path} {'/'.join(names)}" for path, names, text in options if not (text and text.strip())]
    assert not missing, f"options without help: {missing}"

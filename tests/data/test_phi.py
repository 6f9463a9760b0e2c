"""No identity value from any input header appears in logs, exception messages, ingest objects, the CLI's
output or the de-identified files `m3 data deid` writes; upload names that identify stay out of the server
log; raw uploaded files do not outlive the ingest that extracted them, even one killed with SIGKILL."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import app.main
from app.main import main as m3
from data import IngestError, load_studies, load_study
from data.cli import format_studies
from data.workdir import ingest_workdir, sweep_stale_ingest_dirs


def _assert_clean(text: str, strings: list[str], where: str) -> None:
    low = text.lower()
    leaks = [s for s in strings if s.lower() in low]
    assert not leaks, f"{where} leaks {leaks}"


@pytest.fixture
def phi_upload(tmp_path, write_series, ct_volume, identity):
    """A folder with a good series, a truncated file, a non-DICOM file and a zip with an escaping entry."""
    values, _ = identity
    folder = tmp_path / "upload"
    description = f"CT {values['PatientName'].split('^')[0]} {values['PatientID']} {values['PatientBirthDate']}"
    paths = write_series(folder, ct_volume, description=description,
                         extra={"StudyDescription": f"Chest for {values['PatientName']}",
                                "ProtocolName": values["InstitutionName"], "ImageComments": values["PatientAddress"],
                                "RequestingPhysician": values["ReferringPhysicianName"]})
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[:-50])
    (folder / "bad.dcm").write_bytes(data[:700])  # a header cut in the middle of identity attributes
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../escape.dcm", data)
        zf.writestr("ok/slice.dcm", paths[0].read_bytes())
    (folder / "extra.zip").write_bytes(buffer.getvalue())
    return folder


def test_no_phi_in_logs_errors_objects_or_exports(tmp_path, phi_upload, identity, caplog, capsys, monkeypatch):
    _, strings = identity
    monkeypatch.setattr(app.main, "COMMAND_MODULES", ("data.cli",))  # only `m3 data`: no torch import
    caplog.set_level(logging.DEBUG)
    study = load_study(phi_upload / ".." / "upload")
    assert study.series and study.errors  # the test exercises both paths
    everything = [
        "\n".join(r.getMessage() for r in caplog.records),
        "\n".join(str(e) for e in study.errors),
        "\n".join(f"{s.name} {s.reason}" for s in study.skipped),
        repr(study), format_studies([study]), json.dumps(study.deid_manifest),
        "\n".join(repr(s.volume.meta) + s.description + s.volume.body_part for s in study.series),
    ]
    for n, text in enumerate(everything):
        _assert_clean(text, strings, f"ingest output #{n}")

    out = tmp_path / "deid"
    assert m3(["-v", "data", "deid", str(phi_upload), str(out)]) == 0
    assert m3(["data", "info", str(phi_upload)]) == 0
    printed = capsys.readouterr()
    _assert_clean(printed.out + printed.err, strings, "CLI output")
    _assert_clean("\n".join(r.getMessage() for r in caplog.records), strings, "CLI logs")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".dcm"]) >= 6
    for path in files:
        raw = path.read_bytes().decode("latin-1")
        _assert_clean(raw, strings, f"exported {path.name}")
        _assert_clean(path.as_posix(), strings, "exported file names")
    reloaded = load_study(out, deidentify=False)
    assert reloaded.series[0].volume.shape[2] >= 5


def test_failed_upload_errors_carry_no_phi(tmp_path, write_series, ct_volume, identity):
    _, strings = identity
    paths = write_series(tmp_path / "only", ct_volume[:, :, :1])
    paths[0].write_bytes(paths[0].read_bytes()[:-10])
    with pytest.raises(IngestError) as info:
        load_study(tmp_path / "only")
    _assert_clean(str(info.value), strings, "exception")


def test_zip_upload_loads_and_reports_escape(phi_upload):
    study = load_study(phi_upload / "extra.zip")
    assert study.series[0].volume.shape[2] == 1
    assert any("escapes the archive folder" in str(e) and "extra.zip/../escape.dcm" in str(e) for e in study.errors)
    assert np.isfinite(study.series[0].volume.affine).all()


def test_server_log_at_debug_holds_no_upload_name_or_header_value(tmp_path, write_series, ct_volume, identity, caplog):
    """Folder, file and zip names that name the patient, a picture's EXIF and header values never reach the log
    (at DEBUG, every logger); the uploader still sees which file failed."""
    from PIL import Image

    values, strings = identity
    patient = values["PatientName"].split("^")[0]
    folder = tmp_path / f"{patient}_{values['PatientID']}"
    paths = write_series(folder / values["InstitutionName"].replace(" ", "_"), ct_volume,
                         description=f"CT {patient} {values['PatientID']}")
    bad = folder / f"{values['PatientID']}_scout.dcm"
    bad.write_bytes(paths[0].read_bytes()[:-50])  # pixel data cut short
    picture = Image.new("RGB", (8, 6), (200, 10, 10))
    exif = picture.getexif()
    exif[0x013B], exif[0x010E] = values["PatientName"], f"{values['PatientAddress']} {values['PatientBirthDate']}"
    picture.save(folder / f"{patient}_photo.jpg", exif=exif)
    archive = tmp_path / f"{patient}_{values['AccessionNumber']}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{values['OtherPatientIDs']}/broken.dcm", b"not dicom at all" * 20)
        zf.writestr(f"../{patient}.dcm", paths[1].read_bytes())
        zf.writestr(f"{patient}/slice.dcm", paths[2].read_bytes())
    caplog.set_level(logging.DEBUG)
    studies = load_studies([folder, archive])
    assert studies[0].series
    log_text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "ingest:" in log_text  # the ingest was logged ...
    _assert_clean(log_text, strings + [folder.name, archive.stem], "server log")  # ... without any name or value
    errors = "\n".join(str(e) for s in studies for e in s.errors)
    assert bad.name in errors and f"{archive.name}/{values['OtherPatientIDs']}/broken.dcm" in errors  # the uploader sees
    with pytest.raises(IngestError):
        load_study(archive.with_name(f"{patient}_missing.zip"))
    _assert_clean("\n".join(r.getMessage() for r in caplog.records), strings, "server log after a refused upload")


_INGEST_THEN_STALL = """
import sys, time
import data.dicom_series

def stall(*args, **kwargs):  # raw files are extracted and headers read: wait here to be killed
    print("ingesting", flush=True)
    time.sleep(120)

data.dicom_series.assemble_series = stall
from data import load_studies
load_studies([sys.argv[1]])
"""


def test_raw_files_of_an_ingest_killed_with_sigkill_are_swept(tmp_path, write_series, ct_volume, identity, monkeypatch):
    values, _ = identity
    paths = write_series(tmp_path / "src", ct_volume)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in paths:
            zf.write(path, f"study/{path.name}")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", _INGEST_THEN_STALL, str(archive)], stdout=subprocess.PIPE,
                             env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(repo)}, cwd=repo)
    try:
        assert child.stdout.readline().strip() == b"ingesting"
        (work,) = tmp.iterdir()
        assert work.name.startswith(f"m3-ingest-{child.pid}-") and stat.S_IMODE(work.stat().st_mode) == 0o700
        raw = [p for p in work.rglob("*.dcm")]
        assert len(raw) == len(paths) and values["PatientName"].encode() in raw[0].read_bytes()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert work.exists()  # kill -9 runs no clean-up: the identified files are still there ...
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    with ingest_workdir() as running:  # ... next to the folder of an ingest still running
        assert sweep_stale_ingest_dirs() == 1  # what the app runs at start-up
        assert running.exists() and [p for p in tmp.iterdir()] == [running]
        assert values["PatientName"].encode() not in b"".join(p.read_bytes() for p in tmp.rglob("*") if p.is_file())
    assert not any(tmp.iterdir())  # the running one removed itself when done


def test_sweep_keeps_folders_in_use_and_removes_the_rest(tmp_path):
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = {"mine": f"m3-ingest-{os.getpid()}-0-a", "dead": f"m3-ingest-{dead.stdout.strip()}-0-b",
             "legacy": "m3-ingest-c", "pacs_now": "m3-pacs-d", "pacs_old": "m3-pacs-e", "other": "someone-else"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "raw.dcm").write_bytes(b"Quixote")
    long_ago = time.time() - 2 * 86400
    os.utime(tmp_path / names["pacs_old"], (long_ago, long_ago))
    assert sweep_stale_ingest_dirs(tmp_dir=tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["mine"], names["pacs_now"], names["other"]])
    assert sweep_stale_ingest_dirs(0.0, tmp_dir=tmp_path) == 2  # older than max_age_s: whoever owns it
    assert [p.name for p in tmp_path.iterdir()] == ["someone-else"]

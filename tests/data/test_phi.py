"""No identity value from any input header appears in logs, exception messages, ingest objects, the CLI's
output or the de-identified files `m3 data deid` writes."""

from __future__ import annotations

import io
import json
import logging
import zipfile

import numpy as np
import pytest

import app.main
from app.main import main as m3
from data import IngestError, load_study
from data.cli import format_studies


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

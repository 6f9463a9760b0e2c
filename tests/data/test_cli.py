"""`m3 data info` and `m3 data deid`, and the generators' sub-commands joining `m3 data`."""

from __future__ import annotations

import importlib.util
import json

import pydicom

import pytest

import app.main
from app.main import build_parser
from app.main import main as m3


@pytest.fixture(autouse=True)
def data_commands_only(monkeypatch):
    """The real `m3` front door with only `m3 data` registered (the other packages import torch and gradio)."""
    monkeypatch.setattr(app.main, "COMMAND_MODULES", ("data.cli",))


def test_info_prints_the_series_table(tmp_path, write_series, ct_volume, capsys):
    write_series(tmp_path / "ct", ct_volume, positions=[[0, 0, z] for z in (0, 2.5, 5, 10, 12.5, 15)])
    (tmp_path / "ct" / "notes.txt").write_text("x")
    assert m3(["data", "info", str(tmp_path / "ct")]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[1:3]
    assert header.split() == ["series", "modality", "description", "shape", "spacing_mm", "files", "warnings"]
    assert row.split()[1:] == ["CT", "Axial", "2.5mm", "12x10x6", "0.80x0.70x2.50", "6", "1"]
    assert "gap between slices 2 and 3" in out and "skipped ct/notes.txt: text file" in out
    assert m3(["data", "info", "--json", str(tmp_path / "ct")]) == 0
    (study,) = json.loads(capsys.readouterr().out)
    assert study["series"][0]["shape"] == "12x10x6" and study["deid_manifest"]["attributes"]["PatientName"] == "Z"


def test_info_on_nothing_loadable_fails(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("x")
    assert m3(["data", "info", str(tmp_path)]) == 1
    assert m3(["data", "info", str(tmp_path / "missing")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_deid_writes_loadable_deidentified_dicom(tmp_path, write_series, ct_volume, identity, capsys):
    write_series(tmp_path / "in", ct_volume)
    assert m3(["data", "deid", str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    assert "wrote 6 de-identified files" in capsys.readouterr().out
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 6
    ds = pydicom.dcmread(files[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == "" and ds.StudyInstanceUID.startswith("2.25.")
    summary = json.loads((tmp_path / "out" / "deid_manifest.json").read_text())
    assert summary["written"] == 6 and summary["manifest"]["attributes"]["InstitutionName"] == "X"


def test_generator_subcommands_join_m3_data():
    parser = build_parser()
    data = parser._subparsers._group_actions[0].choices["data"]
    commands = set(data._subparsers._group_actions[0].choices)
    assert {"info", "deid"} <= commands
    assert ("synth" in commands) == (importlib.util.find_spec("data.phantoms.cli") is not None)

"""app.pacs over DIMSE against Orthanc's DICOM port: C-FIND finds what DICOMweb finds, C-MOVE to m3's storage SCP
then the same de-identifying load, C-STORE write-back through the same outbox, and the refusals an admin meets
(an AE title the PACS does not know, a move destination it does not know, a PACS that is down, a move port taken).

Tests that write back seed a CT study of their own (patients PAT-DIMSE-*, dated 2022), so the archive searches of
test_pacs_orthanc.py find exactly what they expect."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import socket
import tempfile

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pacs_objects import deidentified_copy, make_seg, make_sr

from app.pacs import PacsClient, PacsError, PacsUnavailableError, waiting_message

pytestmark = pytest.mark.orthanc


def _seed(orthanc, make_study, patient_id: str, seed: int):
    study = make_study(patient_id, "DIMSE^DORA", f"ACC-{patient_id}", "20220615", "CT", "CT DIMSE", seed=seed)
    assert len(DICOMwebClient(orthanc.dicomweb_url).store_instances(study.datasets).ReferencedSOPSequence) == len(study.datasets)
    return study


def _closed_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_c_find_returns_the_same_study_rows_as_dicomweb(archive, pacs_config, dimse_config, caplog):
    caplog.set_level(logging.DEBUG)
    web, dimse = PacsClient(pacs_config), PacsClient(dimse_config)
    queries = [dict(patient_id="PAT-001"), dict(accession="ACC-2001"), dict(date=(dt.date(2024, 1, 1), dt.date(2024, 1, 31))),
               dict(date="20240612"), dict(modality="MR"), dict(patient_id="PAT-001", modality="CT"), dict(patient_id="NOBODY")]
    for query in queries:
        by_dimse = sorted((r.to_row() for r in dimse.search(**query)), key=lambda r: r["accession"])
        by_web = sorted((r.to_row() for r in web.search(**query)), key=lambda r: r["accession"])
        assert by_dimse == by_web, query
    [row] = dimse.search(accession="ACC-2001")
    assert (row.patient_id, row.patient_name, row.study_date, row.modalities, row.n_instances) == (
        "PAT-002", "ROE^RICHARD", "20240110", ("CT",), 6)
    assert row.study_uid == archive[2].study_uid
    assert len(dimse.search(patient_id="PAT-00*", limit=2)) == 2  # the C-FIND stops at the limit
    assert "PAT-00" not in caplog.text and "ACC-2001" not in caplog.text  # no query value or identifier is logged


def test_c_move_retrieves_every_instance_and_load_ingests_it_deidentified(archive, dimse_config, tmp_path, monkeypatch):
    study = archive[0]
    client = PacsClient(dimse_config)
    dest = client.retrieve(study.study_uid, tmp_path / "pulled")
    pulled = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, sorted(dest.glob("*.dcm")))}
    assert len(pulled) == len(study.datasets)
    for original in study.datasets:
        np.testing.assert_array_equal(pulled[str(original.SOPInstanceUID)].pixel_array, original.pixel_array)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    loaded = client.load(study.study_uid)
    assert not list(tmp_path.glob("m3-pacs-*"))  # the original files are gone
    assert loaded.uid != study.study_uid and loaded.series[0].volume.shape == (32, 32, 6)
    assert study.patient_id not in repr(loaded) and study.study_uid not in repr(loaded)


def test_c_store_sends_sr_and_seg_to_the_original_study_through_the_outbox(orthanc, make_study, pacs_config, dimse_config,
                                                                          tmp_path):
    study = _seed(orthanc, make_study, "PAT-DIMSE-1", seed=101)
    client = PacsClient(dimse_config)
    source = deidentified_copy(client.retrieve(study.study_uid, tmp_path / "pulled").glob("*.dcm"))
    receipt = client.store([make_sr(source), make_seg(source)])
    assert receipt.stored == 2 and client.pending_batches() == []
    web = DICOMwebClient(pacs_config.url)
    back = {}
    for series in web.search_for_series(study.study_uid):
        ds = pydicom.Dataset.from_json(series)
        back[str(ds.Modality)] = web.retrieve_series(study.study_uid, str(ds.SeriesInstanceUID))
    assert sorted(back) == ["CT", "SEG", "SR"]
    for [obj] in (back["SEG"], back["SR"]):
        assert (obj.PatientID, str(obj.PatientName), obj.AccessionNumber) == (study.patient_id, study.patient_name, study.accession)


def test_a_failed_c_store_keeps_the_batch_and_says_so_like_dicomweb(orthanc, make_study, dimse_config, pacs_config, tmp_path):
    study = _seed(orthanc, make_study, "PAT-DIMSE-2", seed=102)
    source = deidentified_copy(PacsClient(dimse_config).retrieve(study.study_uid, tmp_path / "pulled").glob("*.dcm"))
    down = PacsClient(dataclasses.replace(dimse_config, port=_closed_port(), retries=0))
    with pytest.raises(PacsUnavailableError) as err:
        down.store([make_sr(source)], verify_study=False)
    [batch] = down.pending_batches()
    assert str(err.value).endswith(waiting_message(batch.name))
    assert "is unreachable" in str(err.value) and "Nothing was changed" not in str(err.value)

    web_down = PacsClient(dataclasses.replace(pacs_config, url=f"http://127.0.0.1:{_closed_port()}/dicom-web", retries=0,
                                              outbox_dir=tmp_path / "web-outbox"))
    with pytest.raises(PacsUnavailableError) as web_err:
        web_down.store([make_sr(source)], verify_study=False)
    [web_batch] = web_down.pending_batches()
    assert str(web_err.value).endswith(waiting_message(web_batch.name))  # one message shape for both protocols

    report = PacsClient(dimse_config).retry_outbox()  # the PACS is reachable again: the same outbox drains over DIMSE
    assert (report.sent, report.pending) == (1, 0) and not batch.exists()
    assert "SR" in {s["00080060"]["Value"][0] for s in DICOMwebClient(pacs_config.url).search_for_series(study.study_uid)}


def test_an_ae_title_the_pacs_does_not_know_is_named_in_the_refusal(archive, dimse_config):
    with pytest.raises(PacsError, match=r"m3's AE title 'STRANGER'.*register") as err:
        PacsClient(dataclasses.replace(dimse_config, ae_title="STRANGER")).search(patient_id="PAT-001")
    assert "PAT-001" not in str(err.value) and not isinstance(err.value, PacsUnavailableError)


def test_a_move_destination_the_pacs_does_not_know_is_named_and_nothing_is_left(archive, dimse_config, tmp_path):
    client = PacsClient(dataclasses.replace(dimse_config, move_ae_title="NOBODY"))
    with pytest.raises(PacsError, match=r"move destination 'NOBODY'.*move_port") as err:
        client.retrieve(archive[0].study_uid, tmp_path / "pulled")
    assert archive[0].study_uid not in str(err.value)
    assert not list((tmp_path / "pulled").glob("*.dcm"))


def test_a_dimse_pacs_that_is_down_is_unreachable_after_the_retries(dimse_config):
    config = dataclasses.replace(dimse_config, port=_closed_port(), retries=2, backoff_s=0.05)
    with pytest.raises(PacsUnavailableError, match=r"is unreachable after 3 attempts.*\[pacs\] host and port.*Nothing was changed") as err:
        PacsClient(config).search(patient_id="PAT-001")
    assert "PAT-001" not in str(err.value)


def test_a_taken_move_port_is_reported_before_anything_is_asked(archive, dimse_config, tmp_path):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the TIME_WAIT of earlier retrieves
        taken.bind(("", dimse_config.move_port))
        taken.listen()
        with pytest.raises(PacsError, match=rf"cannot listen on \[pacs\] move_port {dimse_config.move_port}"):
            PacsClient(dimse_config).retrieve(archive[0].study_uid, tmp_path / "pulled")

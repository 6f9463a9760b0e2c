"""app.pacs against a real Orthanc: QIDO search, WADO retrieve, STOW write-back of SR + SEG re-identified
to the original study, refusals, outages and the outbox."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import threading
import time

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pacs_objects import deidentified_copy, make_seg, make_sr
from pydicom.uid import generate_uid

from app.pacs import PacsClient, PacsError, PacsUnavailableError, WritebackDisabledError

pytestmark = pytest.mark.orthanc


class _StatusServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server answering every request with one status; counts requests by method."""

    def __init__(self, status: int) -> None:
        self.status, self.counts = status, {"GET": 0, "POST": 0}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                outer.counts[self.command] += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                elif self.headers.get("Transfer-Encoding") == "chunked":
                    while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        self.rfile.read(size + 2)
                    self.rfile.readline()
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"


# --- QIDO-RS ------------------------------------------------------------------------------------


def test_search_by_patient_accession_date_and_modality(archive, pacs_config):
    client = PacsClient(pacs_config)
    jane = {s.study_uid for s in archive if s.patient_id == "PAT-001"}
    assert {r.study_uid for r in client.search(patient_id="PAT-001")} == jane
    [by_accession] = client.search(accession="ACC-2001")
    assert (by_accession.patient_id, by_accession.patient_name, by_accession.study_date) == ("PAT-002", "ROE^RICHARD", "20240110")
    assert by_accession.modalities == ("CT",) and by_accession.n_instances == 6 and by_accession.n_series == 1
    january = {r.accession for r in client.search(date=(dt.date(2024, 1, 1), dt.date(2024, 1, 31)))}
    assert january == {"ACC-1001", "ACC-2001"}
    assert [r.accession for r in client.search(date="20240612")] == ["ACC-1002"]
    assert [r.accession for r in client.search(modality="MR")] == ["ACC-1002"]
    assert [r.accession for r in client.search(patient_id="PAT-001", modality="CT")] == ["ACC-1001"]
    assert client.search(patient_id="NOBODY") == []
    assert "PAT-" not in repr(by_accession) and "ROE" not in repr(by_accession)


def test_search_needs_a_filter_and_a_valid_date(pacs_config):
    client = PacsClient(pacs_config)
    with pytest.raises(PacsError, match="at least one of patient ID"):
        client.search()
    with pytest.raises(PacsError, match="YYYYMMDD"):
        client.search(date="5 Jan 2024")


# --- WADO-RS ------------------------------------------------------------------------------------


def test_retrieve_writes_every_instance_with_its_pixels(archive, pacs_config, tmp_path):
    study = archive[0]
    dest = PacsClient(pacs_config).retrieve(study.study_uid, tmp_path / "pulled")
    pulled = {str(d.SOPInstanceUID): d for d in map(pydicom.dcmread, sorted(dest.glob("*.dcm")))}
    assert len(pulled) == len(study.datasets)
    for original in study.datasets:
        got = pulled[str(original.SOPInstanceUID)]
        np.testing.assert_array_equal(got.pixel_array, original.pixel_array)
        assert got.StudyInstanceUID == study.study_uid


def test_retrieve_unknown_study_is_a_clear_404(archive, pacs_config, tmp_path):
    with pytest.raises(PacsError, match="answered 404.*does not have it") as err:
        PacsClient(pacs_config).retrieve(generate_uid(), tmp_path / "none")
    assert err.value.status == 404
    assert not list((tmp_path / "none").glob("*.dcm"))
    with pytest.raises(PacsError, match="digits and dots"):
        PacsClient(pacs_config).retrieve("1.2.3/../../system", tmp_path / "none")


# --- STOW-RS write-back -------------------------------------------------------------------------


def test_sr_and_seg_go_back_to_the_original_study(archive, pacs_config, tmp_path):
    study = archive[0]
    client = PacsClient(pacs_config)
    source = deidentified_copy(client.retrieve(study.study_uid, tmp_path / "pulled").glob("*.dcm"))
    assert source[0].StudyInstanceUID != study.study_uid and source[0].PatientID != study.patient_id
    seg, sr = make_seg(source), make_sr(source)

    receipt = client.store([sr, seg])

    assert receipt.stored == 2 and client.pending_batches() == []
    web = DICOMwebClient(pacs_config.url)
    series = {str(s["00080060"]["Value"][0]): s for s in web.search_for_series(study.study_uid)}
    assert set(series) == {"CT", "SEG", "SR"}
    [seg_back] = web.retrieve_series(study.study_uid, str(pydicom.Dataset.from_json(series["SEG"]).SeriesInstanceUID))
    [sr_back] = web.retrieve_series(study.study_uid, str(pydicom.Dataset.from_json(series["SR"]).SeriesInstanceUID))
    original_sops = {str(d.SOPInstanceUID) for d in study.datasets}
    for back in (seg_back, sr_back):
        assert (back.StudyInstanceUID, back.PatientID, str(back.PatientName), back.AccessionNumber, back.StudyDate) == (
            study.study_uid, study.patient_id, study.patient_name, study.accession, study.date)
        assert "PatientIdentityRemoved" not in back
    referenced = seg_back.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == study.series_uid
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} <= original_sops
    assert seg_back.FrameOfReferenceUID == study.datasets[0].FrameOfReferenceUID
    assert int(seg_back.NumberOfFrames) == 3  # the three slices with liver voxels
    evidence = sr_back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study.study_uid
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series_uid
    assert "1523.4 mL" in sr_back.ContentSequence[0].TextValue
    assert str(sr_back.ContentDate) == str(seg.ContentDate) == dt.date.today().strftime("%Y%m%d")  # the report's own creation date is not shifted


def test_writeback_disabled_is_refused_and_sends_nothing(archive, pacs_config, tmp_path):
    study = archive[2]
    client = PacsClient(dataclasses.replace(pacs_config, writeback_enabled=False))
    source = deidentified_copy(client.retrieve(study.study_uid, tmp_path / "pulled").glob("*.dcm"))
    web = DICOMwebClient(pacs_config.url)
    before = len(web.search_for_instances(study.study_uid))
    with pytest.raises(WritebackDisabledError, match="writeback_enabled = true"):
        client.store([make_sr(source)])
    assert len(web.search_for_instances(study.study_uid)) == before
    assert client.pending_batches() == []


def test_results_of_a_study_not_loaded_here_are_refused(pacs_config, make_study):
    other = make_study("PAT-9", "X^Y", "ACC-9", "20240101", "CT", "CT", seed=9)
    with pytest.raises(PacsError, match="not loaded in this server session"):
        PacsClient(pacs_config).store([make_sr(other.datasets)])


# --- outages: clear messages, retries for GET only, nothing lost ----------------------------------


def test_pacs_down_gives_a_clear_error_after_backoff_retries(pacs_config):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = dataclasses.replace(pacs_config, url=f"http://127.0.0.1:{port}/dicom-web", retries=3, backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(PacsUnavailableError, match=r"is unreachable after 4 attempts.*Nothing was changed") as err:
        PacsClient(config).search(patient_id="PAT-001")
    assert time.monotonic() - started >= 0.1 + 0.2  # urllib3 backoff: 0, 0.1, 0.2 s
    assert "PAT-001" not in str(err.value)


def test_5xx_retries_get_but_never_repeats_a_stow(archive, pacs_config, tmp_path):
    server = _StatusServer(503)
    try:
        config = dataclasses.replace(pacs_config, url=server.url, retries=2, backoff_s=0.01)
        with pytest.raises(PacsError, match="answered 503.*after 3 attempts.*try again") as err:
            PacsClient(config).search(accession="ACC-1001")
        assert err.value.status == 503 and server.counts["GET"] == 3
        study = archive[1]
        source = deidentified_copy(PacsClient(pacs_config).retrieve(study.study_uid, tmp_path / "pulled").glob("*.dcm"))
        failing = PacsClient(config)
        with pytest.raises(PacsError, match="answered 503.*wait in the outbox"):
            failing.store([make_sr(source)], verify_study=False)
        assert server.counts["POST"] == 1
    finally:
        server.shutdown()
    [batch] = failing.pending_batches()
    assert len(list(batch.glob("*.dcm"))) == 1
    # the PACS is back: the same outbox is drained into the real PACS
    report = PacsClient(pacs_config).retry_outbox()
    assert (report.sent, report.pending) == (1, 0)
    modalities = {s["00080060"]["Value"][0] for s in DICOMwebClient(pacs_config.url).search_for_series(study.study_uid)}
    assert modalities == {"MR", "SR"}


def test_4xx_on_stow_keeps_the_batch(archive, pacs_config, tmp_path):
    server = _StatusServer(403)
    try:
        study = archive[2]
        source = deidentified_copy(PacsClient(pacs_config).retrieve(study.study_uid, tmp_path / "pulled").glob("*.dcm"))
        client = PacsClient(dataclasses.replace(pacs_config, url=server.url))
        with pytest.raises(PacsError, match="answered 403.*credentials"):
            client.store([make_seg(source)], verify_study=False)
    finally:
        server.shutdown()
    assert len(client.pending_batches()) == 1


def test_load_ingests_deidentified_and_the_seg_of_its_volume_goes_home(archive, pacs_config, tmp_path, monkeypatch):
    """The app's path: PacsClient.load → de-identified Study; a SEG made from the Volume alone
    (experts.dicom_seg) is re-identified at store time and lands in the original study."""
    from experts.base import ExpertResult
    from experts.dicom_seg import dicom_seg

    study = archive[2]
    client = PacsClient(pacs_config)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    loaded = client.load(study.study_uid)
    assert not list(tmp_path.glob("m3-pacs-*"))  # the original files are gone
    assert loaded.uid != study.study_uid and len(loaded.series) == 1
    volume = loaded.series[0].volume
    assert volume.shape == (32, 32, 6) and volume.modality == "CT"
    assert study.patient_id not in repr(loaded) and study.study_uid not in repr(loaded)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[8:20, 10:22, 2:5] = 1
    seg = dicom_seg(ExpertResult(expert="ct_segmentation", label_volume=volume.like(mask), label_names={1: "liver"}, version="1"), volume)
    assert seg.StudyInstanceUID == loaded.uid

    client.store([seg])

    web = DICOMwebClient(pacs_config.url)
    [seg_series] = [s for s in web.search_for_series(study.study_uid) if s["00080060"]["Value"][0] == "SEG"]
    [back] = web.retrieve_series(study.study_uid, seg_series["0020000E"]["Value"][0])
    assert back.PatientID == study.patient_id and back.AccessionNumber == study.accession
    referenced = back.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == study.series_uid
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} <= {str(d.SOPInstanceUID) for d in study.datasets}

"""The hospital PACS over DICOMweb: find studies (QIDO-RS), pull one (WADO-RS), send results back (STOW-RS).

    client = PacsClient(config)                       # AppConfig or PacsConfig
    rows = client.search(patient_id="12345")          # list[StudySummary], shown to the clinician
    study = client.load(rows[0].study_uid)            # retrieve → data.load_study (de-identified) → raw files deleted
    ...                                               # SR / SEG built on the de-identified study
    client.store([sr, seg])                           # re-identified to the original study, then STOW-RS

Everything downstream of ``load`` sees only the de-identified ``Study``. Write-back re-identifies the
derived objects at the last moment with the in-process key kept by ``data.deid`` and only when the
admin enabled it (``[pacs] writeback_enabled``). A STOW batch is written to the outbox folder first and
deleted only once the PACS has every object, so a PACS outage loses nothing (``retry_outbox``; the folder itself is
``app.pacs_outbox.Outbox``, listed and pruned by ``m3 pacs outbox list|retry|drop``).
GET requests (idempotent) and refused connections are retried with exponential backoff by urllib3;
a POST that reached the PACS is never repeated automatically. Errors are ``PacsError`` with a message
for the clinician; no message or log line carries a patient identifier or a query value.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pydicom
import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from app.config import AppConfig, PacsConfig
from app.pacs_outbox import Outbox
from data.errors import M3Error

__all__ = [
    "PacsClient",
    "StudySummary",
    "StoreReceipt",
    "OutboxReport",
    "PacsError",
    "PacsUnavailableError",
    "WritebackDisabledError",
]

log = logging.getLogger(__name__)
# dicomweb-client and urllib3 log request URLs (which carry QIDO query values) and SOP UIDs: keep them quiet.
for _name in ("dicomweb_client", "urllib3.connectionpool"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

_RETRY_STATUS = (429, 500, 502, 503, 504)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^\d{8}(-\d{8})?$|^\d{8}-$|^-\d{8}$")
_STUDY_FIELDS = ("StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
# Creation dates of a derived object are real (set when m3 made it); keep them through re-identification.
_CREATION_DATES = ("InstanceCreationDate", "ContentDate", "SeriesDate")


class PacsError(M3Error):
    """A PACS operation failed. ``status`` is the HTTP status when the PACS answered, else ``None``."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PacsUnavailableError(PacsError):
    """The PACS could not be reached (refused, timed out, DNS) after the retries."""


class WritebackDisabledError(PacsError):
    """Write-back to the PACS is off in this server's configuration."""


@dataclass(repr=False)
class StudySummary:
    """One row of a PACS search. Holds identifiers (shown to the clinician who searched), so its
    ``repr`` hides them; never log the fields."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""  # YYYYMMDD
    accession: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()
    n_series: int | None = None
    n_instances: int | None = None

    def to_row(self) -> dict[str, Any]:
        """The search-table row for the app."""
        return {
            "patient_id": self.patient_id, "patient_name": self.patient_name, "date": self.study_date,
            "accession": self.accession, "description": self.description, "modalities": "/".join(self.modalities),
            "series": self.n_series, "instances": self.n_instances,
        }

    def __repr__(self) -> str:
        return f"StudySummary(<identifiers hidden>, modalities={'/'.join(self.modalities)}, instances={self.n_instances})"


@dataclass
class StoreReceipt:
    """What a STOW sent: how many objects, the (new) SOP Instance UIDs of the derived objects."""

    stored: int
    sop_instance_uids: list[str] = field(default_factory=list)
    batch: str = ""  # outbox batch name


@dataclass
class OutboxReport:
    sent: int = 0  # batches the PACS now has
    pending: int = 0  # batches still waiting
    errors: list[str] = field(default_factory=list)


class PacsClient:
    """DICOMweb client for one PACS (``dicomweb-client`` over a retrying ``requests`` session)."""

    def __init__(self, config: AppConfig | PacsConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.config = config.pacs if isinstance(config, AppConfig) else config
        if not self.config.url:
            raise PacsError("no PACS is configured: set [pacs] url (or $M3_PACS_URL) to the DICOMweb root, e.g. http://pacs:8042/dicom-web.")
        self.url = self.config.url.rstrip("/")
        session = requests.Session()
        retry = Retry(
            total=self.config.retries, connect=self.config.retries, read=self.config.retries, status=self.config.retries,
            backoff_factor=self.config.backoff_s, status_forcelist=_RETRY_STATUS, allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False, respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if self.config.username:
            session.auth = (self.config.username, self.config.password)
        session.verify = str(self.config.ca_bundle) if self.config.ca_bundle else True
        self._dicomweb = DICOMwebClient(url=self.url, session=session, timeout=(min(10.0, self.config.timeout_s), self.config.timeout_s))
        self._dicomweb.set_http_retry_params(retry=False)  # retries live in the session, for GET only
        self.outbox = Path(self.config.outbox_dir)

    # --- QIDO-RS ---------------------------------------------------------------------------------
    def search(
        self,
        patient_id: str | None = None,
        accession: str | None = None,
        date: str | dt.date | tuple[dt.date | str | None, dt.date | str | None] | None = None,
        modality: str | None = None,
        limit: int = 100,
    ) -> list[StudySummary]:
        """Studies matching every given filter (QIDO-RS ``/studies``); ``*`` wildcards as the PACS allows.

        date: ``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, a ``datetime.date``, or a ``(from, to)`` pair (either open).
        """
        filters: dict[str, str] = {}
        if patient_id:
            filters["PatientID"] = str(patient_id)
        if accession:
            filters["AccessionNumber"] = str(accession)
        if date:
            filters["StudyDate"] = _date_filter(date)
        if modality:
            filters["ModalitiesInStudy"] = str(modality).upper()
        if not filters:
            raise PacsError("a PACS search needs at least one of patient ID, accession number, date or modality.")
        rows = self._call("search", self._dicomweb.search_for_studies, search_filters=filters, fields=_STUDY_FIELDS, limit=limit)
        return [_summary(Dataset.from_json(row)) for row in rows]

    # --- WADO-RS ---------------------------------------------------------------------------------
    def retrieve(self, study_uid: str, dest: str | Path) -> Path:
        """Download every instance of a study into ``dest`` (``NNNNN.dcm`` files, original identifiers).

        The files hold PHI: give them to ``data.load_study`` and delete them (``load`` does both).
        A failure part-way removes what was written and raises ``PacsError``.
        """
        _check_uid(study_uid)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            for i, ds in enumerate(self._call("retrieve", self._dicomweb.iter_study, study_uid)):
                path = dest / f"{i:05d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                written.append(path)
        except (PacsError, requests.RequestException, OSError) as exc:
            for path in written:
                path.unlink(missing_ok=True)
            if isinstance(exc, PacsError):
                raise
            raise _translate(exc, "retrieve", self.url) from None
        if not written:
            raise PacsError("the PACS returned no images for this study; check it in the PACS viewer.")
        log.info("retrieved %d instances from the PACS", len(written))
        return dest

    def load(self, study_uid: str) -> Any:
        """Retrieve a study and ingest it like an upload: returns the de-identified ``data.Study``.
        The original files live only in a private temporary folder named after this process
        (``data.workdir.ingest_workdir``), deleted before returning and swept at start-up after a crash."""
        from data import load_study
        from data.workdir import ingest_workdir

        with ingest_workdir("m3-pacs-") as tmp:
            return load_study(self.retrieve(study_uid, tmp))

    # --- STOW-RS ---------------------------------------------------------------------------------
    def store(self, datasets: Iterable[Dataset], key: Any = None, verify_study: bool = True) -> StoreReceipt:
        """Send derived objects (DICOM SR, SEG) built on a de-identified study back to the PACS.

        Each dataset is re-identified with ``key`` (a ``data.deid.ReidentificationKey``; default: the
        in-process key of its de-identified Study Instance UID), so it lands in the original study.
        Refused with ``WritebackDisabledError`` unless write-back is enabled. The re-identified batch
        is written to the outbox first and deleted only when the PACS confirmed every object.
        """
        if not self.config.writeback_enabled:
            raise WritebackDisabledError(
                "sending results to the PACS is turned off on this server, so nothing was sent. An administrator "
                "can enable it with [pacs] writeback_enabled = true (or M3_PACS_WRITEBACK_ENABLED=1); meanwhile, "
                "download the SR / SEG files from the report panel."
            )
        originals = [_reidentify(ds, key) for ds in datasets]
        if not originals:
            raise PacsError("nothing to send: the list of SR / SEG objects is empty.")
        batch = self._write_batch(originals)
        if verify_study:
            for study_uid in {str(ds.StudyInstanceUID) for ds in originals}:
                try:
                    found = self._call("check", self._dicomweb.search_for_studies, search_filters={"StudyInstanceUID": study_uid}, limit=1)
                except PacsError as exc:
                    raise type(exc)(f"{exc} The results wait in the outbox ({batch.name}).", exc.status) from None
                if not found:
                    raise PacsError(
                        f"the original study is no longer on the PACS, so the results were not sent; they wait in "
                        f"the outbox ({batch.name}) for an administrator."
                    )
        return self._send_batch(batch)

    def retry_outbox(self, names: Iterable[str] | None = None) -> OutboxReport:
        """Send every batch waiting in the outbox (oldest first), or only those called ``names``; batches that
        fail stay there. A name that is not in the outbox raises ``app.pacs_outbox.OutboxError``."""
        report = OutboxReport()
        outbox = Outbox(self.outbox)
        batches = self.pending_batches() if names is None else [outbox.get(name).path for name in names]
        for batch in batches:
            try:
                self._send_batch(batch)
                report.sent += 1
            except PacsError as exc:
                report.pending += 1
                report.errors.append(str(exc))
        return report

    def pending_batches(self) -> list[Path]:
        """Outbox batch folders not yet confirmed by the PACS, oldest first."""
        return Outbox(self.outbox).pending()

    # --- private ---------------------------------------------------------------------------------
    def _write_batch(self, datasets: list[Dataset]) -> Path:
        return Outbox(self.outbox).add(datasets)

    def _send_batch(self, batch: Path) -> StoreReceipt:
        files = sorted(batch.glob("*.dcm"))
        datasets = [pydicom.dcmread(p) for p in files]
        state = Outbox.read_state(batch)
        state["attempts"] += 1
        state["last_attempt"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        try:
            response = self._call("store", self._dicomweb.store_instances, datasets)
        except PacsError as exc:
            state["last_error"] = str(exc)
            Outbox.write_state(batch, state)
            raise type(exc)(f"{exc} The results wait in the outbox ({batch.name}); an administrator sends them again with "
                            "`m3 pacs outbox retry` (or the app's retry button).", exc.status) from None
        stored = {str(item.ReferencedSOPInstanceUID) for item in getattr(response, "ReferencedSOPSequence", [])}
        failed = len(getattr(response, "FailedSOPSequence", []))
        for path, ds in zip(files, datasets):
            if str(ds.SOPInstanceUID) in stored:
                path.unlink()
        left = len(list(batch.glob("*.dcm")))
        if left or failed:
            state["last_error"] = f"the PACS refused {left} of {len(files)} objects"
            Outbox.write_state(batch, state)
            raise PacsError(
                f"the PACS refused {left} of {len(files)} objects; they wait in the outbox ({batch.name}). "
                "Ask the PACS administrator to check its log for the refused SOP instances."
            )
        shutil.rmtree(batch)
        log.info("stored %d objects on the PACS", len(files))
        return StoreReceipt(stored=len(files), sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets], batch=batch.name)

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one dicomweb-client call, turning transport and HTTP errors into ``PacsError``."""
        started = time.monotonic()
        try:
            result = fn(*args, **kwargs)
            return _guarded(result, action, self.url) if isinstance(result, Iterator) else result
        except requests.RequestException as exc:
            raise _translate(exc, action, self.url, self.config.retries) from None
        finally:
            log.debug("PACS %s took %.2f s", action, time.monotonic() - started)


def _guarded(items: Iterator[Any], action: str, url: str) -> Iterator[Any]:
    """A streamed response whose transport errors surface as ``PacsError``."""
    try:
        yield from items
    except requests.RequestException as exc:
        raise _translate(exc, action, url) from None


def _translate(exc: Exception, action: str, url: str, retries: int = 0) -> PacsError:
    what = {"search": "searching the PACS", "retrieve": "retrieving the study", "store": "sending results to the PACS",
            "check": "checking the original study on the PACS"}.get(action, action)
    tries = f" after {retries + 1} attempts" if retries and action != "store" else ""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code, reason = exc.response.status_code, exc.response.reason or ""
        if code in (401, 403):
            hint = "the PACS refused m3's credentials; ask the admin to check [pacs] username and $M3_PACS_PASSWORD."
        elif code == 404:
            hint = "the PACS does not have it (or the DICOMweb URL is wrong); check the study in the PACS viewer."
        elif 400 <= code < 500:
            hint = "the PACS rejected the request; ask the PACS administrator to check its log."
        else:
            hint = "the PACS had an internal problem or is overloaded; try again in a few minutes."
        tries = tries if code in _RETRY_STATUS else ""
        return PacsError(f"{what} failed: {url} answered {code} {reason}{tries}; {hint}", status=code)
    kind = "timed out" if isinstance(exc, requests.Timeout) else "is unreachable"
    # A failed send leaves its batch in the outbox (the caller says so); only a failed read changed nothing.
    unchanged = "" if action in ("store", "check") else " Nothing was changed."
    return PacsUnavailableError(
        f"{what} failed: the PACS at {url} {kind}{tries}; check that it is up and that [pacs] url is right.{unchanged}"
    )


def _reidentify(ds: Dataset, key: Any) -> Dataset:
    from data.deid import reidentification_key

    deid_uid = str(ds.get("StudyInstanceUID", ""))
    try:
        key = key or reidentification_key(deid_uid)
    except KeyError:
        raise PacsError(
            "these results belong to a study that was not loaded in this server session (its link to the original "
            "study lives in memory only), so they cannot be sent to the PACS; load the study from the PACS again."
        ) from None
    created = {k: ds.get(k) for k in _CREATION_DATES if k in ds}
    out = key.reidentify(ds)
    for keyword, value in created.items():
        setattr(out, keyword, value)
    if str(out.StudyInstanceUID) == deid_uid:
        raise PacsError("an object could not be linked to its original study (unknown Study Instance UID); it was not sent.")
    return out


def _summary(ds: Dataset) -> StudySummary:
    modalities = ds.get("ModalitiesInStudy", [])
    modalities = (modalities,) if isinstance(modalities, str) else tuple(str(m) for m in modalities)

    def number(keyword: str) -> int | None:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None

    return StudySummary(
        study_uid=str(ds.get("StudyInstanceUID", "")), patient_id=str(ds.get("PatientID", "") or ""),
        patient_name=str(ds.get("PatientName", "") or ""), study_date=str(ds.get("StudyDate", "") or ""),
        accession=str(ds.get("AccessionNumber", "") or ""), description=str(ds.get("StudyDescription", "") or ""),
        modalities=modalities, n_series=number("NumberOfStudyRelatedSeries"), n_instances=number("NumberOfStudyRelatedInstances"),
    )


def _date_filter(date: Any) -> str:
    def one(d: Any) -> str:
        if d is None or d == "":
            return ""
        return d.strftime("%Y%m%d") if isinstance(d, (dt.date, dt.datetime)) else str(d).replace("-", "")

    text = f"{one(date[0])}-{one(date[1])}" if isinstance(date, tuple) else one(date) if isinstance(date, dt.date) else str(date)
    if not _DATE.match(text):
        raise PacsError("a study date must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be open).")
    return text


def _check_uid(uid: str) -> None:
    if not _UID.match(str(uid)) or len(str(uid)) > 64:
        raise PacsError("a Study Instance UID must be digits and dots (at most 64 characters); pick the study from the search results.")

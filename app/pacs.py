"""The hospital PACS: find studies, pull one, send results back, over DICOMweb or DIMSE.

    client = PacsClient(config)                       # AppConfig or PacsConfig; [pacs] protocol picks the transport
    rows = client.search(patient_id="12345")          # list[StudySummary], shown to the clinician
    study = client.load(rows[0].study_uid)            # retrieve → data.load_study (de-identified) → raw files deleted
    ...                                               # SR / SEG built on the de-identified study
    client.store([sr, seg])                           # re-identified to the original study, then sent

The transport is ``app.pacs_dicomweb`` (QIDO-RS / WADO-RS / STOW-RS) or ``app.pacs_dimse`` (C-FIND / C-MOVE /
C-STORE); everything here is the same for both. Everything downstream of ``load`` sees only the de-identified
``Study``. Write-back re-identifies the derived objects at the last moment with the in-process key kept by
``data.deid`` and only when the admin enabled it (``[pacs] writeback_enabled``). A batch is written to the outbox
folder first and deleted only once the PACS has every object, so a PACS outage loses nothing (``retry_outbox``; the
folder itself is ``app.pacs_outbox.Outbox``, listed and pruned by ``m3 pacs outbox list|retry|drop``); a batch older
than ``[pacs] outbox_max_age_days`` is never sent. Errors are ``PacsError`` with a message for the clinician; no
message or log line carries a patient identifier or a query value.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import pydicom
from pydicom.dataset import Dataset

from app.config import AppConfig, PacsConfig
from app.pacs_errors import PacsError, PacsTlsError, PacsUnavailableError, WritebackDisabledError
from app.pacs_dicomweb import DicomwebTransport
from app.pacs_dimse import DimseTransport
from app.pacs_outbox import Outbox

__all__ = [
    "PacsClient",
    "PacsTransport",
    "StudySummary",
    "StoreReceipt",
    "OutboxReport",
    "PacsError",
    "PacsTlsError",
    "PacsUnavailableError",
    "WritebackDisabledError",
    "waiting_message",
]

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^\d{8}(-\d{8})?$|^\d{8}-$|^-\d{8}$")
# Creation dates of a derived object are real (set when m3 made it); keep them through re-identification.
_CREATION_DATES = ("InstanceCreationDate", "ContentDate", "SeriesDate")
_TRANSPORTS = {"dicomweb": DicomwebTransport, "dimse": DimseTransport}


class PacsTransport(Protocol):
    """How one protocol talks to the PACS (``DicomwebTransport``, ``DimseTransport``). Each raises ``PacsError``."""

    where: str  # the PACS's address for messages (no query values)

    def find_studies(self, filters: dict[str, str], limit: int, action: str = "search") -> list[Dataset]:
        """Study-level matches of ``filters`` (DICOM keyword → value), at most ``limit``."""

    def fetch_study(self, study_uid: str, dest: Path) -> list[Path]:
        """Write every instance of the study into ``dest`` (original identifiers); returns the files."""

    def send(self, datasets: list[Dataset]) -> frozenset[str]:
        """Store ``datasets``; returns the SOP Instance UIDs the PACS confirmed."""


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
    """What a send stored: how many objects, the (new) SOP Instance UIDs of the derived objects."""

    stored: int
    sop_instance_uids: list[str] = field(default_factory=list)
    batch: str = ""  # outbox batch name


@dataclass
class OutboxReport:
    sent: int = 0  # batches the PACS now has
    pending: int = 0  # batches still waiting
    expired: int = 0  # batches older than [pacs] outbox_max_age_days: not sent, waiting to be dropped
    errors: list[str] = field(default_factory=list)


class PacsClient:
    """One configured PACS, over the transport ``[pacs] protocol`` names."""

    def __init__(self, config: AppConfig | PacsConfig) -> None:
        self.config = config.pacs if isinstance(config, AppConfig) else config
        if not self.config.enabled:
            raise PacsError("no PACS is configured: set [pacs] url (or $M3_PACS_URL) to the DICOMweb root, e.g. "
                            "http://pacs:8042/dicom-web, or [pacs] protocol = \"dimse\" with host, port and called_ae_title.")
        self.transport: PacsTransport = _TRANSPORTS[self.config.protocol](self.config)
        self.url = self.transport.where
        self.outbox = Path(self.config.outbox_dir)

    # --- search ----------------------------------------------------------------------------------
    def search(
        self,
        patient_id: str | None = None,
        accession: str | None = None,
        date: str | dt.date | tuple[dt.date | str | None, dt.date | str | None] | None = None,
        modality: str | None = None,
        limit: int = 100,
    ) -> list[StudySummary]:
        """Studies matching every given filter (QIDO-RS ``/studies`` or a study-level C-FIND); ``*`` wildcards as
        the PACS allows.

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
        started = time.monotonic()
        rows = self.transport.find_studies(filters, limit)
        log.debug("PACS search took %.2f s", time.monotonic() - started)
        return [_summary(ds) for ds in rows]

    # --- retrieve --------------------------------------------------------------------------------
    def retrieve(self, study_uid: str, dest: str | Path) -> Path:
        """Download every instance of a study into ``dest`` (``NNNNN.dcm`` files, original identifiers).

        The files hold PHI: give them to ``data.load_study`` and delete them (``load`` does both).
        A failure part-way removes what was written and raises ``PacsError``.
        """
        _check_uid(study_uid)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.dcm"))
        try:
            written = self.transport.fetch_study(study_uid, dest)
        except (PacsError, OSError) as exc:
            for path in set(dest.glob("*.dcm")) - before:
                path.unlink(missing_ok=True)
            if isinstance(exc, PacsError):
                raise
            raise PacsError(f"retrieving the study failed: m3 could not write it to its temporary folder ({exc.strerror}); "
                            "ask the admin to check the disk space of the server.") from None
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

    # --- write-back ------------------------------------------------------------------------------
    def store(self, datasets: Iterable[Dataset], key: Any = None, verify_study: bool = True) -> StoreReceipt:
        """Send derived objects (DICOM SR, SEG) built on a de-identified study back to the PACS.

        Each dataset is re-identified with ``key`` (a ``data.deid.ReidentificationKey``; default: the
        in-process key of its de-identified Study Instance UID), so it lands in the original study.
        Refused with ``WritebackDisabledError`` unless write-back is enabled. The re-identified batch
        is written to the outbox first and deleted only when the PACS confirmed every object; any failure
        after that says the batch waits there and how to send it again.
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
        batch = Outbox(self.outbox).add(originals)
        if verify_study:
            for study_uid in {str(ds.StudyInstanceUID) for ds in originals}:
                try:
                    found = self.transport.find_studies({"StudyInstanceUID": study_uid}, 1, action="check")
                except PacsError as exc:
                    raise type(exc)(f"{exc} {waiting_message(batch.name)}", exc.status) from None
                if not found:
                    raise PacsError(f"the original study is no longer on the PACS, so the results were not sent. "
                                    f"{waiting_message(batch.name)}")
        return self._send_batch(batch)

    def retry_outbox(self, names: Iterable[str] | None = None) -> OutboxReport:
        """Send every batch waiting in the outbox (oldest first), or only those called ``names``; batches that
        fail stay there, and batches older than ``[pacs] outbox_max_age_days`` are not sent (counted as expired).
        A name that is not in the outbox raises ``app.pacs_outbox.OutboxError``."""
        report = OutboxReport()
        outbox = Outbox(self.outbox)
        batches = outbox.batches() if names is None else [outbox.get(name) for name in names]
        expired = {b.name for b in outbox.past_max_age(self.config.outbox_max_age_days)}
        for batch in batches:
            if batch.name in expired:
                report.expired += 1
                continue
            try:
                self._send_batch(batch.path)
                report.sent += 1
            except PacsError as exc:
                report.pending += 1
                report.errors.append(str(exc))
        return report

    def pending_batches(self) -> list[Path]:
        """Outbox batch folders not yet confirmed by the PACS (expired ones included), oldest first."""
        return Outbox(self.outbox).pending()

    # --- private ---------------------------------------------------------------------------------
    def _send_batch(self, batch: Path) -> StoreReceipt:
        files = sorted(batch.glob("*.dcm"))
        datasets = [pydicom.dcmread(p) for p in files]
        state = Outbox.read_state(batch)
        state["attempts"] += 1
        state["last_attempt"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        try:
            stored = self.transport.send(datasets)
        except PacsError as exc:
            _remove_stored(files, datasets, exc.stored)
            state["last_error"] = str(exc)
            Outbox.write_state(batch, state)
            raise type(exc)(f"{exc} {waiting_message(batch.name)}", exc.status) from None
        _remove_stored(files, datasets, stored)
        left = len(list(batch.glob("*.dcm")))
        if left:
            state["last_error"] = f"the PACS refused {left} of {len(files)} objects"
            Outbox.write_state(batch, state)
            raise PacsError(f"the PACS refused {left} of {len(files)} objects (ask the PACS administrator to check its log "
                            f"for the refused SOP instances). {waiting_message(batch.name)}")
        shutil.rmtree(batch)
        log.info("stored %d objects on the PACS", len(files))
        return StoreReceipt(stored=len(files), sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets], batch=batch.name)


def waiting_message(batch: str) -> str:
    """The one sentence every failed send ends with, whatever the protocol: where the results are and how to
    send them again."""
    return (f"The results wait in the outbox ({batch}): press Retry sending once the PACS is back, or an "
            f"administrator runs `m3 pacs outbox retry {batch}`.")


def _remove_stored(files: list[Path], datasets: list[Dataset], stored: frozenset[str]) -> None:
    """Delete the outbox files of the objects the PACS confirmed."""
    for path, ds in zip(files, datasets):
        if str(ds.SOPInstanceUID) in stored:
            path.unlink()


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

"""The PACS over DIMSE, for a PACS without DICOMweb: C-FIND (study level), C-MOVE to m3's own storage SCP, C-STORE,
with pynetdicom (``app.pacs.PacsClient`` picks it for ``[pacs] protocol = "dimse"``).

    [pacs] protocol = "dimse", host / port / called_ae_title (the PACS), ae_title (m3), move_ae_title / move_port

A C-MOVE asks the PACS to send the study to ``move_ae_title`` (default ``ae_title``): m3 listens on ``move_port``
for that retrieve only, accepts images only from ``called_ae_title`` and only of the asked study, and writes them
into the caller's private folder; one retrieve per port runs at a time in this process. An association that
cannot be set up (refused, timed out) is tried again ``retries`` times with backoff, so nothing was sent yet;
a request the PACS answered is never repeated. Errors are ``app.pacs_errors.PacsError`` naming the DIMSE status and
what to do; no message or log line carries a query value (pynetdicom's own log, which dumps identifiers, is off).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, DEFAULT_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as _FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as _MOVE
from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS, QR_MOVE_SERVICE_CLASS_STATUS, STORAGE_SERVICE_CLASS_STATUS

from app.config import PacsConfig
from app.pacs_errors import PacsError, PacsUnavailableError, action_phrase

__all__ = ["DimseTransport"]

logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # it logs C-FIND identifiers (query values) and datasets

_RETURN_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber", "StudyDescription",
                "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_PENDING = (0xFF00, 0xFF01)
_STORED = (0x0000, 0xB000, 0xB006, 0xB007)  # success, or stored with a coercion / elements discarded
_STATUS_TEXT = {"search": QR_FIND_SERVICE_CLASS_STATUS, "check": QR_FIND_SERVICE_CLASS_STATUS,
                "retrieve": QR_MOVE_SERVICE_CLASS_STATUS, "store": STORAGE_SERVICE_CLASS_STATUS}
_MOVE_LOCKS: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)  # one C-MOVE per local port at a time


class DimseTransport:
    """One PACS's DICOM service (``config.host``:``config.port``, AE ``config.called_ae_title``)."""

    def __init__(self, config: PacsConfig) -> None:
        self.config = config
        self.where = f"{config.called_ae_title}@{config.host}:{config.port}"  # named in messages (no query)
        self.move_ae_title = config.move_ae_title or config.ae_title

    def find_studies(self, filters: dict[str, str], limit: int, action: str = "search") -> list[Dataset]:
        """Study-level C-FIND matches of ``filters`` (DICOM keywords → values), at most ``limit``."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for keyword in _RETURN_KEYS:
            setattr(query, keyword, filters.get(keyword, ""))
        rows: list[Dataset] = []
        with self._association(action, _FIND) as assoc:
            since = time.monotonic()
            for status, identifier in assoc.send_c_find(query, _FIND):
                if self._check(status, action, since) in _PENDING and identifier is not None:
                    rows.append(identifier)
                since = time.monotonic()
                if len(rows) >= limit:
                    assoc.abort()  # no C-CANCEL round trip: the association ends here
                    break
        return rows

    def fetch_study(self, study_uid: str, dest: Path) -> list[Path]:
        """C-MOVE the study to m3's storage SCP, which writes it into ``dest`` as ``NNNNN.dcm``; returns the files."""
        written: list[Path] = []
        lock = threading.Lock()

        def on_store(event: Any) -> int:
            if str(event.dataset.get("StudyInstanceUID", "")) != study_uid:
                return 0xC000  # not what m3 asked for: refused, never written
            with lock:
                path = dest / f"{len(written):05d}.dcm"
                written.append(path)
            path.write_bytes(event.encoded_dataset())
            return 0x0000

        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study_uid
        with _MOVE_LOCKS[self.config.move_port], self._storage_scp(on_store):
            final = None
            with self._association("retrieve", _MOVE) as assoc:
                since = time.monotonic()
                for status, _ in assoc.send_c_move(query, self.move_ae_title, _MOVE):
                    self._check(status, "retrieve", since)
                    final, since = status, time.monotonic()
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0) if final is not None else 0
        if failed:
            raise PacsError(f"retrieving the study failed: the PACS at {self.where} could not send {failed} of its images "
                            f"to m3; ask the PACS administrator to check its log.", status=int(final.Status))
        return written

    def send(self, datasets: list[Dataset]) -> frozenset[str]:
        """C-STORE ``datasets``; returns the SOP Instance UIDs the PACS stored (refused ones are missing). A failure
        part-way raises ``PacsError`` whose ``stored`` names what the PACS already has."""
        stored: set[str] = set()
        contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
        with self._association("store", *contexts) as assoc:
            for ds in datasets:
                try:
                    code = self._check(assoc.send_c_store(ds), "store", time.monotonic(), refusal_ok=True)
                except PacsError as exc:
                    exc.stored = frozenset(stored)
                    raise
                if code in _STORED:
                    stored.add(str(ds.SOPInstanceUID))
        return frozenset(stored)

    # --- private ---------------------------------------------------------------------------------
    @contextmanager
    def _association(self, action: str, *contexts: Any) -> Iterator[Any]:
        """An association with the PACS offering ``contexts`` (SOP classes, or ``(SOP class, transfer syntax)``
        pairs); one that cannot be set up is tried again ``retries`` times with backoff."""
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        ae.connection_timeout = min(10.0, self.config.timeout_s)
        for context in contexts:
            if isinstance(context, tuple):  # an object to store: its own syntax, else any uncompressed one
                sop_class, syntax = context
                ae.add_requested_context(sop_class, [syntax, *(s for s in DEFAULT_TRANSFER_SYNTAXES if s != syntax)]
                                         if not UID(syntax).is_compressed else [syntax])
            else:
                ae.add_requested_context(context)
        what = action_phrase(action)
        for attempt in range(self.config.retries + 1):
            assoc = ae.associate(self.config.host, self.config.port, ae_title=self.config.called_ae_title)
            if assoc.is_established:
                break
            if assoc.is_rejected:
                raise PacsError(
                    f"{what} failed: the PACS at {self.where} refused m3's association (m3's AE title "
                    f"{self.config.ae_title!r}, the PACS's {self.config.called_ae_title!r}); ask the PACS administrator to "
                    "register m3's AE title and this server's address, and check [pacs] called_ae_title."
                )
            if attempt < self.config.retries:
                time.sleep(self.config.backoff_s * 2**attempt)
        else:
            tries = f" after {self.config.retries + 1} attempts" if self.config.retries else ""
            unchanged = "" if action in ("store", "check") else " Nothing was changed."
            raise PacsUnavailableError(f"{what} failed: the PACS at {self.where} is unreachable{tries}; check that it is up "
                                       f"and that [pacs] host and port are right.{unchanged}")
        try:
            if not assoc.accepted_contexts:
                raise PacsError(f"{what} failed: the PACS at {self.where} accepted the association but none of the "
                                "services m3 asked for; ask the PACS administrator to allow them for m3's AE title.")
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    @contextmanager
    def _storage_scp(self, on_store: Any) -> Iterator[None]:
        """m3's storage SCP on ``move_port`` for the duration of one C-MOVE, taking images only from the PACS."""
        ae = AE(ae_title=self.move_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        for context in StoragePresentationContexts:  # every storage class, in any transfer syntax pydicom can read
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = [self.config.called_ae_title]
        try:
            server = ae.start_server(("", self.config.move_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except OSError as exc:
            raise PacsError(f"retrieving the study failed: m3 cannot listen on [pacs] move_port {self.config.move_port} "
                            f"for the images ({exc.strerror}); free the port or choose another one (and tell the PACS "
                            "administrator).") from None
        try:
            yield
        finally:
            server.shutdown()

    def _check(self, status: Dataset, action: str, since: float, refusal_ok: bool = False) -> int:
        """The status code of one DIMSE response (``since``: when it was asked for, ``time.monotonic()``);
        ``PacsError`` for a failure (unless ``refusal_ok``) or no answer."""
        what = action_phrase(action)
        unchanged = "" if action in ("store", "check") else " Nothing was changed."
        if "Status" not in status:  # pynetdicom's empty status: the association ended or timed out
            if time.monotonic() - since < 0.9 * self.config.timeout_s:  # the PACS hung up on the request
                raise PacsError(
                    f"{what} failed: the PACS at {self.where} ended the association without answering; it may not allow "
                    f"this request from m3's AE title {self.config.ae_title!r}. Ask the PACS administrator to register "
                    f"that AE title (with this server's address) for queries and retrieves.{unchanged}")
            raise PacsUnavailableError(f"{what} failed: the PACS at {self.where} stopped answering (no reply within "
                                       f"{self.config.timeout_s:g} s).{unchanged}")
        code = int(status.Status)
        if code in _PENDING or code in _STORED or (refusal_ok and code not in (0xA700, 0xA701, 0xA702)):
            return code
        category, meaning = _STATUS_TEXT[action].get(code, ("Failure", "unknown status"))
        if action == "retrieve" and (code == 0xA801 or code >= 0xC000):
            hint = (f"the PACS may not know m3's move destination {self.move_ae_title!r} or could not reach it; ask the "
                    f"PACS administrator to register that AE title with this server's address and port "
                    f"{self.config.move_port} ([pacs] move_port), and to check its log.")
        elif 0xA700 <= code <= 0xA7FF:
            hint = "the PACS is out of resources; try again in a few minutes."
        else:
            hint = "ask the PACS administrator to check its log."
        raise PacsError(f"{what} failed: the PACS at {self.where} answered status 0x{code:04X} ({category}: {meaning}); {hint}",
                        status=code)

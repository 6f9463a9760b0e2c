"""The PACS over DICOMweb: QIDO-RS search, WADO-RS retrieve, STOW-RS store, with ``dicomweb-client`` over a
retrying ``requests`` session (``app.pacs.PacsClient`` picks it for ``[pacs] protocol = "dicomweb"``).

Login: HTTP basic (``[pacs] username`` + ``$M3_PACS_PASSWORD``) or a bearer token (``$M3_PACS_TOKEN``); TLS:
``ca_bundle`` (the hospital CA) and mutual TLS with ``client_cert`` + ``client_key``. GET requests (idempotent)
and refused connections are retried with exponential backoff by urllib3; a POST that reached the PACS and a TLS
handshake that failed are never repeated. Errors are ``app.pacs_errors.PacsError`` (TLS ones ``PacsTlsError``) naming
the cause; no message carries a query value (they travel in URLs, which are never logged).
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import requests
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from app.config import PacsConfig
from app.pacs_errors import PacsError, PacsTlsError, PacsUnavailableError, action_phrase

__all__ = ["DicomwebTransport", "STUDY_FIELDS"]

# dicomweb-client and urllib3 log request URLs (which carry QIDO query values) and SOP UIDs: keep them quiet.
for _name in ("dicomweb_client", "urllib3.connectionpool"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

STUDY_FIELDS = ("StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_RETRY_STATUS = (429, 500, 502, 503, 504)
# OpenSSL's words for each TLS failure (ssl module reasons and TLS alerts), checked in this order.
_TLS_CAUSES = (
    (("Hostname mismatch", "IP address mismatch"),
     "the PACS's certificate does not name the host in [pacs] url ({host}); use the host name written on its "
     "certificate, or ask the PACS administrator for a certificate that names {host}."),
    (("certificate has expired",),
     "the PACS's certificate has expired; ask the PACS administrator to renew it."),
    (("CERTIFICATE_VERIFY_FAILED",),
     "the PACS's certificate is not signed by a trusted CA; set [pacs] ca_bundle to the hospital CA file (PEM)."),
    (("CERTIFICATE_REQUIRED", "certificate required", "BAD_CERTIFICATE", "bad certificate", "UNKNOWN_CA", "unknown ca",
      "CERTIFICATE_UNKNOWN", "certificate unknown"),
     "the PACS refused m3's client certificate (or got none); check [pacs] client_cert / client_key and that the PACS "
     "trusts the CA that signed it."),
)


class DicomwebTransport:
    """One PACS's DICOMweb root (``config.url``) with its login and TLS settings."""

    def __init__(self, config: PacsConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        self.where = config.url.rstrip("/")  # named in messages (holds no query)
        session = requests.Session()
        retry = Retry(
            total=config.retries, connect=config.retries, read=config.retries, status=config.retries, other=0,
            backoff_factor=config.backoff_s, status_forcelist=_RETRY_STATUS, allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False, respect_retry_after_header=True,
        )
        adapter = _TrustStoreAdapter(str(config.ca_bundle) if config.ca_bundle else None, max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if config.username:
            session.auth = (config.username, config.password)
        elif config.token:
            session.headers["Authorization"] = f"Bearer {config.token}"
        if config.client_cert:
            session.cert = (str(config.client_cert), str(config.client_key))
        self._dicomweb = DICOMwebClient(url=self.where, session=session, timeout=(min(10.0, config.timeout_s), config.timeout_s))
        self._dicomweb.set_http_retry_params(retry=False)  # retries live in the session, for GET only

    def find_studies(self, filters: dict[str, str], limit: int, action: str = "search") -> list[Dataset]:
        """Study-level matches of ``filters`` (DICOM keywords → values), at most ``limit``, as datasets."""
        rows = self._call(action, self._dicomweb.search_for_studies, search_filters=filters, fields=STUDY_FIELDS, limit=limit)
        return [Dataset.from_json(row) for row in rows]

    def fetch_study(self, study_uid: str, dest: Path) -> list[Path]:
        """Write every instance of the study into ``dest`` as ``NNNNN.dcm``; returns the files."""
        written = []
        for i, ds in enumerate(self._call("retrieve", self._dicomweb.iter_study, study_uid)):
            written.append(dest / f"{i:05d}.dcm")
            ds.save_as(written[-1], enforce_file_format=True)
        return written

    def send(self, datasets: list[Dataset]) -> frozenset[str]:
        """STOW-RS ``datasets``; returns the SOP Instance UIDs the PACS confirmed (refused ones are missing)."""
        response = self._call("store", self._dicomweb.store_instances, datasets)
        return frozenset(str(item.ReferencedSOPInstanceUID) for item in getattr(response, "ReferencedSOPSequence", []))

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one dicomweb-client call, turning transport and HTTP errors into ``PacsError``."""
        try:
            result = fn(*args, **kwargs)
            return self._guarded(result, action) if isinstance(result, Iterator) else result
        except requests.RequestException as exc:
            raise self._translate(exc, action) from None

    def _guarded(self, items: Iterator[Any], action: str) -> Iterator[Any]:
        """A streamed response whose transport errors surface as ``PacsError``."""
        try:
            yield from items
        except requests.RequestException as exc:
            raise self._translate(exc, action) from None

    def _translate(self, exc: requests.RequestException, action: str) -> PacsError:
        what, retries = action_phrase(action), self.config.retries
        tries = f" after {retries + 1} attempts" if retries and action != "store" else ""
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            code, reason = exc.response.status_code, exc.response.reason or ""
            if code in (401, 403):
                login = ("$M3_PACS_TOKEN (the bearer token)" if self.config.token else
                         "[pacs] username and $M3_PACS_PASSWORD" if self.config.username else
                         "the login: m3 sent none ([pacs] username + $M3_PACS_PASSWORD, or $M3_PACS_TOKEN)")
                hint = f"the PACS refused m3's credentials; ask the admin to check {login}."
            elif code == 404:
                hint = "the PACS does not have it (or the DICOMweb URL is wrong); check the study in the PACS viewer."
            elif 400 <= code < 500:
                hint = "the PACS rejected the request; ask the PACS administrator to check its log."
            else:
                hint = "the PACS had an internal problem or is overloaded; try again in a few minutes."
            tries = tries if code in _RETRY_STATUS else ""
            return PacsError(f"{what} failed: {self.where} answered {code} {reason}{tries}; {hint}", status=code)
        # A failed send leaves its batch in the outbox (the caller says so); only a failed read changed nothing.
        unchanged = "" if action in ("store", "check") else " Nothing was changed."
        if tls := _tls_cause(exc, self.where):
            return PacsTlsError(f"{what} failed: the TLS connection to {self.where} was refused: {tls}{unchanged}")
        kind = "timed out" if isinstance(exc, requests.Timeout) else "is unreachable"
        return PacsUnavailableError(
            f"{what} failed: the PACS at {self.where} {kind}{tries}; check that it is up and that [pacs] url is right.{unchanged}"
        )


class _TrustStoreAdapter(HTTPAdapter):
    """Verifies the PACS against ``ca_bundle`` when one is set. requests lets $REQUESTS_CA_BUNDLE override a session's
    ``verify`` (psf/requests#3829), so the setting is applied here, on every request."""

    def __init__(self, ca_bundle: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ca_bundle = ca_bundle

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if self.ca_bundle:
            kwargs["verify"] = self.ca_bundle
        return super().send(request, **kwargs)


def _tls_cause(exc: requests.RequestException, url: str) -> str | None:
    """What went wrong in a TLS handshake, for an admin; ``None`` when ``exc`` is no TLS failure. Only the ``ssl``
    errors are read: the others name the request URL, whose query may hold anything."""
    failures = [e for e in _chain(exc) if isinstance(e, ssl.SSLError)]
    if not failures:
        return None
    text = " ".join(f"{e.reason} {e}" for e in failures)
    host = urlparse(url).hostname or url
    for words, cause in _TLS_CAUSES:
        if any(word in text for word in words):
            return cause.format(host=host)
    return "the handshake failed; check [pacs] ca_bundle, client_cert and client_key against the PACS's TLS settings."


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its arguments that are exceptions, its causes and contexts (urllib3 nests the ``ssl`` error)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [a for a in e.args if isinstance(a, BaseException)]
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__]
        todo = [t for t in todo if isinstance(t, BaseException)]

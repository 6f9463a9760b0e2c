"""Errors of the app's PACS connection, shared by the client (``app.pacs``) and its transports (``app.pacs_dicomweb``,
``app.pacs_dimse``). Every message is for a clinician or an admin to act on and never carries a patient identifier
or a query value."""

from __future__ import annotations

from data.errors import M3Error

__all__ = ["PacsError", "PacsUnavailableError", "PacsTlsError", "WritebackDisabledError", "action_phrase"]

_ACTIONS = {"search": "searching the PACS", "retrieve": "retrieving the study", "store": "sending results to the PACS",
            "check": "checking the original study on the PACS"}


class PacsError(M3Error):
    """A PACS operation failed. ``status`` is the HTTP status (DICOMweb) or the DIMSE status code when the PACS
    answered, else ``None``; ``stored`` holds the SOP Instance UIDs the PACS confirmed before a send failed."""

    def __init__(self, message: str, status: int | None = None, stored: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.status = status
        self.stored = stored


class PacsUnavailableError(PacsError):
    """The PACS could not be reached (refused, timed out, DNS) after the retries."""


class PacsTlsError(PacsError):
    """The TLS handshake with the PACS failed: an untrusted server certificate, a host name the certificate does
    not name, or m3's client certificate missing or refused."""


class WritebackDisabledError(PacsError):
    """Write-back to the PACS is off in this server's configuration."""


def action_phrase(action: str) -> str:
    """``"search"`` → ``"searching the PACS"``: how a message names what failed."""
    return _ACTIONS.get(action, action)

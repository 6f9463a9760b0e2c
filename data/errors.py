"""The base of m3's errors, and the errors raised by ingest. Messages name the file (relative to the upload) and the
problem, never a header value."""

from __future__ import annotations

__all__ = ["M3Error", "IngestError"]


class M3Error(Exception):
    """Base of every error m3 raises on purpose. Its message is written for whoever must act on it (a clinician, an
    administrator, a researcher): context, what was expected, what was found, what to do. The ``m3`` command prints
    it as one line; anything else is a bug and keeps its traceback."""


class IngestError(M3Error):
    """A file or upload that could not be loaded.

    ``path`` is the file name relative to the upload, shown to the uploader and never logged (it may
    name the patient); ``None`` when the error concerns the whole upload (a limit, the server's disk).
    ``reason`` says what was expected, what was found and what to do.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)

"""The PACS outbox: each STOW batch is written here before it is sent and removed once the PACS has every object.

    outbox = Outbox(config.pacs.outbox_dir)
    outbox.batches()                       # list[OutboxBatch], oldest first: name, age, objects waiting, attempts, last error
    outbox.drop("20250101T080000-1a2b3c4d") # an administrator gives up on a batch (its files are deleted)
    outbox.expired(max_age_days=7)         # batches waiting longer than that (``m3 pacs outbox drop --older-than 7``)
    outbox.past_max_age(config.pacs.outbox_max_age_days)  # never sent (``m3 pacs outbox drop --expired``); 0 = none

A batch is a folder ``<UTC time>-<8 hex>`` holding ``NNN.dcm`` (re-identified objects, mode 0600) and ``batch.json``
(objects, attempts, last error, last attempt). Nothing here reads the DICOM files: listing a batch shows no patient
identifier. Sending lives in ``app.pacs.PacsClient`` (``store``, ``retry_outbox``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from data.errors import M3Error

__all__ = ["STATE_FILE", "Outbox", "OutboxBatch", "OutboxError"]

STATE_FILE = "batch.json"
_NAME = re.compile(r"^(\d{8}T\d{6})-[0-9a-f]{8}$")


class OutboxError(M3Error):
    """An outbox batch that is not there, or a request the outbox cannot carry out."""


@dataclass
class OutboxBatch:
    """One batch waiting in the outbox (no patient identifiers: counts, times and the last transport error)."""

    name: str
    path: Path
    created: dt.datetime  # UTC, when the batch was written (batch.json; older batches: from the name)
    objects: int  # objects still waiting (the PACS may have taken some of a partly refused batch)
    attempts: int
    last_error: str = ""
    last_attempt: str = ""  # ISO time (UTC) of the last send, "" when never tried

    def age_days(self, now: dt.datetime | None = None) -> float:
        """Days since the batch was written."""
        now = now or dt.datetime.now(dt.timezone.utc)
        return (now - self.created).total_seconds() / 86400

    def to_json(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """The listing's JSON object (``m3 pacs outbox list --json``)."""
        row = {k: v for k, v in asdict(self).items() if k != "path"}
        return {**row, "created": self.created.isoformat(timespec="seconds"), "age_days": round(self.age_days(now), 2)}


class Outbox:
    """The batches in folder ``folder`` (created on the first ``add``, mode 0700)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def add(self, datasets: Iterable[Dataset]) -> Path:
        """Write ``datasets`` as a new batch (files readable by the service user only); returns its folder."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = dt.datetime.now(dt.timezone.utc)
        batch = self.folder / f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        batch.mkdir(mode=0o700)
        n = 0
        for n, ds in enumerate(datasets, start=1):
            path = batch / f"{n - 1:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            os.chmod(path, 0o600)  # re-identified: readable by the service user only
        self.write_state(batch, {"objects": n, "attempts": 0, "last_error": "", "last_attempt": "", "created": now.isoformat()})
        return batch

    def pending(self) -> list[Path]:
        """Batch folders not yet confirmed by the PACS, oldest first."""
        return [b.path for b in self.batches()]

    def batches(self) -> list[OutboxBatch]:
        """Every waiting batch with its counts and last error, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [self._describe(p) for p in self.folder.iterdir() if p.is_dir() and (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda b: (b.created, b.name))

    def get(self, name: str) -> OutboxBatch:
        """The batch called ``name``; ``OutboxError`` naming what to do when there is none."""
        batch = next((b for b in self.batches() if b.name == name), None)  # only a batch folder of this outbox
        if batch is None:
            raise OutboxError(f"the outbox {self.folder} has no batch {name!r}; batch names look like 20250101T080000-1a2b3c4d. "
                              "`m3 pacs outbox list` shows the waiting ones.")
        return batch

    def drop(self, name: str) -> OutboxBatch:
        """Delete batch ``name`` and its objects (they will not be sent); returns what was dropped."""
        batch = self.get(name)
        shutil.rmtree(batch.path)
        return batch

    def expired(self, max_age_days: float, now: dt.datetime | None = None) -> list[OutboxBatch]:
        """Batches written more than ``max_age_days`` ago, oldest first."""
        if max_age_days < 0:
            raise OutboxError(f"the age limit must be >= 0 days, got {max_age_days}.")
        return [b for b in self.batches() if b.age_days(now) > max_age_days]

    def past_max_age(self, max_age_days: float, now: dt.datetime | None = None) -> list[OutboxBatch]:
        """The batches ``[pacs] outbox_max_age_days`` expires (never sent, dropped with ``m3 pacs outbox drop
        --expired``): those older than ``max_age_days``; none when it is 0 (no expiry)."""
        return self.expired(max_age_days, now) if max_age_days > 0 else []

    @staticmethod
    def read_state(batch: Path) -> dict[str, Any]:
        """A batch's ``batch.json``."""
        return json.loads((batch / STATE_FILE).read_text())

    @staticmethod
    def write_state(batch: Path, state: dict[str, Any]) -> None:
        """Replace a batch's ``batch.json`` (atomically: a crash leaves the old or the new state)."""
        tmp = batch / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, batch / STATE_FILE)

    def _describe(self, path: Path) -> OutboxBatch:
        state = self.read_state(path)
        match = _NAME.match(path.name)
        if state.get("created"):  # to the microsecond: batches of the same second keep their order
            created = dt.datetime.fromisoformat(state["created"])
        elif match:
            created = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.timezone.utc)
        else:  # a folder named by hand: its modification time
            created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
        return OutboxBatch(name=path.name, path=path, created=created, objects=len(list(path.glob("*.dcm"))),
                           attempts=int(state.get("attempts", 0)), last_error=str(state.get("last_error", "")),
                           last_attempt=str(state.get("last_attempt", "")))

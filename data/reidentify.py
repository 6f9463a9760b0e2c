"""Pseudonyms and the way back: UID remapping, date shifts and the in-process re-identification keys.

UIDs are replaced by ``2.25.<int>`` UIDs from an HMAC-SHA256 with a secret key drawn per process, so one
original UID maps to the same new UID every time in this process and to an unrelated one in the next.
A :class:`ReidentificationKey` per de-identified study keeps the original identity, the UID map and the
date shift in memory, for writing results back to the hospital's PACS; it is never logged, printed or
pickled, and the keyring forgets the oldest studies beyond a fixed size.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

__all__ = ["ReidentificationKey", "remap_uid", "shift_date", "reidentification_key", "forget_key",
           "pseudonymise_uids", "note_derived_uid", "key_for"]

_PROCESS_SECRET = secrets.token_bytes(32)  # new every process: UID maps and date shifts are unlinkable across runs
_IDENTITY_KEPT = (  # attributes a write-back restores (stored in the ReidentificationKey, never elsewhere)
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence",
    "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDate", "StudyTime", "StudyDescription",
    "InstitutionName",
)
# the attributes whose words name the patient (``ReidentificationKey.identity_words``)
_IDENTITY_WORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName")
_KEYRING_SIZE = 256


class ReidentificationKey:
    """Original identity of one study, for writing results back to the hospital's PACS.

    Holds the original patient/study attributes, the de-identified → original UID map and the date
    shift. ``repr`` shows counts only; pickling is refused so it cannot be written anywhere by accident.
    """

    __slots__ = ("study_uid", "_uids", "_identity", "_shift_days", "_lock")

    def __init__(self, study_uid: str, shift_days: int) -> None:
        self.study_uid = study_uid  # de-identified
        self._uids: dict[str, str] = {}
        self._identity: dict[str, DataElement] = {}
        self._shift_days = shift_days
        self._lock = threading.Lock()

    def original_uid(self, deid_uid: str) -> str:
        """The original UID behind a de-identified one (``KeyError`` if this study never had it)."""
        return self._uids[deid_uid]

    def reidentify(self, dataset: Dataset) -> Dataset:
        """A copy of ``dataset`` (e.g. a derived SEG or SR) with original UIDs, identity and dates restored."""
        out = copy.deepcopy(dataset)

        def restore(ds: Dataset, elem: DataElement) -> None:
            if elem.VR == "UI" and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                mapped = [self._uids.get(str(v), str(v)) for v in values]
                elem.value = mapped if elem.VM > 1 else mapped[0]
            elif elem.VR in ("DA", "DT") and elem.value and self._shift_days:
                shifted = [shift_date(str(v), -self._shift_days) for v in (elem.value if elem.VM > 1 else [elem.value])]
                elem.value = [v for v in shifted if v] if elem.VM > 1 else (shifted[0] or "")

        out.walk(restore)
        if getattr(out, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in out.file_meta:
            uid = str(out.file_meta.MediaStorageSOPInstanceUID)
            out.file_meta.MediaStorageSOPInstanceUID = self._uids.get(uid, uid)
        for keyword, elem in self._identity.items():
            out[elem.tag] = copy.deepcopy(elem)
        for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                        "LongitudinalTemporalInformationModified"):
            if keyword in out:
                del out[keyword]
        return out

    def record_uid(self, deid_uid: str, original: str) -> None:
        """Remember that ``deid_uid`` stands for ``original``."""
        with self._lock:
            self._uids[deid_uid] = original

    def record_identity(self, ds: Dataset) -> None:
        """Keep the original patient / study attributes of ``ds`` (first value seen wins)."""
        with self._lock:
            for keyword in _IDENTITY_KEPT:
                if keyword not in self._identity and keyword in ds:
                    try:
                        self._identity[keyword] = copy.deepcopy(ds[keyword])
                    except (MemoryError, KeyboardInterrupt):
                        raise
                    except Exception:  # a malformed value cannot be written back either: not kept
                        continue

    def identity_words(self) -> list[str]:
        """The words (3+ characters) of the patient's name, IDs, birth date, accession number and referring
        physician, longest first: what free text about this study must not carry (``data.deid_text``). For masking
        only; never write them anywhere."""
        words: set[str] = set()
        with self._lock:
            for keyword in _IDENTITY_WORDS:
                elem = self._identity.get(keyword)
                if elem is not None and elem.value:
                    values = elem.value if elem.VM > 1 else [elem.value]
                    words.update(w for v in values for w in re.split(r"[\^\s,=/]+", str(v)) if len(w) >= 3)
        return sorted(words, key=len, reverse=True)

    def __repr__(self) -> str:
        return f"ReidentificationKey(study=…{self.study_uid[-8:]}, uids={len(self._uids)}, identity=<redacted>)"

    def __reduce__(self):
        raise TypeError("a ReidentificationKey stays in the ingest process: it cannot be pickled or copied out.")


def remap_uid(uid: str, secret: bytes | None = None) -> str:
    """The de-identified ``2.25.<int>`` UID for ``uid`` (HMAC-SHA256 with the process secret, 128 bits)."""
    digest = hmac.new(secret or _PROCESS_SECRET, b"uid:" + str(uid).strip().encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def reidentification_key(study_uid: str) -> ReidentificationKey:
    """The key for a de-identified Study Instance UID that was de-identified in this process."""
    with _KEYRING_LOCK:
        if study_uid not in _KEYRING:
            raise KeyError(f"no re-identification key for study …{study_uid[-8:]}: it was not ingested in this process "
                           "(keys live in memory only); ingest the study again to write results back.")
        _KEYRING.move_to_end(study_uid)
        return _KEYRING[study_uid]


def forget_key(study_uid: str) -> None:
    """Drop a study's re-identification key (e.g. when its session closes)."""
    with _KEYRING_LOCK:
        _KEYRING.pop(study_uid, None)


def pseudonymise_uids(uids: list[str], original_study_uid: str, secret: bytes | None = None) -> list[str]:
    """Remap many UIDs of one study at once, recording each in that study's re-identification key."""
    new = [remap_uid(u, secret) for u in uids]
    key = key_for(remap_uid(original_study_uid, secret), 0) if original_study_uid else None
    if key is not None:
        with key._lock:
            key._uids.update(zip(new, uids))
    return new


def note_derived_uid(deid_uid: str, original_uid: str, original_study_uid: str, secret: bytes | None = None) -> None:
    """Record that a UID made by ingest (e.g. a split series) stands for ``original_uid`` at write-back."""
    if original_study_uid:
        key_for(remap_uid(original_study_uid, secret), 0).record_uid(deid_uid, original_uid)


def key_for(deid_study_uid: str, shift: int) -> ReidentificationKey | None:
    """The study's key, created with ``shift`` days if it is new (``None`` without a study UID)."""
    if not deid_study_uid:
        return None
    with _KEYRING_LOCK:
        key = _KEYRING.get(deid_study_uid)
        if key is None:
            key = _KEYRING[deid_study_uid] = ReidentificationKey(deid_study_uid, shift)
            while len(_KEYRING) > _KEYRING_SIZE:
                _KEYRING.popitem(last=False)
        return key


def shift_date(value: str, days: int) -> str | None:
    """Shift a DA (``YYYYMMDD``) or the date part of a DT value by ``days``; ``None`` if not a date."""
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) + dt.timedelta(days=days)
    except ValueError:
        return None
    return day.strftime("%Y%m%d") + value[8:]


_KEYRING: "OrderedDict[str, ReidentificationKey]" = OrderedDict()
_KEYRING_LOCK = threading.Lock()

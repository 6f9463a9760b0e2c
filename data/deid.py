"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

Options applied on top of the Basic Profile (and recorded in the dataset and the manifest):

- *Retain Longitudinal Temporal Information with Modified Dates*: every DA / DT value is shifted by a
  whole number of days, the same for every study of one patient within a process (times are kept);
- *Clean Descriptors*: Series / Study Description, Protocol Name and Contrast/Bolus Agent are kept
  after removing any token of the patient's identity and long digit runs.

Private tags are dropped; UIDs are replaced by ``2.25.<int>`` UIDs from an HMAC with a secret key drawn
per process, so one original UID maps to the same new UID every time in this process and to an
unrelated one in the next. Burned-in annotation cannot be removed from pixels: it is flagged.

What was changed goes to a :class:`Manifest` (attribute keywords and actions, never values). What is
needed to write results back to the hospital (original identity, the UID map, the date shift) is kept
in a :class:`ReidentificationKey` in a private in-process keyring, looked up by the de-identified
Study Instance UID with :func:`reidentification_key`; it is never logged, printed or pickled.

The attribute table is the PS3.15 Annex E table as shipped by ``dicom-anonymizer``; pseudonyms and the
way back live in :mod:`data.reidentify`.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from data.reidentify import (
    _PROCESS_SECRET,
    ReidentificationKey,
    forget_key,
    key_for,
    note_derived_uid,
    pseudonymise_uids,
    reidentification_key,
    remap_uid,
    shift_date,
)

__all__ = [
    "DeidOptions",
    "Manifest",
    "ReidentificationKey",
    "deidentify",
    "remap_uid",
    "reidentification_key",
    "forget_key",
    "redact",
    "clean_descriptor",
    "pseudonymise_uids",
    "note_derived_uid",
    "PROFILE_NAME",
]

PROFILE_NAME = "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile"
_OPTION_NAMES = {
    "dates": "Retain Longitudinal Temporal Information with Modified Dates Option",
    "descriptors": "Clean Descriptors Option",
}
# PS3.16 CID 7050 codes for the profile and options (DeidentificationMethodCodeSequence).
_METHOD_CODES = {"basic": ("113100", "Basic Application Confidentiality Profile"),
                 "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
                 "descriptors": ("113105", "Clean Descriptors Option")}
_CLEANED = {0x0008103E, 0x00081030, 0x00181030, 0x00180010}  # SeriesDescription, StudyDescription, ProtocolName, ContrastBolusAgent


@dataclass
class DeidOptions:
    """Which profile options apply (all on by default)."""

    shift_dates: bool = True  # Retain Longitudinal Temporal Information with Modified Dates
    clean_descriptors: bool = True  # keep scrubbed descriptions instead of removing them
    max_shift_days: int = 3650  # dates move back by 1 .. max_shift_days days


@dataclass
class Manifest:
    """What de-identification changed: attribute keywords and the actions taken (never values).

    Actions: ``X`` removed, ``Z`` emptied, ``D`` replaced by a dummy, ``U`` UID remapped, ``S`` date
    shifted, ``C`` descriptor cleaned, ``P`` private tag removed.
    """

    actions: set = field(default_factory=set)  # {(keyword, action)}
    unreadable: set = field(default_factory=set)  # keywords / tags of elements that could not be read (removed)
    datasets: int = 0
    burned_in_annotation: bool = False
    options: tuple[str, ...] = ()

    def record(self, keyword: str, action: str) -> None:
        self.actions.add((keyword, action))

    def merge(self, other: "Manifest") -> None:
        self.actions |= other.actions
        self.unreadable |= other.unreadable
        self.datasets += other.datasets
        self.burned_in_annotation |= other.burned_in_annotation
        self.options = self.options or other.options

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: profile, options, ``{keyword: actions}`` and attributes per action."""
        by_keyword: dict[str, str] = {}
        for keyword, action in sorted(self.actions):
            by_keyword[keyword] = "".join(sorted(set(by_keyword.get(keyword, "")) | {action}))
        totals = Counter(action for _, action in self.actions)
        return {
            "profile": PROFILE_NAME,
            "options": list(self.options),
            "datasets": self.datasets,
            "attributes": by_keyword,
            "counts": dict(sorted(totals.items())),
            "burned_in_annotation": self.burned_in_annotation,
        }


def clean_descriptor(text: str, dataset: Dataset) -> str:
    """A free-text descriptor (e.g. Study Description) with identity words and long digit runs removed."""
    return _clean(text, _identity_tokens(dataset))


def redact(text: str, dataset: Dataset | None) -> str:
    """``text`` (e.g. a library's error message) with any identity word of ``dataset`` replaced."""
    if dataset is None:
        return text
    for word in _identity_tokens(dataset):
        text = re.sub(re.escape(word), "[redacted]", text, flags=re.IGNORECASE)
    return text


def deidentify(
    dataset: Dataset,
    *,
    options: DeidOptions | None = None,
    manifest: Manifest | None = None,
    in_place: bool = False,
    secret: bytes | None = None,
) -> Dataset:
    """De-identify a pydicom ``Dataset`` with the Basic Profile (plus :class:`DeidOptions`).

    Returns the de-identified dataset (a copy unless ``in_place``). ``manifest`` (if given) gets the
    actions taken. The original identity and the UID map go to the in-process re-identification key of
    the de-identified study (see :func:`reidentification_key`).
    """
    options = options or DeidOptions()
    ds = dataset if in_place else copy.deepcopy(dataset)
    manifest = manifest if manifest is not None else Manifest()
    secret = secret or _PROCESS_SECRET
    tokens = _identity_tokens(ds)  # before unreadable elements go: their raw bytes still name the patient
    run = _Run(options, manifest, secret, 0, None, tokens)
    run.drop_unreadable(ds)
    patient_id = str(ds.get("PatientID", "") or "")
    shift = _shift_days(patient_id, secret, options.max_shift_days) if options.shift_dates else 0
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    key = key_for(remap_uid(study_uid, secret) if study_uid else "", shift)
    if key is not None:
        key.record_identity(ds)
    run.shift, run.key = shift, key

    if getattr(ds, "file_meta", None) is not None:
        meta = ds.file_meta
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = run.uid(str(meta.MediaStorageSOPInstanceUID))
            manifest.record("MediaStorageSOPInstanceUID", "U")
        if "SourceApplicationEntityTitle" in meta:
            del meta.SourceApplicationEntityTitle
            manifest.record("SourceApplicationEntityTitle", "X")
    run.dataset(ds)

    burned = str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES"
    manifest.burned_in_annotation |= burned
    manifest.datasets += 1
    manifest.options = tuple(_OPTION_NAMES[k] for k, on in (("dates", options.shift_dates),
                                                            ("descriptors", options.clean_descriptors)) if on)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "; ".join((PROFILE_NAME, *manifest.options))[:64]
    codes = [_METHOD_CODES["basic"]] + [_METHOD_CODES[k] for k, on in (("dates", options.shift_dates),
                                                                       ("descriptors", options.clean_descriptors)) if on]
    ds.DeidentificationMethodCodeSequence = Sequence([_code_item(value, meaning) for value, meaning in codes])
    if options.shift_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    return ds


# ---------------------------------------------------------------------------------------------------
_DATE_VRS = ("DA", "DT")


class _Run:
    """One dataset's de-identification pass (state shared by the recursive walk)."""

    def __init__(self, options, manifest, secret, shift, key, tokens):
        self.options, self.manifest, self.secret, self.shift = options, manifest, secret, shift
        self.key, self.tokens = key, tokens
        self.exact, self.masked = _table()

    def uid(self, original: str) -> str:
        new = remap_uid(original, self.secret)
        if self.key is not None:
            self.key.record_uid(new, original)
        return new

    def drop_unreadable(self, ds: Dataset) -> None:
        """Remove the elements of ``ds`` (this level) that pydicom cannot convert; removing is always safe."""
        for tag in list(ds.keys()):
            try:
                ds[tag]
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception:  # pydicom's converters raise many types on malformed values (unknown VR, bad length)
                del ds[tag]
                keyword = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
                self.manifest.record(keyword, "X")
                self.manifest.unreadable.add(keyword)

    def dataset(self, ds: Dataset) -> None:
        self.drop_unreadable(ds)
        for tag in list(ds.keys()):
            elem = ds[tag]
            keyword = elem.keyword or f"({tag.group:04X},{tag.element:04X})"
            if tag.is_private:
                del ds[tag]
                self.manifest.record("private", "P")
                continue
            action = self.exact.get(int(tag)) or _masked_action(self.masked, int(tag))
            if action is None:
                if elem.VR == "PN" and elem.value:  # safety net: a person name the table does not list
                    action = "Z"
                elif elem.VR in _DATE_VRS and elem.value:  # safety net: every date moves together
                    action = "D"
                elif elem.VR == "SQ":
                    for item in elem.value:
                        self.dataset(item)
                    continue
                else:
                    continue
            self.apply(ds, elem, action, keyword)

    def apply(self, ds: Dataset, elem: DataElement, action: str, keyword: str) -> None:
        vr = elem.VR
        if int(elem.tag) in _CLEANED and self.options.clean_descriptors and vr != "SQ":
            if elem.value:
                elem.value = _clean(str(elem.value), self.tokens)
                self.manifest.record(keyword, "C")
            return
        if vr in _DATE_VRS and ("D" in action or "X" in action or "Z" in action) and self.options.shift_dates \
                and int(elem.tag) != 0x00100030:  # the birth date is never kept
            if elem.value:
                values = list(elem.value) if elem.VM > 1 else [elem.value]
                shifted = [shift_date(str(v), self.shift) for v in values]
                if all(shifted):
                    elem.value = shifted if elem.VM > 1 else shifted[0]
                    self.manifest.record(keyword, "S")
                    return
                del ds[elem.tag]  # not a parseable date: remove rather than keep it unshifted
                self.manifest.record(keyword, "X")
            return
        if action == "U" or ("U" in action and vr == "UI"):
            if elem.value:
                values = list(elem.value) if elem.VM > 1 else [elem.value]
                new = [self.uid(str(v)) for v in values]
                elem.value = new if elem.VM > 1 else new[0]
                self.manifest.record(keyword, "U")
            return
        if vr == "SQ" and (action in ("D", "XZU") or action == "U"):
            for item in elem.value:  # keep the structure, de-identify what is inside
                self.dataset(item)
            return
        if int(elem.tag) == 0x00100020:  # Patient ID: a stable pseudonym keeps one patient's studies together
            elem.value = "ANON" + hmac.new(self.secret, b"pid:" + str(elem.value).encode(), hashlib.sha256).hexdigest()[:12].upper()
            self.manifest.record(keyword, "D")
            return
        if action == "Z" or (action in ("ZD", "XZ") and vr not in _DATE_VRS):
            elem.value = Sequence() if vr == "SQ" else ("" if vr not in _BINARY_VRS else b"")
            self.manifest.record(keyword, "Z")
            return
        if action == "D" and vr not in _BINARY_VRS and vr != "SQ":
            elem.value = _dummy(vr)
            self.manifest.record(keyword, "D")
            return
        del ds[elem.tag]
        self.manifest.record(keyword, "X")


_BINARY_VRS = ("OB", "OW", "OD", "OF", "OL", "OV", "UN")


@lru_cache(maxsize=1)
def _table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    """The Annex E table as ``{tag: action}`` plus masked repeating-group rules."""
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    db = dicom_anonymization_database_selector("dicomfields_2026c")
    names = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "ZD", "X_Z_TAGS": "XZ",
             "X_D_TAGS": "XD", "X_Z_D_TAGS": "XZD", "X_Z_U_STAR_TAGS": "XZU"}
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for name, action in names.items():
        for entry in db[name]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                masked.append((*entry, action))
    return exact, masked


def _masked_action(masked, tag: int) -> str | None:
    group, element = tag >> 16, tag & 0xFFFF
    for g, e, gm, em, action in masked:
        if group & gm == g & gm and element & em == e & em:
            return action
    return None


def _shift_days(patient_id: str, secret: bytes, max_days: int) -> int:
    digest = hmac.new(secret, b"date-shift:" + patient_id.encode(), hashlib.sha256).digest()
    return -(1 + int.from_bytes(digest[:8], "big") % max(1, max_days))


def _dummy(vr: str) -> Any:
    if vr in ("DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"):
        return 0
    if vr == "TM":
        return "000000"
    if vr == "DA":
        return "19000101"
    if vr == "DT":
        return "19000101000000"
    if vr == "PN":
        return "ANONYMOUS"
    if vr == "UI":
        return "2.25.0"
    if vr in ("AE", "CS", "SH"):
        return "ANONYMIZED"[: 16 if vr != "CS" else 10]
    return "ANONYMIZED"


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


_IDENTITY_KEYWORDS = frozenset(("PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName",
                                 "InstitutionAddress", "PatientBirthDate", "StationName", "IssuerOfPatientID",
                                 "PatientAddress"))


def _identity_tokens(ds: Dataset) -> list[str]:
    """Words of the patient's identity (names, IDs, institution, birth date) to scrub from descriptors.

    An element pydicom cannot convert contributes its raw bytes (it still names the patient)."""
    words: set[str] = set()
    for tag in list(ds.keys()):
        if tag.is_private:
            continue
        item = ds.get_item(tag)
        try:
            standard_vr = dictionary_VR(tag)
        except KeyError:
            standard_vr = None
        if not (getattr(item, "VR", None) == "PN" or standard_vr == "PN" or keyword_for_tag(tag) in _IDENTITY_KEYWORDS):
            continue
        try:
            elem = ds[tag]
            values = [str(v) for v in (elem.value if elem.VM > 1 else [elem.value])]
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception:  # malformed value: read its bytes as text
            raw = item.value if isinstance(item, RawDataElement) else b""
            values = bytes(raw or b"").decode("latin-1").split("\\")
        for v in values:
            words.update(w for w in re.split(r"[\^\s,=/]+", v) if len(w) >= 3)
    return sorted(words, key=len, reverse=True)


def _clean(text: str, tokens: list[str]) -> str:
    """Hand-written Clean Descriptors step: drop identity words and digit runs of 6+ (dates, IDs)."""
    for word in tokens:
        text = re.sub(re.escape(word), " ", text, flags=re.IGNORECASE)
    text = re.sub(r"\d[\d./-]{5,}", " ", text)
    return re.sub(r"\s+", " ", text).strip()

"""De-identification of pydicom Datasets (PS3.15 Basic Profile + options) and the re-identification key."""

from __future__ import annotations

import copy
import datetime as dt
import pickle

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from data import deidentify
from data.deid import Manifest, reidentification_key, remap_uid


def _dataset(identity) -> Dataset:
    ds = Dataset()
    for keyword, value in identity.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"
    ds.FrameOfReferenceUID = "1.2.3.4.4"
    ds.StudyDate, ds.SeriesDate, ds.StudyTime = "20240315", "20240320", "101500"
    ds.Modality, ds.Manufacturer, ds.SliceThickness = "CT", "ACME", 2.5
    ds.SeriesDescription = f"CT chest {identity['PatientName'].split('^')[0]} 19471023 lung"
    ds.add_new(0x00091010, "LO", "vendor secret")  # private
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.9"
    ds.ReferencedImageSequence = Sequence([ref])
    person = Dataset()
    person.PersonName = "Nested^Person"
    ds.ContentSequence = Sequence([person])
    ds.BurnedInAnnotation = "YES"
    return ds


def test_identity_is_removed_and_useful_attributes_kept(identity):
    values, strings = identity
    manifest = Manifest()
    clean = deidentify(_dataset(values), manifest=manifest)
    text = str(clean)
    for s in strings + ["Nested", "vendor secret"]:
        assert s not in text, s
    assert clean.PatientName == "" and clean.PatientID.startswith("ANON")
    assert clean.Modality == "CT" and clean.Manufacturer == "ACME" and float(clean.SliceThickness) == 2.5
    assert clean.SeriesDescription == "CT chest lung"  # Clean Descriptors option
    assert clean.PatientIdentityRemoved == "YES" and clean.BurnedInAnnotation == "YES"
    assert [c.CodeValue for c in clean.DeidentificationMethodCodeSequence] == ["113100", "113107", "113105"]
    assert manifest.burned_in_annotation is True
    actions = manifest.as_dict()["attributes"]
    assert actions["PatientName"] == "Z" and actions["StudyInstanceUID"] == "U" and actions["private"] == "P"
    assert actions["StudyDate"] == "S" and actions["InstitutionName"] == "X"
    assert all(s not in str(manifest.as_dict()) for s in strings)


def test_uids_are_remapped_consistently_and_validly(identity):
    a = deidentify(_dataset(identity[0]))
    b = deidentify(_dataset(identity[0]))
    assert a.StudyInstanceUID == b.StudyInstanceUID == remap_uid("1.2.3.4.2")
    assert a.SOPInstanceUID != a.SeriesInstanceUID != a.StudyInstanceUID
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == remap_uid("1.2.3.4.9")
    assert a.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # classes are kept
    for uid in (a.StudyInstanceUID, a.SOPInstanceUID, a.FrameOfReferenceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid
    assert remap_uid("1.2.3", secret=b"x" * 32) != remap_uid("1.2.3", secret=b"y" * 32)


def test_dates_shift_together_and_per_patient(identity):
    clean = deidentify(_dataset(identity[0]))
    day = lambda s: dt.datetime.strptime(s, "%Y%m%d")  # noqa: E731
    assert (day(clean.SeriesDate) - day(clean.StudyDate)).days == 5  # intervals survive
    assert clean.StudyDate != "20240315" and clean.StudyTime == "" and clean.PatientBirthDate == ""
    other = dict(identity[0], PatientID="SOMEONE-ELSE")
    assert deidentify(_dataset(other)).PatientID != clean.PatientID  # one pseudonym per patient
    again = deidentify(_dataset(identity[0]))
    assert again.StudyDate == clean.StudyDate


def test_in_place_and_copy(identity):
    ds = _dataset(identity[0])
    copy_out = deidentify(ds)
    assert ds.PatientName == identity[0]["PatientName"] and copy_out is not ds
    same = deidentify(ds, in_place=True)
    assert same is ds and ds.PatientName == ""


def test_reidentification_key_restores_identity_and_never_shows_it(identity):
    values, strings = identity
    original = _dataset(values)
    clean = deidentify(original)
    key = reidentification_key(clean.StudyInstanceUID)
    assert all(s not in repr(key) for s in strings)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        copy.deepcopy(key)
    derived = Dataset()  # e.g. a SEG made from the de-identified images
    derived.StudyInstanceUID, derived.SeriesInstanceUID = clean.StudyInstanceUID, "2.25.42"
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = clean.SOPInstanceUID
    derived.ReferencedSeriesSequence = Sequence([ref])
    derived.ContentDate = clean.StudyDate
    derived.PatientName = ""
    back = key.reidentify(derived)
    assert back.StudyInstanceUID == "1.2.3.4.2" and back.SeriesInstanceUID == "2.25.42"
    assert back.ReferencedSeriesSequence[0].ReferencedSOPInstanceUID == "1.2.3.4.1"
    assert back.PatientName == values["PatientName"] and back.PatientID == values["PatientID"]
    assert back.ContentDate == "20240315"
    assert key.original_uid(clean.SeriesInstanceUID) == "1.2.3.4.3"
    with pytest.raises(KeyError, match="not ingested in this process"):
        reidentification_key("2.25.1")

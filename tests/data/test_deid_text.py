"""De-identification of typed text (``data.deid_text``): identifiers are masked, the clinical question is kept."""

from __future__ import annotations

import re

import pytest

from data.deid_text import scrub_identifiers


@pytest.mark.parametrize("text, gone, kept", [
    ("Does Jane Doe (MRN 12345678, born 03/04/1961) have a liver lesion?", ["Jane", "Doe", "12345678", "03/04/1961"],
     "Does [name] (MRN [number], born [date]) have a liver lesion?"),
    ("Patient named john smith, DOB 4 March 1961, MRN: A1234567 — is the spleen big?", ["john", "smith", "March", "A1234567"],
     "is the spleen big?"),
    ("What is the liver volume of Mr. Smith?", ["Smith"], "What is the liver volume of Mr. [name]?"),
    ("Doe, Jane: liver volume?", ["Doe", "Jane"], "[name]: liver volume?"),
    ("accession no. ACC-2024-0042, any pneumothorax?", ["ACC-2024-0042", "2024"], "any pneumothorax?"),
    ("mail jane.doe@hospital.org or call +44 20 7946 0958", ["jane.doe", "7946"], "mail [email] or call [number]"),
    ("born on March 3rd, 1961, seen by Dr. Gregory House; id 42", ["1961", "Gregory", "House", "42"], "seen by Dr. [name]"),
    ("dob 19610304, study of 1961-03-04", ["19610304", "1961-03-04"], "study of [date]"),
])
def test_names_record_numbers_and_dates_are_masked(text, gone, kept):
    out = scrub_identifiers(text)
    assert not [g for g in gone if re.search(rf"(?<!\w){re.escape(g)}(?!\w)", out)], out
    assert kept in out


@pytest.mark.parametrize("text", [
    "What is the liver volume? The last one was 1523.4 mL in 2019.",
    "Is the T1c enhancing tumor bigger than 30 mm?",
    "Compare left and right kidney volumes",
    "Liver volume?",
    "Does the CT show a lesion in segment 4 of the liver on slice 112?",
])
def test_a_question_without_identifiers_is_kept_word_for_word(text):
    assert scrub_identifiers(text) == text


def test_the_known_patients_name_is_masked_in_any_case_even_without_a_title_or_a_capital():
    assert scrub_identifiers("does jane doe have a cyst? ask DOE", identity=["Jane", "Doe"]) == "does [name] [name] have a cyst? ask [name]"
    assert scrub_identifiers("does jane doe have a cyst?") == "does jane doe have a cyst?"  # what the patterns alone cannot know


def test_the_reidentification_key_gives_the_patients_identity_words_for_masking():
    from pydicom.dataset import Dataset

    from data.deid import deidentify
    from data.reidentify import reidentification_key

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN0042", "19610304"
    ds.AccessionNumber, ds.StudyInstanceUID, ds.Modality, ds.InstitutionName = "ACC77120", "1.2.840.99.7", "CT", "General Hospital"
    words = reidentification_key(str(deidentify(ds).StudyInstanceUID)).identity_words()
    assert set(words) == {"Doe", "Jane", "MRN0042", "19610304", "ACC77120"}  # the patient's, not the institution's

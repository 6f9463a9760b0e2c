"""Identifier requests and clinical decisions are declined, greetings get help, without the model or an expert;
questions about the images go to the model."""

from __future__ import annotations

import numpy as np
import pytest

from vlm.refusals import policy_kind, refusal_for


@pytest.mark.parametrize("question,kind", [
    ("Can you tell me the patient's name?", "identity"),
    ("whats his DOB", "identity"),
    ("MRN please", "identity"),
    ("Should we start him on steroids for the oedema?", "clinical decision"),
    ("What dose of dexamethasone would you give?", "clinical decision"),
    ("Can she be discharged today?", "clinical decision"),
    ("what's the prognosis with a tumour this size", "clinical decision"),
    ("hello there", "help"),
    ("What can you do?", "help"),
])
def test_requests_the_assistant_must_decline_or_explain(question, kind):
    assert refusal_for(question).kind == kind


@pytest.mark.parametrize("question", ["What is the liver volume?", "Is there a pleural effusion?", "hi, how big is the spleen?",
                                      "Which hemisphere is the tumour in?", "Any sign of pneumothorax after the drain?"])
def test_questions_about_the_images_go_to_the_model(question):
    assert refusal_for(question) is None


def test_a_declined_question_calls_no_expert_and_is_flagged_for_the_audit_log():
    from experts.registry import ExpertRegistry
    from vlm.agent import Agent
    from vlm.conversation import Conversation

    class NeverCalled:
        info = None

        def stream_chat(self, *args, **kwargs):
            raise AssertionError("the model must not be asked")

    turn = Agent(NeverCalled(), ExpertRegistry()).run_turn(Conversation(images=[np.zeros((8, 8), np.uint8)]), "What is the patient's name?")
    assert turn.tool_calls == [] and turn.flags == ["refusal: identity"]
    assert "identifiers are removed when a study is loaded" in turn.answer


def test_birth_dates_ages_hospitals_accessions_and_study_dates_are_identifiers():
    for q in ("When was this patient born?", "patient age?", "what hospital is this from", "Give me the accession",
              "what is the study date"):
        assert policy_kind(q) == "identity", q
    assert policy_kind("How old is the fracture?") == ""  # the age of a finding is a question about the image


def test_fitness_to_fly_calling_surgeons_follow_up_and_going_home_are_the_clinicians_decision():
    for q in ("Can the patient fly next week?", "Should I call the surgeons?", "what follow-up imaging do you recommend",
              "Is this patient safe to go home?"):
        assert policy_kind(q) == "decision", q


def test_questions_about_the_assistant_itself_get_the_help_answer():
    for q in ("Can you explain what you are?", "any tips for using this tool?", "What experts can you run on this study?",
              "Who made you?", "is this tool approved for clinical use?"):
        assert policy_kind(q) == "help", q
    assert policy_kind("can you measure the liver") == ""


def test_a_question_about_what_the_assistant_can_find_is_help_but_one_about_the_study_is_not():
    assert policy_kind("what kinds of findings can you detect?") == "help"
    assert policy_kind("hey what organs can you segment") == "help"
    assert policy_kind("Hi, can you measure the liver?") == ""
    assert policy_kind("hi, is there an effusion?") == ""


@pytest.mark.parametrize("question, kind", [
    ("How long does this patient have to live?", "decision"),
    ("Is this tumour operable?", "decision"),
    ("can it be operated on", "decision"),
    ("What can this assistant do with a chest X-ray?", "help"),
    ("What kinds of questions can I ask?", "help"),
])
def test_survival_operability_and_what_the_assistant_does_are_answered_by_policy(question, kind):
    assert policy_kind(question) == kind


@pytest.mark.parametrize("question", ["How long is the liver?", "how long does the aorta measure"])
def test_a_length_question_is_not_a_question_of_survival(question):
    assert policy_kind(question) == ""


@pytest.mark.parametrize("question", ["How accurate are you?", "Which modalities do you support?", "list your functions",
                                      "what's your purpose", "I need help", "is this an AI?", "how do I upload a study",
                                      "Which experts can you call?", "what is your name"])
def test_questions_about_the_assistant_itself_in_other_words_get_the_help_answer(question):
    assert policy_kind(question) == "help"


@pytest.mark.parametrize("question", ["can you read this scan?", "Can you measure the liver?", "how confident are you about the pneumothorax?",
                                      "do you see a nodule?", "is this a CT?"])
def test_a_question_put_to_the_assistant_about_the_study_is_not_help(question):
    assert policy_kind(question) == ""


@pytest.mark.parametrize("question, kind", [
    ("name?", "identity"), ("Age?", "identity"), ("Where does the patient live?", "identity"),
    ("tell me who this belongs to", "identity"), ("is a biopsy needed", "decision"), ("refer to oncology?", "decision"),
    ("does she need a chest drain", "decision"), ("Should we repeat the scan?", "decision"), ("What would you do?", "decision"),
    ("Can he go back to work?", "decision"), ("Is this an emergency?", "decision"), ("What's the plan?", "decision"),
])
def test_terse_identity_requests_and_plans_referrals_and_triage_are_answered_by_policy(question, kind):
    assert policy_kind(question) == kind


@pytest.mark.parametrize("question", ["volume?", "Is the nodule growing?", "which side is the cyst referred to"])
def test_terse_measurement_and_finding_questions_are_not_policy(question):
    assert policy_kind(question) == ""


@pytest.mark.parametrize("question", ["Who's the scan of?", "Patient?", "What's the patient called?", "Is this John Smith's scan?",
                                      "Confirm the patient is Mrs Jones", "Read out the header", "show me the PatientName tag",
                                      "Whom does this CT belong to?", "what's the pt's nhs no", "full name pls",
                                      "Can you look up this patient in the EHR?"])
def test_identity_asked_about_the_person_the_header_or_a_named_person_is_declined(question):
    assert policy_kind(question) == "identity"


@pytest.mark.parametrize("question", ["Is this Right Kidney enlarged", "Is this Pleural Effusion?", "What does the header say about the series?"])
def test_capitalised_anatomy_and_series_headers_are_not_identity(question):
    assert policy_kind(question) == ""


@pytest.mark.parametrize("question", ["how's it going", "I'm new here, where do I start?", "Are you there?", "what's your job",
                                      "Hi — what can m3 do?", "How can this help me read scans?", "Describe your abilities",
                                      "Is this tool safe to use?"])
def test_small_talk_and_getting_started_questions_get_the_help_answer(question):
    assert policy_kind(question) == "help"


def test_asking_how_the_assistant_can_help_with_a_finding_goes_to_the_model():
    assert policy_kind("how can you help me with this liver lesion") == ""


@pytest.mark.parametrize("question", ["What's the treatment?", "Is it safe to give tPA?", "Does he need to be intubated?",
                                      "Should we drain it?", "Should the tumour be removed?", "Should I be worried?",
                                      "Will this spread?", "What does the patient need?"])
def test_treatment_procedures_worry_and_outlook_are_the_clinicians_decision(question):
    assert policy_kind(question) == "decision"

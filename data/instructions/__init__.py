"""Training data from phantoms, LLaVA-style: captions (align), VQA (ift), expert conversations
(medical-ift), among them conversations on clinician-style questions (``clinician_dialogue``). ``build_dataset``
writes the pictures and ``<stage>_<split>.json``; the pieces (``make_view``, ``caption``, ``vqa_items``,
``expert_dialogue``, ``tool_result_from_truth``, ``clinician_dialogue``) are public for the evaluation and for tests."""

from data.instructions.captions import caption, caption_prompt, report_findings, study_findings
from data.instructions.clinician_dialogues import clinician_dialogue
from data.instructions.clinician_questions import ClinicianMix, sample_questions
from data.instructions.dataset import SPLIT_SEEDS, STAGES, build_dataset, build_datasets, case_seeds
from data.instructions.expert_dialogues import Dialogue, expert_dialogue, format_tool_call, tool_result_from_truth
from data.instructions.paraphrase import paraphrase, phrase
from data.instructions.views import CaseView, make_view
from data.instructions.vqa import QA, vqa_items

__all__ = [
    "build_dataset", "build_datasets", "STAGES", "SPLIT_SEEDS", "case_seeds", "CaseView", "make_view", "caption", "caption_prompt",
    "report_findings", "study_findings", "QA", "vqa_items", "Dialogue", "expert_dialogue", "tool_result_from_truth", "format_tool_call",
    "phrase", "paraphrase", "ClinicianMix", "clinician_dialogue", "sample_questions",
]

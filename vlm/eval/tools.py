"""Expert-call and grounding scores of agent conversations.

A call is right when the expert and its arguments both match the expected call; follow-up questions
and questions that need no expert expect no call. An answer that should quote the expert (its reference
carries numbers taken from an expert result, not textbook constants such as "-1000 HU") is *grounded*
when it quotes at least one number and every number it quotes appears in the conversation's tool
results; it quotes the *right values* when every number of its reference is among its numbers (the
reference's field references filled from the same tool results).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from vlm.eval.metrics import is_grounded, numbers_in, tool_call_scores

__all__ = ["DialogueItem", "score_dialogues"]


@dataclass
class DialogueItem:
    """One evaluated conversation.

    expected_calls / predicted_calls: ``(name, arguments)`` of the whole conversation; answers: per
    human turn, ``(prediction, reference)``; tool_texts: the tool messages the model saw; task:
    "expert" or "no-expert"; kind: ct | mri | cxr.
    """

    expected_calls: list[tuple[str, dict]]
    predicted_calls: list[tuple[str, dict]]
    answers: list[tuple[str, str]] = field(default_factory=list)
    tool_texts: list[str] = field(default_factory=list)
    task: str = "expert"
    kind: str = ""
    errors: list[str] = field(default_factory=list)
    # per answer: does its reference quote an expert result? (empty: every reference with numbers does)
    quotes_expert: list[bool] = field(default_factory=list)


def score_dialogues(items: Iterable[DialogueItem]) -> dict:
    """Call precision / recall (name and arguments; and name only), the grounded-answer rate over the
    answers whose reference quotes an expert's numbers, the rate of turns answered without an unneeded call."""
    items = list(items)
    calls = tool_call_scores([i.predicted_calls for i in items], [i.expected_calls for i in items])
    should_cite = [(pred, i.tool_texts) for i in items for k, (pred, ref) in enumerate(i.answers)
                   if numbers_in(ref) and (i.quotes_expert[k] if k < len(i.quotes_expert) else True)]
    grounded = [bool(numbers_in(p)) and is_grounded(p, texts) for p, texts in should_cite]
    right = [is_grounded(ref, [pred]) for i in items for pred, ref in i.answers if numbers_in(ref)]
    no_expert = [i for i in items if not i.expected_calls]
    return {
        "n": len(items),
        "call_precision": calls.precision, "call_recall": calls.recall,
        "call_name_precision": calls.name_precision, "call_name_recall": calls.name_recall,
        "grounded_answer_rate": sum(grounded) / len(grounded) if grounded else None, "n_numeric_answers": len(grounded),
        "right_value_rate": sum(right) / len(right) if right else None,
        "no_call_when_not_needed": (sum(1 for i in no_expert if not i.predicted_calls) / len(no_expert)) if no_expert else None,
        "expert_errors": sum(len(i.errors) for i in items),
    }

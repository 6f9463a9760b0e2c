"""``DecodingConstraints``: what one generation round is kept on (the agent's choice), turned into the ``transformers``
logits processors of an in-process backend; a remote backend cannot apply them, and the agent says so."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import LogitsProcessor

from vlm.constraints.policy import SIDE_RULES, AskedFacts
from vlm.constraints.references import ReferenceConstraint
from vlm.constraints.sides import SideConstraint
from vlm.constraints.tool_args import ToolCallConstraint
from vlm.constraints.vocabulary import RunningText

__all__ = ["DecodingConstraints"]


@dataclass
class DecodingConstraints:
    """What one generation round's decoding is kept on (empty fields constrain nothing).

    references: the result fields a ``[[key]]`` reference may name (``data.tool_text.reference_keys``);
    answer_keys: the fields that answer the question (the agent's choice): a reference opening the answer names one of
    them that is in ``references``; asked: what the parsed question asks (``AskedFacts.of(intent)``: form, family,
    scope, named terms, side), the subject of such a reference otherwise (None: no question); call_side: the one body
    side ("left" / "right") the question names: no tool-call argument names the other; answer_side: the one side this
    turn's calls measured: no answer text names the other; call_arguments: expert → argument → allowed values
    (``policy.call_choices``): a tool call names one of these experts and gives each listed argument one of its values.
    failures: filled by the backend, one line per step a constraint failed on (that step went unconstrained).
    """

    references: tuple[str, ...] = ()
    answer_keys: tuple[str, ...] = ()
    call_side: str = ""
    answer_side: str = ""
    asked: AskedFacts | None = None
    call_arguments: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether any constraint applies this round."""
        return bool(self.references or self.call_side or self.answer_side or self.call_arguments)

    def processors(self, tokenizer: Any, prompt_length: int = 0) -> list[LogitsProcessor]:
        """The ``transformers`` logits processors of these constraints over ``tokenizer`` (sharing one running text
        and this object's ``failures``); ``prompt_length``: the prompt tokens in ``input_ids`` (0 when the prompt goes
        in as embeddings)."""
        running: dict[int, RunningText] = {}  # decoded once a step for every constraint
        shared: dict[str, Any] = {"prompt_length": prompt_length, "running": running, "failures": self.failures}
        out: list[LogitsProcessor] = []
        if self.references:
            out.append(ReferenceConstraint(tokenizer, self.references, asked=self.asked, answer_keys=self.answer_keys, **shared))
        for rule in SIDE_RULES:
            if rule.applies_when(self):
                stop = rule.effect(self)
                out.append(SideConstraint(tokenizer, stop.side, in_answer=stop.in_answer, **shared))
        if self.call_arguments:
            out.append(ToolCallConstraint(tokenizer, self.call_arguments, **shared))
        return out

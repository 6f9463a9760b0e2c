"""Which model a turn is given to and why: the rules of ``RoutingConfig`` read off the local model's turn."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vlm.routing.config import FLAG_REASONS, RoutingConfig

__all__ = ["RoutingDecision", "decide", "out_of_scope", "REASON_WORDS"]

# reason code → words for the clinician ("Answered by: large model (escalated: …)")
REASON_WORDS = {
    "policy": "site policy: large model only",
    "out_of_scope": "question outside the local model's scope",
    "low_confidence": "low confidence",
    "unknown_confidence": "the local model's confidence is not available",
    "constraint_failed": "a decoding check failed",
    "answer_corrected": "the answer had to be corrected to the expert result",
    "text_dropped": "model text unsupported by the results was dropped",
    "answer_composed": "the answer had to be composed from the expert result",
    "expert_called": "the model did not call the expert the question needs",
    "ungrounded_number": "a number not in any expert result",
    "unresolved_reference": "a reference no expert result fills",
    "backend_error": "the local model failed",
}


@dataclass(frozen=True)
class RoutingDecision:
    """One turn's routing: no PHI, so it goes to the audit log as it is (``to_json``).

    answered_by: ``local`` / ``large``, or "" when no model wrote (a refusal, a header answer). reasons: the rules
    that fired (``REASON_WORDS`` codes), escalated or not (``small-only`` records them without escalating).
    confidence: the local model's token probability (``confidence_statistic``), None when not measured or not
    available. family: the parsed question's intent family. large_failed: the large model's error when it failed and
    the local answer stands."""

    answered_by: str
    escalated: bool = False
    reasons: tuple[str, ...] = ()
    confidence: float | None = None
    threshold: float = 0.0
    family: str = ""
    policy: str = "small-first"
    large_failed: str = ""

    def reason_text(self) -> str:
        """The reasons in words, "low confidence 0.41 < 0.60" for the confidence rule; "" when none fired."""
        words = []
        for code in self.reasons:
            if code == "low_confidence" and self.confidence is not None:
                words.append(f"low confidence {self.confidence:.2f} < {self.threshold:.2f}")
            elif code == "out_of_scope" and self.family:
                words.append(f"{REASON_WORDS[code]} ({self.family})")
            else:
                words.append(REASON_WORDS.get(code, code))
        return "; ".join(words)

    def line(self) -> str:
        """What the app shows under the answer: "Answered by: local model", "Answered by: large model (escalated: low
        confidence 0.41 < 0.60)"; "" when no model wrote."""
        if not self.answered_by:
            return ""
        if self.large_failed:
            return f"Answered by: local model (the large model failed: {self.large_failed}; asked because {self.reason_text()})"
        if self.answered_by == "large":
            return "Answered by: large model (" + ("site policy" if self.reasons == ("policy",) else f"escalated: {self.reason_text()}") + ")"
        return "Answered by: local model"

    def to_json(self) -> dict[str, Any]:
        """Codes, numbers and the intent family only (the audit log's ``routing``)."""
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["confidence"] = None if self.confidence is None else round(self.confidence, 4)
        return out


def decide(turn: Any, confidence: float | None, config: RoutingConfig) -> RoutingDecision:
    """The routing of the local model's finished ``turn`` (``AgentTurn``) whose generated tokens had ``confidence``
    (None: not available): the reasons that fire under ``config``; escalated when any does and the policy is
    ``small-first``. A turn no model wrote (``turn.rounds == 0``: refusals, header answers) is never escalated."""
    family = getattr(turn.intent, "family", "") or ""
    if turn.rounds == 0:
        return RoutingDecision("", family=family, policy=config.policy)
    reasons: list[str] = ["out_of_scope"] if turn.intent is not None and out_of_scope(turn.intent, config) else []
    if confidence is None:
        if config.escalate_unknown_confidence:
            reasons.append("unknown_confidence")
    elif confidence < config.min_token_confidence:
        reasons.append("low_confidence")
    for code in config.escalate_on:
        if any(flag.startswith(FLAG_REASONS[code]) for flag in turn.flags):
            reasons.append(code)
    return RoutingDecision("local", escalated=bool(reasons) and config.policy == "small-first", reasons=tuple(reasons),
                           confidence=confidence, threshold=config.min_token_confidence, family=family, policy=config.policy)


def out_of_scope(intent: Any, config: RoutingConfig) -> bool:
    """Whether any part of the parsed question (``QuestionIntent``) has a family the local model is not trusted with."""
    parts = getattr(intent, "all_parts", None) or (intent,)
    return any(getattr(p, "family", "") in config.escalate_families for p in parts)

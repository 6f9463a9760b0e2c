"""The routing settings (``[routing]`` of the app's config file): which model answers a turn, and when the local
(small) model's turn is handed to the large one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from data.errors import M3Error

__all__ = ["RoutingConfig", "RoutingError", "POLICIES", "FLAG_REASONS", "STATISTICS", "model_families"]

POLICIES = ("small-first", "large-only", "small-only")
STATISTICS = ("mean", "min")
# an ``escalate_on`` code → the start of the agent flag (``vlm.agent``, ``vlm.grounding``) it escalates on
FLAG_REASONS = {
    "constraint_failed": "constraint failed",
    "answer_corrected": "answer corrected to the expert result",
    "text_dropped": "model text dropped",
    "answer_composed": "answer composed from the expert result",
    "expert_called": "expert called for the question",
    "ungrounded_number": "ungrounded number",
    "unresolved_reference": "unresolved reference",
    "backend_error": "backend error",
}


class RoutingError(M3Error):
    """A routing setting that cannot work, or a calibration that cannot run; the message names the setting."""


@dataclass
class RoutingConfig:
    """When a turn goes to the large model.

    policy: ``small-first`` (the local model answers; its turn is re-run on the large model when one of the rules
    below fires), ``large-only`` (every turn on the large model) or ``small-only`` (never escalate; the rules are
    still read and recorded: how often a large model would be asked). large_lm_url / large_lm_model: the large
    model's OpenAI-compatible API root and served name; its key only from ``$M3_LARGE_LM_API_KEY``.
    min_token_confidence: escalate when the local model's token probability (``confidence_statistic``: the
    ``mean`` over the turn's generated tokens, or the ``min``) is below it; 0 = never (choose it with
    ``m3 routing calibrate``). escalate_unknown_confidence: escalate when the local backend cannot report token
    probabilities (else such turns are judged by the other rules alone). escalate_families: intent families
    (``vlm.intent.FAMILIES``) outside the local model's scope: those questions go to the large model directly.
    escalate_on: agent flags that escalate (``FLAG_REASONS``). log_escalations_to: a JSON-lines file that gets each
    turn the large model answered, de-identified (``vlm.routing.escalation_log``); None = not kept.
    """

    policy: str = "small-first"
    large_lm_url: str = ""
    large_lm_model: str = ""
    large_lm_api_key: str = field(default="", repr=False)  # only from $M3_LARGE_LM_API_KEY
    min_token_confidence: float = 0.0
    confidence_statistic: str = "mean"
    escalate_unknown_confidence: bool = False
    escalate_families: tuple[str, ...] = ()
    escalate_on: tuple[str, ...] = ("constraint_failed", "answer_corrected", "text_dropped", "ungrounded_number", "backend_error")
    log_escalations_to: Path | None = None

    @property
    def enabled(self) -> bool:
        """Whether turns are routed at all: a large model is configured, or the rules are recorded (``small-only``)."""
        return bool(self.large_lm_url) or self.policy != "small-first"

    def check(self) -> "RoutingConfig":
        """Raise ``RoutingError`` for settings that cannot work; returns ``self``."""
        if self.policy not in POLICIES:
            raise RoutingError(f"routing.policy must be one of {', '.join(POLICIES)}, got {self.policy!r}.")
        if not 0.0 <= self.min_token_confidence <= 1.0:
            raise RoutingError(f"routing.min_token_confidence must be >= 0 and <= 1 (a token probability), got "
                               f"{self.min_token_confidence}.")
        if self.confidence_statistic not in STATISTICS:
            raise RoutingError(f"routing.confidence_statistic must be one of {', '.join(STATISTICS)}, got "
                               f"{self.confidence_statistic!r}.")
        unknown = [c for c in self.escalate_on if c not in FLAG_REASONS]
        if unknown:
            raise RoutingError(f"routing.escalate_on must hold only {', '.join(FLAG_REASONS)}, got {unknown[0]!r}.")
        families = model_families()
        unknown = [f for f in self.escalate_families if f not in families]
        if unknown:
            raise RoutingError(f"routing.escalate_families must hold intent families a model answers ({', '.join(families)}), "
                               f"got {unknown[0]!r}.")
        if self.large_lm_url and (urlparse(self.large_lm_url).scheme not in ("http", "https") or not self.large_lm_model):
            raise RoutingError(f"routing.large_lm_url must be an http(s) API root like http://gpu-node:8000/v1 with "
                               f"routing.large_lm_model naming the served model, got {self.large_lm_url!r} / "
                               f"{self.large_lm_model!r}.")
        if self.policy == "large-only" and not self.large_lm_url:
            raise RoutingError("routing.policy is large-only but routing.large_lm_url is empty; set the large model's "
                               "API root or choose small-first / small-only.")
        if self.log_escalations_to is not None and self.policy == "small-only":
            raise RoutingError("routing.log_escalations_to is set but routing.policy is small-only, which never asks the "
                               "large model: nothing would be written. Unset it or choose small-first.")
        return self


def model_families() -> tuple[str, ...]:
    """The intent families a model answers (``vlm.intent.FAMILIES`` but those answered by policy or from the header)."""
    # imported here: the question parser loads scipy, and the app's config is read by every command before any model
    from vlm.intent import FAMILIES, HEADER_FAMILIES, POLICY_FAMILIES

    return tuple(f for f in FAMILIES if f not in POLICY_FAMILIES + HEADER_FAMILIES)

"""``m3 routing calibrate``: choose ``routing.min_token_confidence`` on a validation set.

Every phrasing of a held-out phrasing set (``vlm.eval.phrasings``) is asked of the local model, with the routing rules
recorded but not acted on (``small-only``: its token probability and the other reasons per turn), and of the large
model, on the same phantom studies and path; both are scored by the set's own rules. For each threshold the routed
turn is the large model's when a rule fires (the confidence below the threshold, or a threshold-free reason: a
flag in ``escalate_on``, a family in ``escalate_families``), the local one's otherwise; the curve is the routed
accuracy and the share of turns escalated, over thresholds. The suggested threshold is the lowest whose accuracy
reaches ``target_ratio`` of the large model's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlm.eval.phrasings import ask_phrasings, score_phrasing_answers
from vlm.routing.config import RoutingConfig, RoutingError
from vlm.routing.router import Router

__all__ = ["CurvePoint", "RoutedItem", "routing_curve", "suggest_threshold", "calibrate_routing", "curve_table",
           "write_report", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))  # 0.00, 0.05, ..., 1.00
_CONFIDENCE_REASONS = ("low_confidence", "unknown_confidence")


@dataclass(frozen=True)
class RoutedItem:
    """One validation question: whether each model answered it right, the local turn's token probability (None:
    not available), the reasons that escalate it at any threshold, and whether a model wrote its answer at all."""

    local_correct: bool
    large_correct: bool
    confidence: float | None
    fixed_reasons: tuple[str, ...] = ()
    model_wrote: bool = True


@dataclass(frozen=True)
class CurvePoint:
    """The routed run at one ``threshold``: ``accuracy`` (fraction right), ``escalation_rate`` (share of all turns
    given to the large model) and ``local_share`` (the rest)."""

    threshold: float
    accuracy: float
    escalation_rate: float
    local_share: float


def routing_curve(items: Sequence[RoutedItem], thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *,
                  escalate_unknown_confidence: bool = False) -> list[CurvePoint]:
    """Routed accuracy and escalation rate of ``items`` at each threshold (module docstring); an item without a
    confidence escalates only on its fixed reasons, or always with ``escalate_unknown_confidence``."""
    if not items:
        raise RoutingError("the validation set gave no answers to calibrate on; check the phrasing set file.")
    points = []
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise RoutingError(f"thresholds must be >= 0 and <= 1 (token probabilities), got {t}.")
        escalated = [_escalates(i, t, escalate_unknown_confidence) for i in items]
        right = [i.large_correct if e else i.local_correct for i, e in zip(items, escalated)]
        rate = sum(escalated) / len(items)
        points.append(CurvePoint(float(t), sum(right) / len(items), rate, 1.0 - rate))
    return points


def suggest_threshold(points: Sequence[CurvePoint], large_accuracy: float, target_ratio: float = 0.98) -> CurvePoint | None:
    """The lowest-threshold point whose accuracy is at least ``target_ratio`` × ``large_accuracy`` (the most turns kept
    local at that accuracy); None when no threshold reaches it."""
    goal = target_ratio * large_accuracy
    reached = [p for p in points if p.accuracy >= goal - 1e-12]
    return min(reached, key=lambda p: (p.escalation_rate, p.threshold)) if reached else None


def calibrate_routing(local: Any, large: Any, registry: Any, set_path: str | Path, *, config: RoutingConfig | None = None,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS, seed: int = 77, target_ratio: float = 0.98,
                      progress: bool = True) -> dict[str, Any]:
    """Ask the phrasing set at ``set_path`` of the ``local`` and the ``large`` backend (phantom studies of ``seed``,
    the app's path, the experts of ``registry``), and return the report: both models' accuracy, the ``curve``
    (``CurvePoint`` dicts over ``thresholds``) under ``config``'s other rules (its ``escalate_on``,
    ``escalate_families``, ``confidence_statistic``, ``escalate_unknown_confidence``; its policy and threshold are
    not used), and the ``suggested`` point (``suggest_threshold``)."""
    config = config or RoutingConfig()
    shadow = dataclasses.replace(config, policy="small-only", large_lm_url="", large_lm_model="", min_token_confidence=0.0,
                                 log_escalations_to=None)
    runs = {"local": ask_phrasings(local, registry, set_path, seed, progress=progress, router=Router(None, shadow)),
            "large": ask_phrasings(large, registry, set_path, seed, progress=progress)}
    scores = {name: score_phrasing_answers([r["item"] for r in records], records, [r["truth"] for r in records])
              for name, records in runs.items()}
    items = []
    for record, local_score, large_score in zip(runs["local"], scores["local"]["items"], scores["large"]["items"]):
        routing = record.get("routing") or {}
        items.append(RoutedItem(bool(local_score["correct"]), bool(large_score["correct"]), routing.get("confidence"),
                                tuple(r for r in routing.get("reasons", ()) if r not in _CONFIDENCE_REASONS),
                                bool(routing.get("answered_by"))))
    points = routing_curve(items, thresholds, escalate_unknown_confidence=config.escalate_unknown_confidence)
    suggested = suggest_threshold(points, scores["large"]["overall"], target_ratio)
    return {
        "set": str(set_path),
        "seed": seed,
        "n": len(items),
        "local": {"model": local.info.name, "accuracy": scores["local"]["overall"],
                  "confidence_available": sum(i.confidence is not None for i in items if i.model_wrote)},
        "large": {"model": large.info.name, "accuracy": scores["large"]["overall"]},
        "rules": {"confidence_statistic": config.confidence_statistic, "escalate_on": list(config.escalate_on),
                  "escalate_families": list(config.escalate_families),
                  "escalate_unknown_confidence": config.escalate_unknown_confidence},
        "target_ratio": target_ratio,
        "curve": [dataclasses.asdict(p) for p in points],
        "suggested": dataclasses.asdict(suggested) if suggested is not None else None,
        "items": [dataclasses.asdict(i) | {"intent": r["item"]["intent"], "phrasing": r["item"]["phrasing"]}
                  for i, r in zip(items, runs["local"])],
    }


def curve_table(report: dict[str, Any]) -> str:
    """The report as Markdown: both models' accuracy, the curve, the suggested threshold."""
    lines = [f"Routing calibration on `{report['set']}` ({report['n']} questions, phantom seed {report['seed']}); "
             f"local `{report['local']['model']}` {report['local']['accuracy']:.3f}, large `{report['large']['model']}` "
             f"{report['large']['accuracy']:.3f}; token probability: {report['rules']['confidence_statistic']}, "
             f"available on {report['local']['confidence_available']} local turns.", "",
             "| min_token_confidence | routed accuracy | escalation rate | local share |", "|---:|---:|---:|---:|"]
    for p in report["curve"]:
        lines.append(f"| {p['threshold']:.2f} | {p['accuracy']:.3f} | {p['escalation_rate']:.3f} | {p['local_share']:.3f} |")
    s = report["suggested"]
    lines += ["", (f"Suggested: min_token_confidence = {s['threshold']:.2f} (accuracy {s['accuracy']:.3f} >= "
                   f"{report['target_ratio']:.2f} x large, {s['local_share']:.0%} of turns local)." if s is not None else
                   f"No threshold reaches {report['target_ratio']:.2f} x the large model's accuracy under these rules.")]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """Write ``report`` as JSON to ``out`` (folders created); returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _escalates(item: RoutedItem, threshold: float, unknown: bool) -> bool:
    if not item.model_wrote:
        return False
    if item.fixed_reasons:
        return True
    if item.confidence is None:
        return unknown
    return item.confidence < threshold

"""``m3 routing calibrate``: the accuracy / escalation-rate curve of a local and a large model over confidence
thresholds on a held-out phrasing set (``vlm.routing.calibrate``), printed as a table and written as JSON."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from vlm.cli import add_placement_arguments
from vlm.routing.calibrate import DEFAULT_THRESHOLDS, calibrate_routing, curve_table, write_report
from vlm.routing.config import FLAG_REASONS, STATISTICS, RoutingConfig

__all__ = ["add_parsers", "calibrate", "LARGE_API_KEY_ENV"]

LARGE_API_KEY_ENV = "M3_LARGE_LM_API_KEY"  # as routing.large_lm_api_key in the app (app.config.SECRET_ENV)
_DEFAULTS = RoutingConfig()


def calibrate(model: str | None, large_url: str, large_model: str, phrasings: str, out: str, *, seed: int = 77,
              thresholds: Sequence[float] = DEFAULT_THRESHOLDS, config: RoutingConfig | None = None, target_ratio: float = 0.98,
              device: str = "auto", dtype: str = "auto", local: Any = None, large: Any = None, registry: Any = None) -> dict[str, Any]:
    """``m3 routing calibrate``: load the local model (``model``, default the embedded one, on ``device`` in ``dtype``)
    and connect the large one (``large_model`` at ``large_url``, key from ``$M3_LARGE_LM_API_KEY``), run
    ``calibrate_routing`` on the phrasing set with the built-in experts, print the table and write the JSON report to
    ``out``. local / large / registry: backends and an expert registry to use instead (tests)."""
    from experts.registry import default_registry
    from vlm.backends import load_backend
    from vlm.backends.openai_api import connect
    from vlm.device import resolve_device
    from vlm.eval.phrasing_run import CachedRegistry

    if local is None:
        folder = Path(model) if model else Path(__file__).parents[1] / "weights" / "default"
        resolve_device(device, dtype)  # a GPU asked for and absent fails here, before any weights are read
        local = load_backend(folder, device=device, dtype=dtype)
    if large is None:
        large = connect(large_url, large_model, api_key=os.environ.get(LARGE_API_KEY_ENV) or None)
    report = calibrate_routing(local, large, CachedRegistry(registry if registry is not None else default_registry()), phrasings,
                               config=config, thresholds=thresholds, seed=seed, target_ratio=target_ratio)
    print(curve_table(report))
    print(f"report: {write_report(report, out)}")
    return report


def add_parsers(sub: Any) -> None:
    """Register ``m3 routing calibrate``."""
    r = sub.add_parser("routing", help="route turns between the local model and a large one: choose the thresholds",
                       description="Small model first, a large OpenAI-compatible model when the small one is unsure "
                                   "([routing] in the config file, docs/deploy.md).")
    actions = r.add_subparsers(dest="routing_command", metavar="ACTION", required=True)
    c = actions.add_parser("calibrate", help="print the accuracy / escalation-rate curve over confidence thresholds",
                           description="Ask every phrasing of a held-out phrasing set of the local model (its token "
                                       "probabilities recorded) and of the large model, score both, and print the routed "
                                       "accuracy and the share of turns escalated at each min_token_confidence; the JSON "
                                       "report holds the curve and the suggested threshold.")
    c.add_argument("--model", help="the local model's checkpoint folder (default: the embedded model)")
    c.add_argument("--large-url", required=True, help="the large model's OpenAI-compatible API root, e.g. "
                                                      "http://gpu-node:8000/v1 (key: $M3_LARGE_LM_API_KEY)")
    c.add_argument("--large-model", required=True, help="the model name served at --large-url")
    c.add_argument("--phrasings", required=True, metavar="SET", help="a validation phrasing set (JSON lines in the "
                                                                     "format of vlm/eval/phrasings.py); never the frozen "
                                                                     "held-out set, which thresholds must not be tuned on")
    c.add_argument("--out", default="routing_calibration.json", help="the JSON report to write (default routing_calibration.json)")
    c.add_argument("--seed", type=int, default=77, help="phantom seed of the studies (default 77; the held-out "
                                                          "evaluation uses 9001)")
    c.add_argument("--thresholds", type=_thresholds, help="comma-separated thresholds to try (default: 0 to 1 in steps of 0.05)")
    c.add_argument("--statistic", choices=STATISTICS, default=_DEFAULTS.confidence_statistic,
                   help="the turn's token probability: the mean over its tokens, or the least sure token's (default mean)")
    c.add_argument("--escalate-on", type=_codes, default=",".join(_DEFAULTS.escalate_on),
                   help=f"comma-separated agent flags that escalate whatever the threshold, of {', '.join(FLAG_REASONS)} "
                        f"(default {','.join(_DEFAULTS.escalate_on)}); as routing.escalate_on")
    c.add_argument("--escalate-families", type=_codes, default="",
                   help="comma-separated intent families sent to the large model directly, as routing.escalate_families "
                        "(default: none)")
    c.add_argument("--escalate-unknown-confidence", action="store_true",
                   help="escalate turns whose token probabilities the local model cannot report")
    c.add_argument("--target-ratio", type=float, default=0.98,
                   help="the suggested threshold is the lowest whose routed accuracy reaches this share of the large "
                        "model's (default 0.98)")
    add_placement_arguments(c)
    c.set_defaults(func=_calibrate_command)


def _calibrate_command(args: argparse.Namespace) -> int:
    config = RoutingConfig(confidence_statistic=args.statistic, escalate_on=tuple(_codes(args.escalate_on)),
                           escalate_families=tuple(_codes(args.escalate_families)),
                           escalate_unknown_confidence=args.escalate_unknown_confidence).check()
    calibrate(args.model, args.large_url, args.large_model, args.phrasings, args.out, seed=args.seed,
              thresholds=args.thresholds or DEFAULT_THRESHOLDS, config=config, target_ratio=args.target_ratio,
              device=args.device, dtype=args.dtype)
    return 0


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"thresholds must be comma-separated numbers like 0.4,0.5,0.6, got {text!r}.") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be >= 0 and <= 1, got {text!r}.")
    return values


def _codes(text: str | Sequence[str]) -> tuple[str, ...]:
    if not isinstance(text, str):
        return tuple(text)
    return tuple(v.strip() for v in text.split(",") if v.strip())

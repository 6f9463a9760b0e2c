"""``m3 eval``: score a model on held-out phantoms through the agent, or on a VQA file (phantom, VQA-RAD,
SLAKE, PathVQA); ``--compare-projectors`` trains and scores the projector options on one budget.

    m3 eval --model vlm/weights/default --data runs/tiny/data               # VQA + reports + expert calls
    m3 eval --model vlm/weights/default --data runs/tiny/data --baseline keyword   # and a keyword router beside it
    m3 eval --model MODEL --data VQA_RAD/"VQA_RAD Dataset Public.json" --format vqa-rad
    m3 eval --compare-projectors micro --out runs/projectors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Register ``eval``."""
    from vlm.cli import add_placement_arguments
    from vlm.eval.baselines import BASELINES
    from vlm.eval.vqa import VQA_FORMATS

    p = sub.add_parser("eval", help="evaluate a VLM: VQA, reports, expert calls, grounding (Markdown table + plots)",
                       description="Evaluate a VLM through the agent loop on held-out data; prints the Markdown table.")
    p.add_argument("--model", help="model folder (VILA layout) (default: none, required unless --compare-projectors; "
                                   "with --phrasings: the embedded default model)")
    p.add_argument("--data", help="folder with *_test.json from `m3 data instructions --split test`, or one VQA file "
                                  "(default: none, required unless --phrasings or --compare-projectors)")
    p.add_argument("--format", choices=VQA_FORMATS, default="llava", help="format of a --data file (default llava)")
    p.add_argument("--image-root", help="image folder of a public VQA file (default: the set's own layout)")
    p.add_argument("--out", help="output folder (default: a new folder per run, runs/eval/<run>-<model>-<date>-<time>; "
                                 "runs/projectors with --compare-projectors)")
    p.add_argument("--experts", choices=("auto", "real", "truth"), default="auto",
                   help="experts behind tool calls: trained (real), phantom ground truth (truth), real if present (auto) "
                        "(default auto)")
    p.add_argument("--limit", type=int, default=0, help="items per part (default 0: all)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per generation (default 256, as in the app)")
    p.add_argument("--baseline", choices=sorted(BASELINES), default=None,
                   help="also score a baseline on the same items in the same run: keyword (a keyword router over the same experts) "
                        "(default: none)")
    p.add_argument("--phrasings", metavar="SET", help="score the frozen held-out phrasing set (tests/data/heldout_phrasings.jsonl) "
                   "instead of --data: each phrasing asked on a phantom study through the app's path (default: none, score --data)")
    p.add_argument("--seed", type=int, default=9001, help="with --phrasings: phantom seed of the studies (default 9001)")
    p.add_argument("--compare-projectors", metavar="RECIPE", help="train and score mlp_downsample vs token merging on RECIPE's budget "
                   "(default: none, score --model)")
    p.add_argument("--steps-scale", type=float, default=1.0, help="with --compare-projectors: scale the recipe's steps (default 1)")
    add_placement_arguments(p)
    p.set_defaults(func=_run)


def default_out(model: str | Path | None, kind: str = "eval", now: Any = None) -> Path:
    """A new folder per evaluation: ``runs/<kind>/<parent>-<model>-<YYYYmmdd-HHMMSS>`` (a run's model folder is
    always ``final``, so its parent's name tells runs apart); ``-2``, ``-3`` ... when it exists already."""
    from datetime import datetime

    folder = Path(model) if model else Path("default")
    name = f"{folder.resolve().parent.name}-{folder.name}" if model else "default"
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / kind / f"{name}-{stamp}"
    n = 2
    while out.exists():
        out = Path("runs") / kind / f"{name}-{stamp}-{n}"
        n += 1
    return out


def _run(args: argparse.Namespace) -> int:
    from vlm.train.console import quiet_libraries

    quiet_libraries(bool(getattr(args, "verbose", False)))
    if args.compare_projectors:
        from vlm.eval.projectors import compare_projectors

        md = compare_projectors(args.compare_projectors, Path(args.out or "runs/projectors"), steps_scale=args.steps_scale,
                                experts=args.experts, limit=args.limit)
        print(md.read_text())
        return 0
    if args.phrasings:
        from vlm.eval.phrasing_run import evaluate_phrasings

        out = Path(args.out) if args.out else default_out(args.model, "eval_phrasings")
        evaluate_phrasings(args.model or Path(__file__).parents[1] / "weights" / "default", args.phrasings, out, seed=args.seed,
                           baseline=args.baseline or "", device=args.device, dtype=args.dtype)
        print((out / "phrasings.md").read_text())
        print(f"written to {out}")
        return 0
    if not args.model or not args.data:
        raise SystemExit("m3 eval: error: --model and --data are required (or --compare-projectors RECIPE).")
    from vlm.eval.harness import evaluate_model, evaluate_vqa_file

    out = Path(args.out) if args.out else default_out(args.model)
    data = Path(args.data)
    if data.is_dir():
        report = evaluate_model(args.model, data, out, experts=args.experts, limit=args.limit, max_new_tokens=args.max_new_tokens,
                                baseline=args.baseline or "", device=args.device, dtype=args.dtype)
    elif args.baseline:
        raise SystemExit(f"m3 eval: error: --baseline scores the test files of a --data folder; {data} is a file. "
                         "Give the folder of `m3 data instructions --split test`, or drop --baseline.")
    else:
        report = evaluate_vqa_file(args.model, data, out, fmt=args.format, image_root=args.image_root, experts=args.experts, limit=args.limit,
                                   device=args.device, dtype=args.dtype)
    print((out / "eval.md").read_text())
    print(json.dumps(report["headline"]))
    if "baseline" in report:
        print(json.dumps({"baseline": report["baseline"]["headline"]}))
    print(f"written to {out} (eval.md, eval.png, metrics.json)")
    return 0

"""``m3 train vision | align | ift | medical-ift | all``: a thin argparse layer over the stage functions.

    m3 train all --recipe tiny                       # the default model, end to end
    m3 train align --recipe micro --out runs/micro   # one stage; ift / medical-ift continue in --out
    m3 train ift --recipe micro --out runs/micro --resume   # continue after a kill
    python -m vlm.train.launch gpu -- train all --recipe base   # through accelerate launch
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]

_STAGES = ("align", "ift", "medical-ift")


def add_parsers(sub: Any) -> None:
    """Register ``train`` and its stage sub-commands."""
    train = sub.add_parser("train", help="train the VLM: vision | align | ift | medical-ift | all",
                           description="Run a training stage of the VLM (each resumes with --resume after a kill).")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    from vlm.train.vision import add_vision_parser

    add_vision_parser(stages)
    for name in _STAGES + ("all",):
        p = stages.add_parser(name, help=_HELP[name])
        p.add_argument("--recipe", default="tiny", help="recipe name: micro | tiny | base (default tiny)")
        p.add_argument("--out", help="run folder (default runs/<recipe>)")
        p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
        p.add_argument("--threads", type=int, help="CPU threads (recipe field `threads`)")
        if name == "all":
            p.add_argument("--install-default", action="store_true",
                           help="also replace the embedded default model (vlm/weights/default) with the result")
            p.add_argument("--no-eval", action="store_true", help="skip the evaluation and model card")
            p.add_argument("--experts", choices=("auto", "real", "truth"), default="auto",
                           help="experts behind the evaluation's tool calls: the trained ones (real), phantom ground "
                                "truth (truth), or real when their weights exist (auto, default)")
        else:
            p.add_argument("--init", help="model folder to start from (default: the previous stage's result in --out)")
            p.add_argument("--steps", type=int, help="steps of each phase of this stage (StageSpec.steps)")
            p.add_argument("--batch-size", type=int, help="samples per step (StageSpec.batch_size)")
            p.add_argument("--lr", type=float, help="peak learning rate (StageSpec.lr)")
            p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (StageSpec.checkpoint_every)")
            p.add_argument("--measurement-copies", type=int,
                           help="extra copies of each expert conversation with re-drawn mL / mm values (StageSpec.measurement_copies)")
        p.set_defaults(func=_run)


_HELP = {
    "align": "stage 2: projector alignment, then projector + LM on image-caption pairs",
    "ift": "stage 3: instruction tuning on visual questions",
    "medical-ift": "stage 4: expert conversations (tool call, tool result, grounded answer)",
    "all": "data, every stage, export, evaluation and model card",
}


def _run(args: argparse.Namespace) -> int:
    import sys

    from vlm.train.recipes import get_recipe

    recipe = get_recipe(args.recipe)
    if args.threads is not None:
        recipe.threads = args.threads
    out = Path(args.out or f"runs/{recipe.name}")
    if args.stage == "all":
        from vlm.train.pipeline import DEFAULT_MODEL_DIR, run_all

        final = run_all(recipe, out, resume=args.resume, install_to=DEFAULT_MODEL_DIR if args.install_default else None,
                        evaluate=not args.no_eval, experts=args.experts, command="m3 " + " ".join(sys.argv[1:]))
        print(f"model: {final}")
        return 0
    from vlm.train.align import run_align
    from vlm.train.ift import run_ift
    from vlm.train.medical_ift import run_medical_ift

    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "checkpoint_every": args.checkpoint_every,
                 "measurement_copies": args.measurement_copies}
    runner = {"align": run_align, "ift": run_ift, "medical-ift": run_medical_ift}[args.stage]
    final = runner(recipe, out, init=args.init, resume=args.resume, overrides={k: v for k, v in overrides.items() if v is not None})
    print(f"model: {final}")
    return 0

"""``m3 train vision | align | ift | medical-ift | all``: a thin argparse layer over the stage functions.

    m3 train all --recipe micro --out runs/micro            # stage 1 → align → ift → medical-ift → export → eval
    m3 train all --recipe tiny --encoder runs/enc/vision/encoder   # stage 1 skipped: the tower starts from that encoder
    m3 train all --recipe runs/micro/recipe.json --out runs/again  # a saved recipe trains again
    m3 train align --recipe micro --out runs/micro          # one stage; ift / medical-ift continue in --out
    m3 train all --out runs/micro --resume                  # continue after a kill, with the run's saved recipe
    python -m vlm.train.launch gpu -- train all --recipe base   # through accelerate launch

Every stage takes the same core flags (--recipe, --out, --resume, --force, --steps, --threads) and follows the
resume rules of ``vlm.train.run_folder``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]

_VLM_STAGES = ("align", "ift", "medical-ift")
_STAGES_OF = {"vision": ("vision",), "align": ("align",), "ift": ("ift",), "medical-ift": ("medical-ift",),
              "all": ("vision", "align", "ift", "medical-ift")}
_HELP = {
    "vision": "stage 1: distil the RADIO-style encoder from its teachers",
    "align": "stage 2: projector alignment, then projector + LM on image-caption pairs",
    "ift": "stage 3: instruction tuning on visual questions",
    "medical-ift": "stage 4: expert conversations (tool call, tool result, grounded answer)",
    "all": "every stage (vision → align → ift → medical-ift), export, evaluation and model card",
}


def add_parsers(sub: Any) -> None:
    """Register ``train`` and its stage sub-commands."""
    from vlm.train.vision import add_config_flags

    train = sub.add_parser("train", help="train the VLM: vision | align | ift | medical-ift | all",
                           description="Run a training stage of the VLM. Every stage writes under --out, resumes with --resume "
                                       "after a kill, and trains a finished stage again only with --force.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name in ("vision", *_VLM_STAGES, "all"):
        p = stages.add_parser(name, help=_HELP[name], description=_HELP[name] + ".")
        _core_flags(p, name)
        if name in ("align", "all"):
            p.add_argument("--encoder", default=None, help="trained stage-1 encoder folder to start the tower from (e.g. "
                           "<run>/vision/encoder); stage 1 is then not run (default: the run's own stage-1 result, else the "
                           "recipe's model.encoder_path)")
        if name == "vision":
            add_config_flags(p, skip=("output_dir", "steps", "threads"))
        elif name == "all":
            p.add_argument("--install-default", action="store_true",
                           help="also replace the embedded default model (vlm/weights/default) with the result")
            p.add_argument("--no-eval", action="store_true", help="skip the evaluation and model card")
            p.add_argument("--experts", choices=("auto", "real", "truth"), default="auto",
                           help="experts behind the evaluation's tool calls: the trained ones (real), phantom ground "
                                "truth (truth), or real when their weights exist (auto) (default: auto)")
        else:
            p.add_argument("--init", default=None, help="model folder to start from (default: the previous stage's result in --out)")
            p.add_argument("--batch-size", type=int, default=None, help="samples per step (default: the recipe's StageSpec.batch_size)")
            p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's StageSpec.lr)")
            p.add_argument("--checkpoint-every", type=int, default=None,
                           help="steps between checkpoints (default: the recipe's StageSpec.checkpoint_every)")
            p.add_argument("--measurement-copies", type=int, default=None,
                           help="extra copies of each expert conversation with re-drawn mL / mm values (default: the recipe's)")
        p.set_defaults(func=_run)


def _core_flags(p: argparse.ArgumentParser, stage: str) -> None:
    core = p.add_argument_group("core flags (the same for every stage)")
    core.add_argument("--recipe", default=None, metavar="NAME|FILE",
                      help="built-in recipe (micro | tiny | base) or a recipe file (.json, e.g. a run's recipe.json, or .toml) "
                           "(default: the saved recipe.json of the run in --out, else tiny)")
    core.add_argument("--out", default=None, help="run folder; every stage writes under it (default: runs/<recipe name>)")
    core.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoints, with its saved "
                                                            "recipe; a flag that disagrees with a checkpoint is refused")
    core.add_argument("--force", action="store_true", help="discard the checkpoints and results of the stage(s) asked for and train "
                                                           "them again (data and the other stages are kept)")
    what = "every phase of every stage and stage 1" if stage == "all" else ("distillation steps" if stage == "vision" else "steps of each phase of this stage")
    core.add_argument("--steps", type=int, default=None, help=f"training steps: {what} (default: the recipe's)")
    core.add_argument("--threads", type=int, default=None, help="CPU threads (default: the recipe's `threads`; 0: all cores)")


def _run(args: argparse.Namespace) -> int:
    from vlm.train.console import console, format_seconds, quiet_libraries, show_on_terminal, summary_table
    from vlm.train.pipeline import run_summary
    from vlm.train.recipes import load_recipe
    from vlm.train.run_folder import command_line, open_run, record_invocation, save_run_recipe

    show_on_terminal()
    quiet_libraries(bool(getattr(args, "verbose", False)))
    given = load_recipe(args.recipe) if args.recipe else None
    out = Path(args.out or f"runs/{given.name if given else 'tiny'}")
    if given is None and not args.resume and not (out / "recipe.json").is_file():
        given = load_recipe("tiny")  # a new run folder; one that holds a run trains with its saved recipe.json
    recipe = open_run(out, given, resume=args.resume)
    if args.threads is not None:
        recipe.threads = args.threads
    stages = _STAGES_OF[args.stage]
    _apply_flags(recipe, args, stages)
    _refuse_conflicts(recipe, out, stages, args)
    console.info("m3 train %s · recipe %r · run folder %s%s", args.stage, recipe.name, out,
                 " · resuming" if args.resume else (" · --force" if args.force else ""))
    with record_invocation(out, command_line()) as entry:
        save_run_recipe(out, recipe, stages=None if args.stage == "all" else stages)
        final = _dispatch(recipe, out, args)
        save_run_recipe(out, recipe, stages=None if args.stage == "all" else stages)
    rows = run_summary(out, stages)
    if rows:
        console.info("\n%s\n(time: training time of each phase over every invocation; this invocation took %s in all)",
                     summary_table(rows), format_seconds(entry["seconds"]))
    if args.stage == "all" and not args.no_eval:
        _print_eval(final)
    if args.force and args.stage in ("vision", "align", "ift"):
        later = [s for s in _STAGES_OF["all"][_STAGES_OF["all"].index(args.stage) + 1:] if (out / s).exists()]
        if later:
            console.info("note: %s in %s were trained from the previous %s result; train them again with --force.", ", ".join(later), out, args.stage)
    console.info("\nrun folder: %s (recipe: %s; commands: %s)", out, out / "recipe.json", out / "invocations.json")
    print(f"{'encoder' if args.stage == 'vision' else 'model'}: {final}")
    return 0


def _dispatch(recipe: Any, out: Path, args: argparse.Namespace) -> Path:
    from vlm.train.console import banner
    from vlm.train.pipeline import STAGE_TITLES, _stage_detail
    from vlm.train.run_folder import command_line, invocations

    if args.stage == "all":
        from vlm.train.pipeline import DEFAULT_MODEL_DIR, run_all

        return run_all(recipe, out, resume=args.resume, force=args.force, encoder=args.encoder,
                       install_to=DEFAULT_MODEL_DIR if args.install_default else None, evaluate=not args.no_eval,
                       experts=args.experts, command=command_line())
    if args.stage == "vision":
        from vlm.train.vision import run_vision_stage, vision_config

        cfg = vision_config(recipe, out)
        banner(1, 4, "vision", STAGE_TITLES["vision"], f"{cfg.steps} steps × batch {cfg.batch_size}, teachers {', '.join(cfg.teachers)} → {out / 'vision'}")
        return run_vision_stage(cfg, resume=args.resume, force=args.force, commands=invocations(out))
    from vlm.train.align import run_align
    from vlm.train.ift import run_ift
    from vlm.train.medical_ift import run_medical_ift

    index = {"align": 2, "ift": 3, "medical-ift": 4}[args.stage]
    banner(index, 4, args.stage, STAGE_TITLES[args.stage], _stage_detail(recipe, args.stage, out))
    extra = {"encoder": args.encoder} if args.stage == "align" else {}
    runner = {"align": run_align, "ift": run_ift, "medical-ift": run_medical_ift}[args.stage]
    return runner(recipe, out, init=args.init, resume=args.resume, force=args.force, **extra)


def _apply_flags(recipe: Any, args: argparse.Namespace, stages: tuple[str, ...]) -> None:
    """Write the flags given into the recipe (so the run's saved recipe.json says what was trained)."""
    from vlm.train.stages import STAGE_PHASES
    from vlm.train.vision import vision_flag_values

    fields = {"steps": args.steps}
    for name in ("batch_size", "lr", "checkpoint_every", "measurement_copies"):
        fields[name] = getattr(args, name, None)
    fields = {k: v for k, v in fields.items() if v is not None}
    for stage in stages:
        if stage == "vision":
            recipe.vision = {**recipe.vision, **vision_flag_values(args), **({"steps": args.steps} if args.steps is not None else {})}
            continue
        for phase in STAGE_PHASES[stage]:
            for name, value in fields.items():
                setattr(recipe.stages[phase], name, value)


def _refuse_conflicts(recipe: Any, out: Path, stages: tuple[str, ...], args: argparse.Namespace) -> None:
    """Before anything is written: a flag that disagrees with a stage's checkpoint or finished result is refused
    (unless --force, which trains that stage again)."""
    if args.force:
        return
    from vlm.train.stages import STAGE_PHASES, check_stage_settings, latest_checkpoint
    from vlm.train.vision import check_vision_settings, vision_config

    for stage in stages:
        if stage == "vision":
            if args.stage == "vision" or (recipe.vision_stage and not getattr(args, "encoder", None)):
                check_vision_settings(vision_config(recipe, out), out / "vision")
            continue
        for phase in STAGE_PHASES[stage]:
            phase_dir = out / stage / phase
            ckpt = latest_checkpoint(phase_dir)
            if (phase_dir / "done.json").is_file():
                check_stage_settings(phase, recipe.stages[phase], phase_dir / "final" / "stage.json", "finished result", stage)
            elif ckpt is not None:
                check_stage_settings(phase, recipe.stages[phase], ckpt / "stage.json", f"checkpoint {ckpt.name}", stage)


def _print_eval(final: Path) -> None:
    import json

    from vlm.eval.tables import headline_rows, markdown_table
    from vlm.train.console import console

    path = Path(final) / "eval_metrics.json"
    if path.is_file():
        report = json.loads(path.read_text())
        console.info("\nevaluation (%s):\n%s", Path(final).parent / "eval" / "eval.md",
                     markdown_table(["metric", "value", "target", "met"], headline_rows(report["headline"])))

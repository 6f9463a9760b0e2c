"""``m3 experts list | run | train | eval`` — a thin argparse layer over ``experts.registry``, ``experts.outputs``,
``experts.train`` and ``experts.family_eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parsers", "cmd_list", "cmd_run", "cmd_train", "cmd_eval"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experts", help="expert models: list, run on a study, train, evaluate")
    sub = p.add_subparsers(dest="experts_command", metavar="ACTION")

    ls = sub.add_parser("list", help="the registered experts and their model cards")
    ls.add_argument("--json", action="store_true", help="print the tool definitions as JSON")
    _experts_dir_argument(ls)
    ls.set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="run an expert on a study; write DICOM SEG, overlay PNG, findings JSON")
    run.add_argument("name", help="expert name (see `m3 experts list`)")
    run.add_argument("study", help="study folder, DICOM file, NIfTI file or zip")
    run.add_argument("--targets", nargs="+",
                     help="ct_segmentation targets, e.g. organs 'liver tumor' (default: every structure it segments)")
    run.add_argument("--series", help="series index or UID suffix to use (default: chosen by modality)")
    run.add_argument("--out", default=None, help="output folder (default: ./expert_<name>)")
    _experts_dir_argument(run)
    run.set_defaults(func=cmd_run)

    tr = sub.add_parser("train", help="train a built-in expert on phantom studies generated in memory",
                        description="Train a built-in expert on phantom studies generated in memory. Checkpoints go to "
                                    "RUN_DIR/NAME/; the finished expert to WEIGHTS_ROOT/NAME/ (never the shipped bundle unless "
                                    "named). A run folder that already holds a checkpoint needs --resume (continue it with its "
                                    "saved settings) or --force (discard it and start again).")
    tr.add_argument("name", help="ct_segmentation | mri_brain_tumor | cxr_classification")
    recipe = " (default: the expert's recipe; with --resume: the run's)"
    tr.add_argument("--seed", type=int, help="seed of the training phantoms, initial weights and batches (default 0; with --resume: the run's)")
    tr.add_argument("--steps", type=int, help="optimizer steps" + recipe)
    tr.add_argument("--batch-size", type=int, help="patches or images per step" + recipe)
    tr.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule" + recipe)
    tr.add_argument("--n-train", type=int, help="number of training phantoms" + recipe)
    tr.add_argument("--n-val", type=int, help="number of validation phantoms" + recipe)
    tr.add_argument("--n-test", type=int, help="number of held-out phantoms measured for the model card" + recipe)
    tr.add_argument("--val-every", type=int, help="validate and save a checkpoint every this many steps" + recipe)
    tr.add_argument("--run-dir", default="runs/experts", help="checkpoints, loss curve and metrics go to RUN_DIR/NAME/ (default runs/experts)")
    tr.add_argument("--weights-root", default=None, help="where the trained expert's folder NAME/ is written (default: RUN_DIR/weights; "
                                                         "the shipped experts/weights/ changes only when named here)")
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a busy machine)")
    again = tr.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR/NAME from its newest checkpoint with its saved "
                                                             "recipe, seed and settings; a flag that disagrees with them is refused")
    again.add_argument("--force", action="store_true", help="discard the checkpoint in RUN_DIR/NAME and train from step 0")
    tr.add_argument("--init-from", help="weights folder to start from, e.g. experts/weights/NAME or an earlier run's RUN_DIR/weights/NAME "
                                         "(default: random weights; with --resume: the run's)")
    tr.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="bfloat16 forward pass; auto: only where the CPU has native bfloat16 (emulated it is ~30x slower); "
                         "with --resume: the run's (default auto)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe setting, e.g. lesion_weight=2, lesion_rate=0.9, 'crop_ratios.liver tumor=8', refresh_every=4 "
                         "(ct_segmentation: a new phantom every 4 steps); repeatable "
                         "(default: none, the recipe as it is; with --resume: the run's)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="run the experts on held-out phantoms of family A and family B (drawn another way) "
                                     "through DICOM and ingest; write results.md / .json / .png")
    ev.add_argument("--kind", nargs="+", choices=("ct", "mri", "cxr"), default=["ct", "mri", "cxr"],
                    help="phantom kinds (default: all, ct mri cxr)")
    ev.add_argument("--family", nargs="+", choices=("a", "b"), default=["a", "b"], help="phantom families (default: a b)")
    ev.add_argument("--n", type=int, default=8, help="held-out cases per family and kind (default 8)")
    ev.add_argument("--out", default="runs/family_eval", help="output folder (default runs/family_eval)")
    ev.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    _experts_dir_argument(ev)
    ev.set_defaults(func=cmd_eval)


def _experts_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experts-dir", default=None,
                   help="site experts folder, one sub-folder per expert (default: models.experts_dir / "
                        "$M3_MODELS_EXPERTS_DIR, else the embedded bundle)")
    p.add_argument("--embedded-fallback", action="store_true",
                   help="with --experts-dir: offer the embedded experts the folder lacks")


def _registry(args: argparse.Namespace):
    """``--experts-dir``'s experts, else the process default (set from the config by the ``m3`` front door)."""
    from experts.registry import default_registry, registry_for

    if getattr(args, "experts_dir", None):
        return registry_for(args.experts_dir, embedded_fallback=args.embedded_fallback)
    return default_registry()


def cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if args.json:
        print(json.dumps(reg.tool_schemas(), indent=2))
        return 0
    for name in reg.names():
        expert = reg.get(name)
        print(f"{name}  [{', '.join(expert.modalities)}]  {expert.version}  ({reg.sources.get(name) or 'registered'})")
        print(f"    {expert.description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from experts.outputs import run_on_study

    arguments = {}
    if args.targets:
        arguments["targets"] = args.targets[0] if len(args.targets) == 1 else args.targets
    reg = _registry(args)
    written = run_on_study(args.name, args.study, arguments, out_dir=args.out, series=args.series, registry=reg)
    print(written["summary"])
    print(f"  expert: {args.name} {reg.get(args.name).version} ({reg.sources.get(args.name) or 'registered'})")
    for key in ("findings", "overlay", "seg", "mask"):
        if written.get(key):
            print(f"  {key}: {written[key]}")
    for note in written.get("notes", []):
        print(f"  note: {note}")
    return 0


def _key_values(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}.")
        out[key.strip()] = value.strip()
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from experts.train import TrainConfig, train_expert

    cfg = TrainConfig(
        name=args.name, seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr, n_train=args.n_train,
        n_val=args.n_val, n_test=args.n_test, val_every=args.val_every, run_dir=args.run_dir,
        weights_root=args.weights_root, threads=args.threads, resume=args.resume, force=args.force,
        bf16={"auto": None, "on": True, "off": False}[args.bf16],
        init_from=args.init_from, overrides=_key_values(args.overrides),
    )
    metrics = train_expert(cfg)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from experts.family_eval import evaluate_families

    if args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}.")
    torch.set_num_threads(max(1, args.threads))
    evaluate_families(list(args.kind), args.n, args.out, families=tuple(args.family), registry=_registry(args), progress=True)
    print((Path(args.out) / "results.md").read_text())
    print(f"  written: {args.out}/results.md, results.json, results.png")
    return 0

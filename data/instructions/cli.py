"""``m3 data instructions``: write LLaVA-style training data from phantoms (thin layer over
``data.instructions.build_datasets``)."""

from __future__ import annotations

import argparse

__all__ = ["add_parsers"]


def add_parsers(data_sub) -> None:
    """Register ``instructions`` under the ``m3 data`` sub-command parsers ``data_sub``."""
    p = data_sub.add_parser("instructions", help="write align / ift / medical-ift JSON from synthetic phantoms")
    p.add_argument("--stage", required=True, choices=("align", "ift", "medical-ift", "all"), help="training stage (all = the three)")
    p.add_argument("--n", type=int, required=True, help="cases per kind")
    p.add_argument("--out", required=True, help="output folder (images/ and <stage>_<split>.json)")
    p.add_argument("--seed", type=int, default=0, help="seed block (cases of different blocks never repeat) (default 0)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"),
                   help="split; its seeds never overlap the others (default train)")
    p.add_argument("--kinds", default="ct,mri,cxr", help="comma-separated phantom kinds (default ct,mri,cxr)")
    p.add_argument("--questions", type=int, default=4, help="VQA questions per case for ift (default 4)")
    p.add_argument("--clinician", type=int, default=None,
                   help="clinician-style expert conversations per case added to medical-ift (default 4 in the train split, 0 in val / test)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from data.instructions.dataset import STAGES, ClinicianMix, build_datasets

    mix = None if args.clinician is None else ClinicianMix(per_case=args.clinician, splits=("train", "val", "test"))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    stages = STAGES if args.stage == "all" else (args.stage,)
    paths = build_datasets({k: args.n for k in kinds}, args.out, args.seed, stages, args.split,
                           questions_per_case=args.questions, progress=True, clinician=mix)
    for stage, path in paths.items():
        print(f"{stage}: {path}")
    return 0

"""``m3 data synth``: write seeded phantom studies (a thin layer over ``data.phantoms.synthesize``)."""

from __future__ import annotations

import argparse

__all__ = ["add_parsers"]


def add_parsers(data_sub) -> None:
    """Register ``synth`` under the ``m3 data`` sub-command parsers ``data_sub``."""
    p = data_sub.add_parser("synth", help="write synthetic phantom studies (DICOM + labels + truth)")
    p.add_argument("--kind", required=True, choices=("ct", "mri", "cxr"), help="phantom kind")
    p.add_argument("--n", type=int, default=1, help="number of studies (default 1)")
    p.add_argument("--out", required=True, help="output folder; one sub-folder per study")
    p.add_argument("--seed", type=int, default=0, help="first seed; studies use seed .. seed+n-1 (default 0)")
    p.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                   help="grid size: I J K for ct/mri, columns rows for cxr (default: the kind's default)")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from data.phantoms import synthesize

    options = {}
    if args.shape:
        options["shape"] = tuple(args.shape)
    paths = synthesize(args.kind, args.n, args.out, seed=args.seed, progress=True, **options)
    print(f"wrote {len(paths)} {args.kind} stud{'y' if len(paths) == 1 else 'ies'} to {args.out}")
    return 0

"""``m3 data``: ``info PATH...`` (series table), ``deid IN OUT`` (de-identified DICOM copies), and the
phantom / training-data generators' sub-commands when those packages are present."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys

__all__ = ["add_parsers", "format_studies"]

_PLUGINS = ("data.phantoms.cli", "data.instructions.cli")  # each defines add_parsers(data_sub)


def add_parsers(sub) -> None:
    """Register ``m3 data`` and its sub-commands on the ``m3`` sub-parsers ``sub``."""
    parser = sub.add_parser("data", help="ingest, de-identify and synthesise studies")
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    info = data_sub.add_parser("info", help="load a folder, files or .zip and print its series table")
    info.add_argument("paths", nargs="+", help="folder(s), file(s) or .zip archive(s) of one upload")
    info.add_argument("--json", action="store_true", help="print the table as JSON")
    info.set_defaults(func=_run_info)
    deid = data_sub.add_parser("deid", help="write de-identified copies of every DICOM file of an upload")
    deid.add_argument("input", help="folder, file or .zip")
    deid.add_argument("output", help="output folder (<study>/<series>/<instance>.dcm + deid_manifest.json)")
    deid.set_defaults(func=_run_deid)
    for module in _PLUGINS:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).add_parsers(data_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def format_studies(studies) -> str:
    """The series table (modality, description, shape, spacing, files, warnings), then skipped objects and errors."""
    lines = []
    columns = ("series", "modality", "description", "shape", "spacing_mm", "files", "warnings")
    for study in studies:
        lines.append(f"Study …{study.uid[-12:]}  {study.description}  ({len(study.series)} series)")
        rows = [[str(s.summary_row()[c]) for c in columns] for s in study.series]
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        lines.extend("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)
        for s in study.series:
            lines.extend(f"  warning [{s.uid[-12:]}]: {w}" for w in s.warnings)
        lines.extend(f"  skipped {o.name}: {o.reason}" for o in study.skipped)
        lines.extend(f"  error {e}" for e in study.errors)
        if study.deid_manifest:
            m = study.deid_manifest
            lines.append(f"  de-identified: {m['profile']}; {len(m['attributes'])} attributes changed"
                         + ("; BURNED-IN ANNOTATION flagged" if m.get("burned_in_annotation") else ""))
    return "\n".join(lines)


def _run_info(args: argparse.Namespace) -> int:
    from data.ingest import load_studies

    studies = load_studies(args.paths, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps([{"study": s.uid, "description": s.description,
                           "series": [dict(x.summary_row(), warning_text=x.warnings) for x in s.series],
                           "skipped": [{"name": o.name, "reason": o.reason} for o in s.skipped],
                           "errors": [str(e) for e in s.errors], "deid_manifest": s.deid_manifest} for s in studies],
                         indent=2))
    else:
        print(format_studies(studies))
    return 0 if any(s.series for s in studies) else 1


def _run_deid(args: argparse.Namespace) -> int:
    from data.ingest import write_deidentified

    summary = write_deidentified(args.input, args.output)
    print(f"wrote {summary['written']} de-identified files to {args.output} "
          f"({len(summary['skipped'])} skipped, {len(summary['errors'])} errors)")
    for error in summary["errors"]:
        print(f"  error {error}")
    if summary["manifest"].get("burned_in_annotation"):
        print("  warning: some images are flagged Burned In Annotation = YES; their pixels may show identity.")
    return 0 if summary["written"] else 1

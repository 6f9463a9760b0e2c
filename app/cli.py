"""``m3 serve``, ``m3 demo``, ``m3 hash-password``, ``m3 manifest``, ``m3 audit verify|export`` (and ``m3 health``
from ``app.health``): thin argparse layers over ``app.server.serve``, ``app.auth.hash_password``,
``experts.manifest`` and ``app.audit``."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys
from pathlib import Path

from vlm.cli import add_placement_arguments
from vlm.device import resolve_device

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the web app (login required unless bound to localhost)")
    _common(p)
    p.add_argument("--model", type=Path, help="VLM checkpoint folder (default: models.model_dir, else the embedded bundle); "
                                              "an export's experts/ folder is served with it")
    p.add_argument("--experts-dir", type=Path, help="site experts folder (default: models.experts_dir, else the export's "
                                                    "experts, else the embedded bundle)")
    p.add_argument("--config", help="config file (TOML; default $M3_CONFIG)")
    p.set_defaults(func=_serve)

    d = sub.add_parser("demo", help="run the web app on the embedded default model, on this machine only")
    _common(d)
    d.set_defaults(func=_demo, config=None, model=None, experts_dir=None)

    h = sub.add_parser("hash-password", help="print a salted scrypt hash for a users file or $M3_USERS")
    h.add_argument("--user", default="", help="also print the 'user:hash' form for $M3_USERS (default: none, the hash alone)")
    h.set_defaults(func=_hash_password)

    m = sub.add_parser("manifest", help="verify a model folder against its manifest.json, or sign it after editing its card",
                       description="verify: list every file that differs from the folder's manifest (exit 1 if any). "
                                   "write: record every file's SHA-256 (after editing a model card or metrics by hand).")
    m.add_argument("action", choices=("verify", "write"), help="verify: compare every file with the manifest; write: sign the folder again")
    m.add_argument("folder", type=Path, help="model folder (e.g. vlm/weights/default, experts/weights/ct_segmentation)")
    m.set_defaults(func=_manifest)

    a = sub.add_parser("audit", help="check the audit log's hash chain, or export a date range of it")
    actions = a.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = actions.add_parser("verify", help="exit 1 and name each record edited, inserted or deleted since it was written")
    e = actions.add_parser("export", help="the records of a date range, as written (JSON lines), to a file or stdout")
    e.add_argument("--since", help="first date or time, ISO (2025-01-01 or 2025-01-01T08:00+01:00); default: the oldest kept")
    e.add_argument("--until", help="last date (that whole day) or time (excluded), ISO; default: now")
    e.add_argument("--out", type=Path, help="file to write (default: stdout)")
    for action in (v, e):
        action.add_argument("--log", type=Path, help="audit log (default: audit.log_path of the config)")
        action.add_argument("--config", help="config file (default $M3_CONFIG)")
    v.set_defaults(func=_audit_verify)
    e.set_defaults(func=_audit_export)

    from app.health import add_parsers as add_health

    add_health(sub)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from config: 7860)")
    add_placement_arguments(p, default=None)  # unset: models.device / models.dtype of the config (default auto)


def _serve(args: argparse.Namespace) -> int:
    from app.config import load_config
    from app.server import serve

    config = load_config(args.config)
    if args.host:
        config.server = dataclasses.replace(config.server, host=args.host)
    if args.port:
        config.server = dataclasses.replace(config.server, port=args.port)
    if args.model:
        config.models = dataclasses.replace(config.models, model_dir=args.model)
    if args.experts_dir:
        config.models = dataclasses.replace(config.models, experts_dir=args.experts_dir)
    for name in ("device", "dtype"):
        if getattr(args, name):
            config.models = dataclasses.replace(config.models, **{name: getattr(args, name)})
    config.validate()
    resolve_device(config.models.device, config.models.dtype)  # a GPU asked for and absent refuses the start here
    serve(config)  # logs the address once the login, model and page are ready (refusals come first)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """``m3 serve`` with the same settings (models, experts, audit), but on loopback unless ``--host`` says otherwise:
    the image's config binds 0.0.0.0 for ``m3 serve``; a demo stays on this machine."""
    args.host = args.host or "127.0.0.1"
    return _serve(args)


def _manifest(args: argparse.Namespace) -> int:
    from experts.manifest import verify_manifest, write_manifest

    if args.action == "write":
        print(f"wrote {write_manifest(args.folder)}")
        return 0
    files = verify_manifest(args.folder)["files"]  # ManifestError → "m3: error: ..." and exit 1
    print(f"{args.folder}: all {len(files)} files match the manifest")
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    from app.auth import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty() and getpass.getpass("again: ") != password:
        print("m3: error: the passwords differ; nothing was printed.", file=sys.stderr)
        return 1
    encoded = hash_password(password, username=args.user)  # PasswordPolicyError → "m3: error: ..." and exit 1
    print(f"{args.user}:{encoded}" if args.user else encoded)
    return 0


def _audit_log_path(args: argparse.Namespace) -> Path:
    from app.config import load_config

    return args.log or load_config(args.config).audit.log_path


def _audit_verify(args: argparse.Namespace) -> int:
    from app.audit import verify_audit_log

    path = _audit_log_path(args)
    report = verify_audit_log(path)
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        for problem in report.problems:
            print(f"TAMPERED: {problem}", file=sys.stderr)
        print(f"{path}: the hash chain is broken in {len(report.problems)} place(s); keep a copy of the files as they "
              "are and compare with your backups.", file=sys.stderr)
        return 1
    print(f"{path}: {report.records} record(s) in {report.files} file(s), seq {report.first_seq}-{report.last_seq}, "
          "chain intact")
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    from app.audit import export_audit_log, parse_time

    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until, end_of_day=True) if args.until else None
    lines = export_audit_log(_audit_log_path(args), since, until)
    out = args.out.open("wb") if args.out else sys.stdout.buffer
    count = 0
    try:
        for line in lines:
            out.write(line + b"\n")
            count += 1
    finally:
        if args.out:
            out.close()
        else:
            out.flush()
    print(f"exported {count} record(s)", file=sys.stderr)
    return 0

"""``m3 pacs outbox list | retry | drop``: a thin argparse layer over ``app.pacs_outbox.Outbox`` and
``app.pacs.PacsClient.retry_outbox`` for the administrator of the PACS send queue. Batches older than
``[pacs] outbox_max_age_days`` are listed as expired, never sent, and dropped with ``drop --expired``. Retries and
drops are written to the audit log (who, which batch, how many objects; never a patient identifier)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs", help="the PACS send queue (outbox): list, retry or drop the batches waiting there")
    actions = p.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)
    box = actions.add_parser("outbox", help="results written back to the PACS that wait in pacs.outbox_dir",
                             description="Results that could not be sent to the PACS wait in the outbox (pacs.outbox_dir) "
                                         "as batches named <UTC time>-<id>. List them, send them again, or drop them (their "
                                         "files are deleted and never sent). Batches older than pacs.outbox_max_age_days "
                                         "are expired: never sent, dropped with `drop --expired` (e.g. daily from cron).")
    verbs = box.add_subparsers(dest="outbox_command", metavar="VERB", required=True)

    ls = verbs.add_parser("list", help="each waiting batch: name, age, objects waiting, attempts, last error")
    ls.add_argument("--json", action="store_true", help="print the batches as a JSON list instead of a table")
    ls.set_defaults(func=_list)

    retry = verbs.add_parser("retry", help="send waiting batches to the PACS again, expired ones excepted (exit 1 while any "
                                           "still waits)")
    retry.add_argument("names", nargs="*", metavar="BATCH", help="batch names to send (default: every waiting batch, oldest first)")
    retry.set_defaults(func=_retry)

    drop = verbs.add_parser("drop", help="delete waiting batches without sending them (recorded in the audit log)")
    drop.add_argument("names", nargs="*", metavar="BATCH", help="batch names to drop (see `m3 pacs outbox list`)")
    drop.add_argument("--older-than", type=float, metavar="DAYS",
                      help="drop every batch written more than DAYS days ago (default: none, only the batches named)")
    drop.add_argument("--expired", action="store_true", help="drop every batch older than pacs.outbox_max_age_days (expiry)")
    drop.set_defaults(func=_drop)

    for verb in (ls, retry, drop):
        verb.add_argument("--config", help="config file (TOML; default $M3_CONFIG)")
        verb.add_argument("--outbox", type=Path, help="outbox folder (default: pacs.outbox_dir of the config)")


def _config(args: argparse.Namespace):
    import dataclasses

    from app.config import load_config

    config = load_config(args.config)
    if args.outbox:
        config.pacs = dataclasses.replace(config.pacs, outbox_dir=args.outbox)
    return config


def _list(args: argparse.Namespace) -> int:
    from app.pacs_outbox import Outbox

    config = _config(args)
    now = dt.datetime.now(dt.timezone.utc)
    outbox = Outbox(config.pacs.outbox_dir)
    batches = outbox.batches()
    expired = {b.name for b in outbox.past_max_age(config.pacs.outbox_max_age_days, now)}
    if args.json:
        print(json.dumps([{**b.to_json(now), "expired": b.name in expired} for b in batches], indent=2))
        return 0
    if not batches:
        print(f"The outbox ({config.pacs.outbox_dir}) is empty: nothing waits to be sent.")
        return 0
    print(f"{len(batches)} batch(es) waiting in {config.pacs.outbox_dir}:")
    print(f"{'batch':<26} {'written (UTC)':<20} {'age (d)':>8} {'objects':>7} {'attempts':>8} {'state':<8} last error")
    for b in batches:
        state = "expired" if b.name in expired else "waiting"
        print(f"{b.name:<26} {b.created:%Y-%m-%d %H:%M:%S}  {b.age_days(now):>8.1f} {b.objects:>7} {b.attempts:>8} {state:<8} "
              f"{b.last_error or '-'}")
    if expired:
        print(f"{len(expired)} batch(es) are older than pacs.outbox_max_age_days ({config.pacs.outbox_max_age_days:g}) and "
              "will not be sent; `m3 pacs outbox drop --expired` deletes them.")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from app.pacs import PacsClient

    config = _config(args)
    client = PacsClient(config)
    report = client.retry_outbox(args.names or None)
    for error in report.errors:
        print(f"still waiting: {error}")
    print(f"{report.sent} batch(es) sent, {report.pending} still waiting in {config.pacs.outbox_dir}.")
    if report.expired:
        print(f"{report.expired} expired batch(es) (older than pacs.outbox_max_age_days = "
              f"{config.pacs.outbox_max_age_days:g}) were not sent; `m3 pacs outbox drop --expired` deletes them.")
    _audit(config, "pacs_outbox_retry", batches=list(args.names) or "all", sent=report.sent, pending=report.pending,
           expired=report.expired)
    return 1 if report.pending or report.expired else 0


def _drop(args: argparse.Namespace) -> int:
    from app.pacs_outbox import Outbox, OutboxError

    if not args.names and args.older_than is None and not args.expired:
        raise OutboxError("name the batches to drop (see `m3 pacs outbox list`) or give --older-than DAYS or --expired; "
                          "nothing was dropped.")
    config = _config(args)
    outbox = Outbox(config.pacs.outbox_dir)
    if args.expired and not config.pacs.outbox_max_age_days > 0:
        raise OutboxError("--expired needs pacs.outbox_max_age_days > 0, got 0 (no expiry); give --older-than DAYS "
                          "instead. Nothing was dropped.")
    chosen = [outbox.get(name) for name in args.names]  # every name checked before anything is deleted
    if args.older_than is not None:
        chosen += [b for b in outbox.expired(args.older_than) if b.name not in {c.name for c in chosen}]
    if args.expired:
        chosen += [b for b in outbox.past_max_age(config.pacs.outbox_max_age_days) if b.name not in {c.name for c in chosen}]
    now = dt.datetime.now(dt.timezone.utc)
    for batch in chosen:
        outbox.drop(batch.name)
        print(f"dropped {batch.name}: {batch.objects} object(s) never sent, written {batch.age_days(now):.1f} days ago, "
              f"{batch.attempts} attempt(s)")
        _audit(config, "pacs_outbox_drop", batch=batch.name, objects=batch.objects, attempts=batch.attempts,
               age_days=round(batch.age_days(now), 2), reason="expired" if batch.name not in args.names else "by name")
    print(f"{len(chosen)} batch(es) dropped; {len(outbox.pending())} still waiting in {config.pacs.outbox_dir}.")
    return 0


def _audit(config, event: str, **fields) -> None:
    """One audit record for an administrator's outbox action (user: the operating-system account)."""
    from app.audit import AuditLog

    AuditLog(config.audit.log_path, max_bytes=int(config.audit.max_mb * 2**20), keep_files=config.audit.keep_files).event(
        event, user=f"cli:{getpass.getuser()}", **fields)

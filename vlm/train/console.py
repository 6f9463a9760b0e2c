"""What a training run tells the person who started it: a banner per stage, a summary table at the end, and
library chatter (accelerate's checkpoint lines, transformers' weight-loading bars and deprecation notes,
per-file ingest lines) kept at DEBUG unless ``m3 -v``.

Messages go to the ``vlm.train.console`` logger; ``show_on_terminal`` (called by the CLI) prints them
plainly on stderr, so a library caller gets them as ordinary log records instead.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, Iterable

__all__ = ["console", "show_on_terminal", "quiet_libraries", "banner", "summary_table", "format_seconds"]

console = logging.getLogger("vlm.train.console")

# Loggers whose INFO lines describe the libraries' own work, not the run's (one line per saved file, per study).
_CHATTY = ("accelerate", "absl", "data.ingest", "httpx", "matplotlib", "vlm.train.build", "vlm.agent")


def show_on_terminal() -> None:
    """Print ``console`` messages on stderr without a level prefix (once per process)."""
    if any(getattr(h, "_m3_console", False) for h in console.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._m3_console = True  # type: ignore[attr-defined]
    console.addHandler(handler)
    console.setLevel(logging.INFO)
    console.propagate = False


def quiet_libraries(verbose: bool) -> None:
    """Unless ``verbose``: the chatty loggers at WARNING, transformers' progress bars and warnings off, and
    deprecation warnings ignored (all of them show again with ``m3 -v``)."""
    if verbose:
        return
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)


def banner(index: int, total: int, stage: str, what: str, detail: str = "") -> None:
    """``== stage 2/4 · align: projector alignment ... ==`` and, on a second line, ``detail``."""
    console.info("\n== stage %d/%d · %s: %s ==", index, total, stage, what)
    if detail:
        console.info("   %s", detail)


def format_seconds(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def summary_table(rows: Iterable[dict[str, Any]]) -> str:
    """The end-of-run table: one row per phase (stage, phase, steps, loss first → last, held-out probe loss
    before → after, wall time of this invocation, status)."""
    header = ["stage", "phase", "steps", "train loss (first → last)", "probe loss (before → after)", "time", "status"]
    body = []
    for r in rows:
        body.append([r.get("stage", ""), r.get("phase", ""), str(r.get("steps", "")), _arrow(r.get("loss_first"), r.get("loss_last")),
                     _arrow(r.get("probe_before"), r.get("probe_after")), format_seconds(r.get("seconds")), r.get("status", "")])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def _arrow(a: float | None, b: float | None) -> str:
    if a is None and b is None:
        return "—"
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    return f"{fmt(a)} → {fmt(b)}"

"""One micro-recipe run of the whole pipeline, shared by the tests of this folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """``m3 train all --recipe micro --experts truth`` (ground-truth experts for the small evaluation) in a temp
    folder, as a researcher types it (so the run records its command); what it printed is the
    ``micro_run_output`` fixture."""
    out = tmp_path_factory.mktemp("micro")
    res = subprocess.run([sys.executable, "-m", "app.main", "train", "all", "--recipe", "micro", "--out", str(out), "--experts", "truth"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    terminal_output(out).write_text(res.stderr)
    return out, out / "final"


@pytest.fixture(scope="session")
def micro_run_output(micro_run) -> str:
    """What the micro run printed on the terminal (stderr: banners, progress bars, tables)."""
    out, _ = micro_run
    return terminal_output(out).read_text()


def terminal_output(out: Path) -> Path:
    return out.with_name(out.name + "-stderr.txt")  # beside the run folder, not in it

"""`m3 train all --recipe FILE` killed (SIGKILL) in each of its four stages resumes with `--resume` to the same
weights, tensor for tensor, as the uninterrupted run of the same recipe file. Slow: five pipelines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.test_run_workflow import _same_weights

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# The file the kill waits for in each stage: its first checkpoint (the stage is then still running).
_FIRST_CHECKPOINT = {
    "vision": ("vision", "checkpoint.pt"),
    "align": ("align/align", "checkpoints/step_*"),
    "ift": ("ift/ift", "checkpoints/step_*"),
    "medical-ift": ("medical-ift/medical-ift", "checkpoints/step_*"),
}


def _train_all(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "app.main", "train", "all", "--recipe", str(recipe), "--out", str(out), "--no-eval", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def longer_micro(tmp_path_factory):
    """The micro recipe as a file, with more steps after each first checkpoint (room to kill), and its
    uninterrupted run."""
    from vlm.train.recipes import get_recipe

    folder = tmp_path_factory.mktemp("recipe")
    recipe = get_recipe("micro")
    recipe.vision = {**recipe.vision, "steps": 12, "checkpoint_every": 2}
    for phase, spec in recipe.stages.items():
        spec.steps, spec.checkpoint_every = 24, 3
    path = recipe.save(folder)
    ref = folder / "reference"
    proc = _train_all(path, ref)
    log = proc.communicate(timeout=1200)[0]
    assert proc.returncode == 0, log[-3000:]
    return path, ref


@pytest.mark.parametrize("stage", list(_FIRST_CHECKPOINT))
def test_a_sigkill_in_each_stage_resumes_to_the_same_model(longer_micro, tmp_path, stage):
    recipe, ref = longer_micro
    out = tmp_path / "run"
    where, pattern = _FIRST_CHECKPOINT[stage]
    proc = _train_all(recipe, out)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if any(not p.name.endswith(".tmp") for p in (out / where).glob(pattern)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()[-2000:]
    marker = out / where / "done.json"
    assert not marker.exists(), f"{stage} finished before the kill"

    done = _train_all(recipe, out, "--resume")
    log = done.communicate(timeout=1200)[0]
    assert done.returncode == 0, log[-3000:]
    assert "resumed at step" in log
    assert _same_weights(out / "final", ref / "final")
    assert _same_weights(out / "vision" / "encoder", ref / "vision" / "encoder")
    commands = json.loads((out / "invocations.json").read_text())
    assert [c["outcome"] for c in commands] == ["killed or lost (no end recorded)", "finished"]

"""A stage killed mid-way resumes from its last atomic checkpoint: same step count, the loss curve goes on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _train(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "app.main", "train", "ift", "--recipe", "micro", "--out", str(out), "--init",
           str(out / "start"), "--steps", "30", "--checkpoint-every", "5", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_mid_stage_then_resume(micro_run, tmp_path):
    out_run, _ = micro_run
    out = tmp_path / "run"
    shutil.copytree(out_run / "data", out / "data")
    shutil.copytree(out_run / "align" / "align" / "final", out / "start")
    phase = out / "ift" / "ift"
    proc = _train(out)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (phase / "checkpoints" / "step_000010").is_dir():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()[-2000:]
    assert not (phase / "done.json").exists()
    kept = sorted(p.name for p in (phase / "checkpoints").iterdir() if not p.name.endswith(".tmp"))  # a .tmp is a save cut short
    resumed_from = int(kept[-1].split("_")[1])
    assert 10 <= resumed_from < 30
    assert json.loads((phase / "checkpoints" / kept[-1] / "recipe.json").read_text())["name"] == "micro"

    done = _train(out, "--resume")
    log = done.stdout.read()
    assert done.wait(timeout=240) == 0, log[-2000:]
    metrics = json.loads((phase / "metrics.json").read_text())
    steps = [h[0] for h in metrics["history"]]
    assert steps == list(range(1, 31))  # no step lost or repeated
    losses = [h[1] for h in metrics["history"]]
    after = sum(losses[resumed_from:resumed_from + 5]) / 5
    assert after < sum(losses[:5]) / 5  # the curve continues from the trained weights, not from scratch
    assert metrics["probe_loss_after"] < metrics["probe_loss_before"]

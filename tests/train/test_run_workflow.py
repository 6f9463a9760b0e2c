"""The researcher's workflow on the micro run: the saved recipe trains again through --recipe FILE, a stage killed
mid-way resumes to the same weights, a resume with a conflicting flag is refused, --force trains again, and the
run's card lists every command that made it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _m3(*args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "app.main", *args]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(model_dir: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(model_dir)}:{k}"] = v
    return out


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = _weights(a), _weights(b)
    return set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


def _copy_run(src: Path, dst: Path, parts: tuple[str, ...]) -> Path:
    for part in parts:
        shutil.copytree(src / part, dst / part)
    shutil.copy(src / "recipe.json", dst / "recipe.json")
    return dst


def test_the_micro_pipeline_runs_all_four_stages_and_saves_its_recipe(micro_run):
    out, final = micro_run
    assert (out / "vision" / "done.json").is_file() and (out / "vision" / "encoder" / "model.safetensors").is_file()
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["name"] == "micro" and saved["vision_stage"] is True
    assert saved["model"]["encoder_path"] == str((out / "vision" / "encoder").resolve())  # the tower started from stage 1
    from vlm.encoder import RadioEncoder

    enc = RadioEncoder.from_pretrained(out / "vision" / "encoder")
    tower = json.loads((final / "vision_tower" / "config.json").read_text())
    assert tower["hidden_size"] == enc.config.hidden_size and tower["depth"] == enc.config.depth


def test_a_killed_stage_resumes_to_the_same_weights_as_an_uninterrupted_run(micro_run, tmp_path):
    """medical-ift killed after its first checkpoint; `m3 train all --resume` finishes it, skips the finished
    stages and exports the same model as the uninterrupted run, tensor for tensor."""
    ref_out, ref_final = micro_run
    out = _copy_run(ref_out, tmp_path / "run", ("data", "vision", "init", "align", "ift"))
    phase = out / "medical-ift" / "medical-ift"
    proc = _m3("train", "medical-ift", "--out", str(out), "--recipe", "micro", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.is_dir() and not p.name.endswith(".tmp") for p in (phase / "checkpoints").glob("step_*")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()[-2000:]
    assert not (phase / "done.json").exists()

    again = _m3("train", "medical-ift", "--out", str(out), "--recipe", "micro")  # no --resume: refused, nothing lost
    assert again.returncode == 1 and "--resume" in again.stderr

    done = _m3("train", "all", "--out", str(out), "--resume", "--no-eval")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "medical-ift  medical-ift" in done.stderr and "resumed at step" in done.stderr  # the end-of-run table
    assert "already finished (skipped)" in done.stderr
    assert _same_weights(out / "final", ref_final)
    commands = [c["command"] for c in json.loads((out / "invocations.json").read_text())]
    assert commands[0].startswith("m3 train medical-ift") and commands[-1].endswith("--resume --no-eval")
    outcomes = [c["outcome"] for c in json.loads((out / "invocations.json").read_text())]
    assert outcomes[-1] == "finished"


def test_the_saved_recipe_json_trains_a_stage_again_to_the_same_weights(micro_run, tmp_path):
    ref_out, _ = micro_run
    out = _copy_run(ref_out, tmp_path / "again", ("data", "vision", "init", "align"))
    (out / "recipe.json").unlink()  # a fresh folder: only what --recipe FILE says
    res = _m3("train", "ift", "--recipe", str(ref_out / "recipe.json"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert _same_weights(out / "ift" / "ift" / "final", ref_out / "ift" / "ift" / "final")
    assert json.loads((out / "recipe.json").read_text())["stages"] == json.loads((ref_out / "recipe.json").read_text())["stages"]


def test_a_resume_with_conflicting_steps_is_refused_and_force_trains_again(micro_run, tmp_path):
    ref_out, _ = micro_run
    out = _copy_run(ref_out, tmp_path / "run", ("data", "vision", "init", "align", "ift"))
    before = (out / "ift" / "ift" / "done.json").stat().st_mtime
    res = _m3("train", "ift", "--out", str(out), "--resume", "--steps", "3")
    assert res.returncode == 1
    assert "steps 10 → 3" in res.stderr and "--force" in res.stderr and "drop --steps" in res.stderr
    assert (out / "ift" / "ift" / "done.json").stat().st_mtime == before  # nothing was touched
    assert json.loads((out / "recipe.json").read_text())["stages"]["ift"]["steps"] == 10  # the refused flag is not saved

    forced = _m3("train", "ift", "--out", str(out), "--resume", "--steps", "3", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    metrics = json.loads((out / "ift" / "ift" / "metrics.json").read_text())
    assert metrics["steps"] == 3
    assert json.loads((out / "recipe.json").read_text())["stages"]["ift"]["steps"] == 3
    assert "medical-ift" not in forced.stderr or "--force" in forced.stderr


def test_a_checkpoint_with_other_settings_is_refused_on_resume(micro_run, tmp_path):
    """The issue's case: a run started with --steps 600 must not resume with the recipe's 12."""
    from vlm.train.build import ResumeConflict
    from vlm.train.recipes import load_recipe
    from vlm.train.stages import train_phase

    ref_out, _ = micro_run
    recipe = load_recipe("micro")
    phase_dir = tmp_path / "ift"
    ckpt = phase_dir / "checkpoints" / "step_000300"
    ckpt.mkdir(parents=True)
    (ckpt / "recipe.json").write_text(recipe.to_json())
    from dataclasses import asdict, replace

    (ckpt / "stage.json").write_text(json.dumps(asdict(replace(recipe.stages["ift"], steps=600)), default=list))
    with pytest.raises(ResumeConflict, match="steps 600 → 10"):
        train_phase("ift", recipe.stages["ift"], recipe, ref_out / "data", ref_out / "align" / "align" / "final", phase_dir,
                    resume=True, progress=False)


def test_recipe_files_json_and_toml_and_their_errors(micro_run, tmp_path):
    from dataclasses import asdict

    from vlm.train.recipes import RecipeError, get_recipe, load_recipe

    ref_out, _ = micro_run
    saved = load_recipe(str(ref_out / "recipe.json"))
    micro = get_recipe("micro")
    assert asdict(saved)["stages"] == json.loads(json.dumps(asdict(micro)["stages"], default=list)) or saved.stages == micro.stages
    toml = tmp_path / "mine.toml"
    toml.write_text('extends = "micro"\nname = "mine"\n[data]\nquestions_per_case = 2\n[stages.ift]\nsteps = 7\nmix = {ift = 1.0}\n')
    mine = load_recipe(str(toml))
    assert (mine.name, mine.data.questions_per_case, mine.stages["ift"].steps, mine.stages["ift"].mix) == ("mine", 2, 7, {"ift": 1.0})
    assert mine.stages["ift"].batch_size == micro.stages["ift"].batch_size and mine.stages["align"] == micro.stages["align"]
    assert mine.data.train_cases == micro.data.train_cases and mine.vision_stage  # the rest is micro's
    typo = tmp_path / "typo.json"
    typo.write_text('{"name": "t", "stages": {"ift": {"step": 7}}}')
    with pytest.raises(RecipeError, match=r"unknown \['step'\]"):
        load_recipe(str(typo))
    with pytest.raises(RecipeError, match="built-in recipe .* or a recipe file"):
        load_recipe("no/such/recipe.json")


def test_every_stage_takes_the_same_core_flags_with_help():
    from app.main import build_parser

    parser = build_parser()
    for stage in ("vision", "align", "ift", "medical-ift", "all"):
        args = parser.parse_args(["train", stage, "--recipe", "x.json", "--out", "o", "--resume", "--force", "--steps", "4", "--threads", "2"])
        assert (args.recipe, args.out, args.resume, args.force, args.steps, args.threads) == ("x.json", "o", True, True, 4, 2)
    res = _m3("train", "vision", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for flag in ("--recipe NAME|FILE", "--resume", "--force", "--steps", "--threads", "--n-ct-cases"):
        assert flag in text, flag
    assert "default: the recipe's, else 60" in text  # --n-ct-cases: the field's default is shown
    assert "--output-dir" not in text


def test_the_card_lists_every_command_that_made_the_model(micro_run):
    _, final = micro_run
    card = (final / "model_card.md").read_text()
    assert "Commands that trained it" in card and "vision → align_projector" in card


def test_eval_writes_a_new_folder_per_run_and_says_where(micro_run, tmp_path):
    from datetime import datetime

    from vlm.eval.cli import default_out

    out, final = micro_run
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "app.main", "eval", "--model", str(final), "--data", str(out / "data"), "--limit", "1",
                          "--experts", "truth"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(s for s in res.stdout.splitlines() if s.startswith("written to "))
    folder = tmp_path / line.split()[2]
    assert folder.parent == tmp_path / "runs" / "eval" and folder.name.startswith(f"{out.name}-final-")
    assert (folder / "eval.md").is_file() and (folder / "eval.png").stat().st_size > 1000
    assert "failed tool calls (malformed or expert error)" in (folder / "eval.md").read_text()
    now = datetime(2030, 1, 2, 3, 4, 5)
    first = default_out(final, now=now)
    assert first == Path("runs") / "eval" / f"{out.name}-final-20300102-030405"
    os.chdir(tmp_path)
    try:
        first.mkdir(parents=True)
        assert default_out(final, now=now).name.endswith("-030405-2")  # the same second: still a new folder
    finally:
        os.chdir(ROOT)

"""`m3 experts train` follows the resume and rerun rules of `m3 train`: a run folder with a checkpoint is refused
without --resume / --force, --resume continues with the run's own settings (a disagreeing flag is refused) and ends
where an uninterrupted run ends, --force starts again; every option of `m3 experts …` explains itself in --help."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from localhost import cli_options
from safetensors.torch import load_file

from experts.base import ExpertError
from experts.train import TrainConfig, train_expert
from experts.train_tasks_mri_cxr import CXRTask

NAME = "cxr_classification"


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


def _config(run_dir, **kw) -> TrainConfig:
    base = {"name": NAME, "steps": 4, "batch_size": 2, "n_train": 2, "n_val": 8, "n_test": 8, "val_every": 2, "run_dir": str(run_dir),
            "command": f"m3 experts train {NAME} --steps 4"}
    return TrainConfig(**{**base, **kw})


def _kill_during_step(monkeypatch, step: int) -> None:
    """The batch of ``step`` never arrives: the run dies after the checkpoint before it."""
    real, calls = CXRTask.batch, {"n": 0}

    def batch(self, rng):
        calls["n"] += 1
        if calls["n"] == step:
            raise _Killed
        return real(self, rng)

    monkeypatch.setattr(CXRTask, "batch", batch)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "weights" / NAME / "model.safetensors"))


def test_a_killed_run_resumed_with_only_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train_expert(_config(whole))

    broken = tmp_path / "broken"
    with monkeypatch.context() as m:
        _kill_during_step(m, 4)  # checkpoint at step 2, step 3 done, killed in step 4
        with pytest.raises(_Killed):
            train_expert(_config(broken))
    assert torch.load(broken / NAME / "checkpoint.pt", weights_only=False)["state"]["step"] == 2
    assert not (broken / "weights" / NAME).exists()

    # no --steps, --n-train, ... repeated: the run's saved recipe is used
    train_expert(TrainConfig(name=NAME, run_dir=str(broken), resume=True, command=f"m3 experts train {NAME} --resume"))
    a, b = _weights(whole), _weights(broken)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    whole_state = torch.load(whole / NAME / "checkpoint.pt", weights_only=False)["state"]
    resumed_state = torch.load(broken / NAME / "checkpoint.pt", weights_only=False)["state"]
    assert resumed_state["history"]["loss"] == whole_state["history"]["loss"]
    config = json.loads((broken / "weights" / NAME / "config.json").read_text())
    assert config["training"]["recipe"]["steps"] == 4 and config["version"].endswith("-4steps")
    assert [c["command"] for c in config["training"]["commands"]] == [f"m3 experts train {NAME} --steps 4", f"m3 experts train {NAME} --resume"]
    card = (broken / "weights" / NAME / "model_card.md").read_text()
    assert "(killed or stopped)" in card and f"`m3 experts train {NAME} --resume`" in card


def test_an_existing_run_is_refused_without_resume_or_force_and_force_starts_again(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _kill_during_step(m, 3)
        with pytest.raises(_Killed):
            train_expert(_config(tmp_path))
    ckpt = tmp_path / NAME / "checkpoint.pt"
    with pytest.raises(ExpertError, match=r"stopped at step 2 of 4.*--resume.*--force.*--run-dir"):
        train_expert(_config(tmp_path))
    assert torch.load(ckpt, weights_only=False)["state"]["step"] == 2  # the refusal changed nothing

    train_expert(_config(tmp_path, steps=2, force=True, command=f"m3 experts train {NAME} --steps 2 --force"))
    state = torch.load(ckpt, weights_only=False)["state"]
    assert state["history"]["step"] == [1, 2]  # from step 0, not continued
    assert [c["command"] for c in state["commands"]] == [f"m3 experts train {NAME} --steps 2 --force"]
    with pytest.raises(ExpertError, match=r"already holds a finished cxr_classification run \(2 steps; its weights are in .*--force"):
        train_expert(_config(tmp_path, steps=2))


def test_resume_refuses_flags_that_disagree_with_the_run_and_accepts_those_that_agree(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _kill_during_step(m, 3)
        with pytest.raises(_Killed):
            train_expert(_config(tmp_path, seed=3))
    with pytest.raises(ExpertError, match=r"steps 4 \(saved\) vs 6 \(given\).*use --force instead of --resume"):
        train_expert(_config(tmp_path, steps=6, resume=True))
    with pytest.raises(ExpertError, match=r"seed 3 \(saved\) vs 1 \(given\)"):
        train_expert(_config(tmp_path, seed=1, resume=True))
    with pytest.raises(ExpertError, match=r"lr .* \(saved\) vs 0\.5 \(given\)"):
        train_expert(_config(tmp_path, resume=True, overrides={"lr": "0.5"}))
    train_expert(_config(tmp_path, steps=4, seed=3, resume=True))  # repeating the run's own values is fine
    config = json.loads((tmp_path / "weights" / NAME / "config.json").read_text())
    assert config["training"]["seed"] == 3 and config["training"]["recipe"]["steps"] == 4


def test_resume_needs_a_checkpoint_and_excludes_force(tmp_path, capsys):
    from app.main import main

    with pytest.raises(ExpertError, match="holds no checkpoint.pt; start without --resume"):
        train_expert(_config(tmp_path, resume=True))
    with pytest.raises(ExpertError, match="exclude each other"):
        _config(tmp_path, resume=True, force=True)
    with pytest.raises(SystemExit):
        main(["experts", "train", NAME, "--resume", "--force"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv, resume, force", [([], False, False), (["--resume"], True, False), (["--force"], False, True)])
def test_cli_flags_reach_the_training_config(monkeypatch, argv, resume, force):
    import experts.train
    from app.main import main

    seen = {}
    monkeypatch.setattr(experts.train, "train_expert", lambda cfg: seen.setdefault("cfg", cfg) and {})
    assert main(["experts", "train", NAME, *argv]) == 0
    cfg = seen["cfg"]
    assert (cfg.resume, cfg.force) == (resume, force)
    assert cfg.seed is None and cfg.steps is None  # not given: the recipe's (or, resuming, the run's)



def test_every_option_of_the_experts_commands_has_help_text():
    from app.main import build_parser

    root = build_parser()
    experts = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices["experts"]
    options = list(cli_options(experts, "m3 experts"))
    commands = {path for path, _, _ in options}
    assert {"m3 experts list", "m3 experts run", "m3 experts train", "m3 experts eval"} <= commands
    missing = [f"{path} {'/'.join(names)}" for path, names, text in options if not (text and text.strip())]
    assert not missing, f"options without help: {missing}"

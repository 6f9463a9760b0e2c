"""Expert training writes outside the shipped bundle by default, says how to use the result, refuses to mix a
checkpoint with another recipe, and records every command (resumes included) in the card."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from experts.model_files import WEIGHTS_DIR


def _tree_hash(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _config(tmp_path, **kw):
    from experts.train import TrainConfig

    base = dict(name="cxr_classification", steps=2, batch_size=2, n_train=2, n_val=8, n_test=8, val_every=1,
                run_dir=str(tmp_path / "runs"), command="m3 experts train cxr_classification --steps 2")
    return TrainConfig(**{**base, **kw})


def test_training_writes_to_the_run_folder_never_the_shipped_bundle_and_says_how_to_use_it(tmp_path, caplog):
    from experts.registry import registry_for
    from experts.train import train_expert

    shipped = _tree_hash(WEIGHTS_DIR / "cxr_classification")
    with caplog.at_level(logging.INFO, logger="experts.train"):
        train_expert(_config(tmp_path))
    folder = tmp_path / "runs" / "weights" / "cxr_classification"
    assert {"model.safetensors", "config.json", "model_card.md", "manifest.json"} <= {p.name for p in folder.iterdir()}
    assert _tree_hash(WEIGHTS_DIR / "cxr_classification") == shipped  # the shipped expert is untouched
    assert f"M3_MODELS_EXPERTS_DIR={tmp_path / 'runs' / 'weights'}" in caplog.text
    expert = registry_for(tmp_path / "runs" / "weights").get("cxr_classification")  # what the app loads from that folder
    assert "seed0-2steps" in expert.version
    card = (folder / "model_card.md").read_text()
    assert "--n-val 8 --n-test 8 --val-every 1" in card and "--threads 1" in card
    assert "`m3 experts train cxr_classification --steps 2`" in card  # the command as typed, under "Commands that trained it"


def test_a_checkpoint_of_another_recipe_is_refused_and_force_starts_afresh(tmp_path):
    import torch

    from experts.base import ExpertError
    from experts.train import train_expert

    train_expert(_config(tmp_path))
    with pytest.raises(ExpertError, match=r"steps 2 \(saved\) vs 3 \(given\).*--force"):
        train_expert(_config(tmp_path, steps=3, resume=True))
    train_expert(_config(tmp_path, steps=3, force=True, command="m3 experts train cxr_classification --steps 3 --force"))
    ckpt = torch.load(tmp_path / "runs" / "cxr_classification" / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["step"] == 3 and ckpt["state"]["history"]["step"] == [1, 2, 3]
    config = json.loads((tmp_path / "runs" / "weights" / "cxr_classification" / "config.json").read_text())
    assert [c["command"] for c in config["training"]["commands"]] == ["m3 experts train cxr_classification --steps 3 --force"]

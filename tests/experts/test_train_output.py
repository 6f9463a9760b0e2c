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


def test_a_retrained_expert_is_used_by_m3_experts_run_and_the_app_while_the_shipped_folder_stays_as_it_was(tmp_path, monkeypatch, capsys):
    """`m3 experts train` as a researcher types it, then the same folder picked up by `m3 experts run --experts-dir`,
    by `M3_MODELS_EXPERTS_DIR` for any command, and by the app's `models.experts_dir` (the other experts from the
    shipped bundle with the embedded fallback)."""
    from fastapi.testclient import TestClient
    from scripted_backend import ScriptedBackend

    import data
    from app.config import AppConfig
    from app.main import main
    from app.server import build_app
    from data.phantoms import write_study
    from experts import registry as registry_module

    monkeypatch.setattr(registry_module, "_DEFAULT", None)  # the front door points the process default at the folder
    monkeypatch.delenv("M3_CONFIG", raising=False)
    monkeypatch.delenv("M3_MODELS_EXPERTS_DIR", raising=False)
    shipped = _tree_hash(WEIGHTS_DIR / "cxr_classification")
    shipped_version = json.loads((WEIGHTS_DIR / "cxr_classification" / "config.json").read_text())["version"]
    runs = tmp_path / "runs"
    assert main(["experts", "train", "cxr_classification", "--steps", "2", "--batch-size", "2", "--n-train", "2", "--n-val", "8",
                 "--n-test", "8", "--val-every", "1", "--run-dir", str(runs)]) == 0
    weights = runs / "weights"
    version = json.loads((weights / "cxr_classification" / "config.json").read_text())["version"]
    assert version != shipped_version and "2steps" in version
    capsys.readouterr()

    study = write_study(data.phantoms.generate("cxr", 30_004, findings=("pleural effusion",), random_others=False), tmp_path / "study")
    assert main(["experts", "run", "cxr_classification", str(study), "--experts-dir", str(weights), "--out", str(tmp_path / "a")]) == 0
    assert f"expert: cxr_classification {version} (site folder)" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "findings.json").read_text())["version"] == version

    monkeypatch.setenv("M3_MODELS_EXPERTS_DIR", str(weights))  # any command, no flag
    assert main(["experts", "run", "cxr_classification", str(study), "--out", str(tmp_path / "b")]) == 0
    assert f"expert: cxr_classification {version} (site folder)" in capsys.readouterr().out

    config = AppConfig()
    config.audit.log_path = tmp_path / "audit.jsonl"
    config.models.experts_dir = weights
    config.models.embedded_experts_fallback = True
    api, _, _ = build_app(config.validate(), backend=ScriptedBackend())
    served = TestClient(api).get("/healthz").json()["checks"]["experts"]["detail"]
    assert served["cxr_classification"] == {"version": version, "source": "site folder"}
    assert served["ct_segmentation"]["source"] == "embedded bundle"  # not retrained: the shipped one
    assert _tree_hash(WEIGHTS_DIR / "cxr_classification") == shipped  # the shipped expert was never written

"""Quality bars of the committed weights on held-out phantoms (seeds 30000+, never trained on), and the
training command end to end (checkpoint, resume, exported files). Slow: `make test-slow`."""

from __future__ import annotations

import json

import pytest

from experts.base import ExpertError
from experts.registry import default_registry
from experts.train_tasks import evaluate_ct
from experts.train_tasks_mri_cxr import evaluate_cxr, evaluate_mri

pytestmark = pytest.mark.slow


def test_ct_segmentation_meets_the_dice_bars():
    m = evaluate_ct(default_registry().get("ct_segmentation"), n_cases=30)
    assert m["mean_organ_dice"] >= 0.90, m
    assert m["contrast_phase_accuracy"] >= 0.90, m  # read from the segmented aorta and liver
    assert m["mean_lesion_dice"] >= 0.75, m


def test_brain_tumour_whole_tumour_dice_bar():
    m = evaluate_mri(default_registry().get("mri_brain_tumor"), n_cases=30)
    assert m["whole_tumor_dice"] >= 0.85, m


def test_cxr_macro_auroc_bar():
    m = evaluate_cxr(default_registry().get("cxr_classification"), n_cases=200)
    assert m["macro_auroc"] >= 0.95, m


def test_model_cards_report_the_measured_numbers():
    from experts.model_files import weights_dir

    for name, key in (("ct_segmentation", "mean_organ_dice"), ("mri_brain_tumor", "whole_tumor_dice"), ("cxr_classification", "macro_auroc")):
        config = json.loads((weights_dir(name) / "config.json").read_text())
        card = (weights_dir(name) / "model_card.md").read_text()
        assert str(config["metrics"][key]) in card and "not for clinical use" in card
        assert (weights_dir(name) / "loss_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["cxr_classification", "mri_brain_tumor"])
def test_training_command_checkpoints_resumes_and_exports(tmp_path, name):
    from experts.train import TrainConfig, train_expert

    base = dict(name=name, steps=2, batch_size=2, n_train=2, n_val=2 if name == "mri_brain_tumor" else 8, n_test=2 if name == "mri_brain_tumor" else 8,
                val_every=1, run_dir=str(tmp_path / "runs"), weights_root=str(tmp_path / "w"))
    train_expert(TrainConfig(**base))
    ckpt = tmp_path / "runs" / name / "checkpoint.pt"
    assert ckpt.is_file()
    import torch

    assert torch.load(ckpt, weights_only=False)["state"]["step"] == 2
    with pytest.raises(ExpertError, match="other settings"):  # another recipe never mixes with the checkpoint
        train_expert(TrainConfig(**{**base, "steps": 3, "resume": True}))
    train_expert(TrainConfig(**{**base, "steps": 3, "force": True}))  # --force: starts afresh
    assert torch.load(ckpt, weights_only=False)["state"]["step"] == 3
    files = {p.name for p in (tmp_path / "w" / name).iterdir()}
    assert files == {"model.safetensors", "config.json", "model_card.md", "loss_curve.png", "manifest.json"}

"""Stage 1 end to end on a tiny budget (randomly initialised expert networks stand in for the trained
ones), resumption from the atomic checkpoint, the loss, and the CLI; the quality bar is `slow`."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vlm.encoder import RadioEncoder
from vlm.train import teachers as teachers_mod
from vlm.train.build import ResumeConflict
from vlm.train.vision import VisionStageConfig, distillation_loss, run_vision_stage

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_experts(monkeypatch):
    """Untrained CT UNet and CXR DenseNet with the experts' own builders and configs."""
    from experts.ct_segmentation import CTSegConfig, build_ct_network
    from experts.cxr_classification import CXRConfig, build_cxr_network

    torch.manual_seed(0)
    ct_cfg = CTSegConfig()
    cxr_cfg = CXRConfig(image_size=64, init_features=8, growth_rate=4, block_config=(2, 2))
    experts = {
        "seg": types.SimpleNamespace(config=ct_cfg, network=build_ct_network(ct_cfg).eval()),
        "cxr": types.SimpleNamespace(config=cxr_cfg, network=build_cxr_network(cxr_cfg).eval()),
    }
    monkeypatch.setattr(teachers_mod, "_expert_teachers", lambda names, log: {n: experts[n] for n in names})


def test_stage_trains_evaluates_and_resumes(tmp_path, fake_experts):
    cfg = VisionStageConfig(
        output_dir=str(tmp_path / "run"), image_size=64, n_ct_cases=2, slices_per_ct=3, n_cxr_cases=6,
        held_out_fraction=0.5, clip_steps=2, hidden_size=32, depth=1, num_heads=2, num_registers=1,
        resolutions=(32, 64), mosaic=0.5, steps=3, batch_size=4, checkpoint_every=2, featsharp_steps=1,
        compare_plain=True, save_encoder_to=str(tmp_path / "weights"),
    )
    enc_dir = run_vision_stage(cfg)
    enc = RadioEncoder.from_pretrained(enc_dir)
    assert [t.name for t in enc.config.teachers] == ["seg", "cxr", "clip"]
    from experts.ct_segmentation import CTSegConfig

    assert enc.config.teachers[0].feature_dim == 2 * CTSegConfig().channels[1]  # the UNet's stride-4 skip + decoder
    out = enc(torch.rand(2, 1, 64, 96), adaptors=["seg"])
    assert out.adaptors["seg"][1].shape == (2, 24, enc.config.teachers[0].feature_dim)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"organ_segmentation", "finding_classification"} <= set(metrics["probes"])
    assert "teacher:seg" in metrics["probes"]["organ_segmentation"]
    assert "teacher:cxr" in metrics["probes"]["finding_classification"]
    assert set(metrics["fidelity"]) == {"seg", "cxr", "clip"} and "plain" in metrics and "featsharp" in metrics
    card = (tmp_path / "weights" / "model_card.md").read_text()
    assert "PHI-S vs plain" in card and "FeatSharp" in card
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 1000
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and len(ckpt["history"]) == 3
    # asked again: the same settings reuse the finished encoder; another budget is refused; --force trains again
    # from scratch and, seeded, repeats the first run's steps exactly (until the longer cosine schedule's learning
    # rate differs: the loss of step 3 follows the second update)
    longer = replace(cfg, steps=5, evaluate=False, compare_plain=False, featsharp_steps=0, save_encoder_to="")
    assert run_vision_stage(replace(cfg, evaluate=False, compare_plain=False, featsharp_steps=0)) == enc_dir
    with pytest.raises(ResumeConflict, match="steps 3 → 5"):
        run_vision_stage(longer, resume=True)
    run_vision_stage(longer, force=True)
    again = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    losses = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert again["step"] == 5 and losses(again["history"][:2]) == losses(ckpt["history"][:2])
    assert losses(again["history"][2:3]) != losses(ckpt["history"][2:3])


def test_distillation_loss_is_zero_on_a_perfect_student_and_respects_masks():
    s, f = torch.randn(4, 8), torch.randn(4, 6, 5)
    out = types.SimpleNamespace(summary=s, adaptors={"t": (s * 3, f)})  # cosine ignores the scale
    loss, parts = distillation_loss(out, {"t": (s, f, torch.ones(4, dtype=torch.bool))}, {"t": 1.0})
    assert float(loss) < 1e-6
    wrong = {"t": (-s, f + 1, torch.tensor([True, False, False, False]))}
    loss, parts = distillation_loss(out, wrong, {"t": 0.5})
    assert abs(parts["t/summary"] - 2.0) < 1e-5 and abs(parts["t/features"] - 1.0) < 1e-5
    assert abs(float(loss) - 0.5 * 3.0) < 1e-5
    loss, parts = distillation_loss(out, wrong, {"t": 1.0}, feature_loss="cos_smoothl1")
    assert parts["t/features"] > 0


def test_config_errors_and_cli_help():
    with pytest.raises(ValueError, match="normalisation must be"):
        VisionStageConfig(normalisation="zca")
    with pytest.raises(ValueError, match="multiple of 2 × patch_size"):
        VisionStageConfig(resolutions=(100,))
    res = subprocess.run([sys.executable, "-m", "app.main", "train", "vision", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert res.returncode == 0 and "--teacher-weights" in res.stdout and "--compare-plain" in res.stdout


@pytest.mark.slow
def test_committed_encoder_meets_the_probe_bar():
    """The committed encoder's model card numbers: student ≥ 90 % of each expert teacher's probe."""
    folder = ROOT / "vlm" / "encoder" / "weights"
    metrics = json.loads((folder / "metrics.json").read_text())
    seg = metrics["probes"]["organ_segmentation"]
    cxr = metrics["probes"]["finding_classification"]
    assert seg["student"] >= 0.9 * seg["teacher:seg"]
    assert cxr["student"] >= 0.9 * cxr["teacher:cxr"]
    assert metrics["featsharp"]["featsharp"] > metrics["featsharp"]["bilinear"]
    enc = RadioEncoder.from_pretrained(folder)
    assert enc.forward_features(torch.rand(1, 1, 128, 128)).shape[1] == 64

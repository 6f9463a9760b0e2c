"""The micro recipe end to end: every stage lowers its loss and the result is a loadable VILA-layout model."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

PHASES = {"align": ("align_projector", "align"), "ift": ("ift",), "medical-ift": ("medical-ift",)}


@pytest.mark.parametrize("stage", list(PHASES))
def test_each_stage_lowers_its_loss_and_writes_curves(micro_run, stage):
    out, _ = micro_run
    summary = json.loads((out / stage / "metrics.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == list(PHASES[stage])
    for phase in summary["phases"]:
        assert phase["probe_loss_after"] < phase["probe_loss_before"], phase["phase"]
        history = json.loads((out / stage / phase["phase"] / "metrics.json").read_text())["history"]
        assert [h[0] for h in history] == list(range(1, phase["steps"] + 1))
    assert (out / stage / "loss.png").stat().st_size > 1000


def test_pipeline_writes_a_loadable_vila_layout_model(micro_run):
    from vlm.backends import load_backend
    from vlm.backends.base import GenerationConfig
    from vlm.model import load_model

    _, final = micro_run
    for part in ("config.json", "llm/config.json", "llm/tokenizer.json", "vision_tower/config.json", "mm_projector/model.safetensors",
                 "recipe.json", "model_card.md"):
        assert (final / part).is_file(), part
    with safe_open(str(final / "mm_projector" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {__import__("torch").float16}  # micro writes float16
    model = load_model(final)
    assert model.tokens_per_image == 4  # 64 px, patch 16: 4×4 patches → 2×2 after the merge
    assert json.loads((final / "recipe.json").read_text())["name"] == "micro"
    backend = load_backend(final)
    import numpy as np

    text = "".join(backend.stream_chat([{"role": "user", "content": "<image>\nWhat modality is this?"}], [np.zeros((64, 64), np.uint8)],
                                       config=GenerationConfig(max_new_tokens=4)))
    assert isinstance(text, str)


def test_model_card_states_metrics_and_intended_use(micro_run):
    _, final = micro_run
    card = (final / "model_card.md").read_text()
    assert "not for clinical use" in card
    assert "closed-question accuracy" in card and "m3 train all --recipe micro" in card
    tower = json.loads((final / "vision_tower" / "config.json").read_text())  # the card names the tower as built
    assert f"{tower['depth']} blocks, width {tower['hidden_size']}" in card
    metrics = json.loads((final / "eval_metrics.json").read_text())
    assert metrics["expert_mode"] == "truth" and metrics["vqa"]["n_closed"] + metrics["vqa"]["n_open"] >= 1


def test_finished_stage_is_not_retrained_and_a_stale_run_needs_resume(micro_run, tmp_path):
    from vlm.train.build import TrainError
    from vlm.train.recipes import get_recipe
    from vlm.train.stages import run_stage, train_phase

    out, _ = micro_run
    recipe = get_recipe("micro")
    before = (out / "ift" / "ift" / "done.json").stat().st_mtime
    run_stage("ift", recipe, out, out / "align" / "align" / "final", progress=False)
    assert (out / "ift" / "ift" / "done.json").stat().st_mtime == before
    stale = tmp_path / "ift"
    (stale / "checkpoints" / "step_000002").mkdir(parents=True)
    (stale / "checkpoints" / "step_000002" / "recipe.json").write_text("{}")
    with pytest.raises(TrainError, match="--resume"):
        train_phase("ift", recipe.stages["ift"], recipe, out / "data", out / "align" / "align" / "final", stale, progress=False)


def test_install_replaces_the_folder_with_a_verified_manifest(tmp_path):
    from vlm.export import ManifestError, verify_manifest
    from vlm.train.pipeline import install

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "llm").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "llm" / "model.safetensors").write_bytes(b"\x00" * 16)
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    install(src, dst)
    assert not (dst / "stale.txt").exists() and set(verify_manifest(dst)["files"]) == {"config.json", "llm/model.safetensors"}
    (dst / "config.json").write_text('{"changed": 1}')
    try:
        verify_manifest(dst)
    except ManifestError:
        pass
    else:
        raise AssertionError("a changed file must fail the manifest")

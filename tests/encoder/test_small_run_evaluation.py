"""Stage 1's end-of-run evaluation on runs too small to score a probe: a clear reason, no crash."""

from __future__ import annotations

import torch

from data.phantoms.labels import CT_ORGANS
from vlm.encoder.evaluate import probe_skip_reason
from vlm.encoder.probes import classification_probe


def test_a_probe_without_held_out_images_or_both_classes_says_why_it_is_not_scored():
    findings = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)
    assert "0 held-out images" in probe_skip_reason("finding_classification", findings, findings[:0])
    assert "fewer than the 3 cross-validation folds" in probe_skip_reason("finding_classification", findings[:2], findings)
    same = torch.zeros(4, 5)
    assert "AUROC is undefined" in probe_skip_reason("finding_classification", findings, same)
    assert probe_skip_reason("finding_classification", findings, findings) is None
    organ = int(CT_ORGANS[0])
    labels = torch.zeros(2, 8, 8, dtype=torch.int16)
    assert "no organ appears" in probe_skip_reason("organ_segmentation", labels, labels)
    labels[:, 2:4, 2:4] = organ
    assert probe_skip_reason("organ_segmentation", labels, labels) is None


def test_the_classification_probe_scores_four_training_images():
    """Four training radiographs once split into two folds, not three (an IndexError at the end of a run)."""
    torch.manual_seed(0)
    y = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    x = y + 0.1 * torch.randn(4, 2)
    out = classification_probe(x, y, x, y)
    assert out["mean_auroc"] > 0.9


def test_the_card_names_each_probe_it_could_not_score_and_the_commands(tmp_path):
    from types import SimpleNamespace

    from vlm.encoder.evaluate import _model_card

    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text('{"patch_size": 16, "hidden_size": 32, "depth": 1, "num_heads": 2, "num_registers": 1, '
                                     '"max_resolution": 128, "teachers": []}')
    (enc / "model.safetensors").write_bytes(b"0" * 10)
    cfg = SimpleNamespace(steps=6, batch_size=4, resolutions=(64,), mosaic=0.0, normalisation="phis", feature_loss="mse",
                          teacher_weights={}, n_ct_cases=1, slices_per_ct=1, n_cxr_cases=2, held_out_fraction=0.5)
    metrics = {"probes": {"finding_classification": {"skipped": "1 training radiographs, fewer than the 3 cross-validation folds; "
                                                                 "raise n_cxr_cases.", "metric": "mean AUROC"}},
               "fidelity": {"cxr": {"skipped": "no held-out image is covered by teacher 'cxr'"}}}
    card = _model_card(cfg, metrics, enc, commands=[{"command": "m3 train vision --recipe micro", "started": "t", "seconds": 3.0,
                                                      "outcome": "finished"}])
    assert "not computed: 1 training radiographs, fewer than the 3 cross-validation folds" in card
    assert "not computed: no held-out image is covered by teacher 'cxr'" in card
    assert "`m3 train vision --recipe micro`" in card

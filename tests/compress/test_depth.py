import copy

import pytest
import torch

from vlm.compress.calibration import mean_loss
from vlm.compress.depth import DepthConfig, angular_importance, load_pruned_lm, loo_importance, prune_depth, save_pruned_lm
from vlm.compress.errors import CompressError


def test_a_block_that_does_nothing_scores_zero_importance(trained_lm):
    model, ids = trained_lm
    model = copy.deepcopy(model)
    with torch.no_grad():  # block 1 becomes the identity: no attention output, no MLP output
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    angular = angular_importance(model, ids[:32])
    assert angular["block"][1] == pytest.approx(0.0, abs=1e-5) and angular["block"][0] > 0.01
    assert angular["attention"][1] == pytest.approx(0.0, abs=1e-5)
    loo = loo_importance(model, ids[:32], "block")
    assert abs(loo[1]) < 1e-4 and loo[0] > 0.05


def test_recovery_reduces_the_loss_of_removing_a_block(trained_lm):
    model, ids = trained_lm
    calib, heldout = ids[:128], ids[200:]
    losses = {}
    for recovery in ("none", "bias", "lowrank"):
        pruned = copy.deepcopy(model)
        prune_depth(pruned, DepthConfig(blocks=[1], recovery=recovery, rank=16), calib)
        losses[recovery] = mean_loss(pruned, heldout)
    assert losses["lowrank"] < losses["bias"] <= losses["none"] + 1e-3
    assert losses["lowrank"] > mean_loss(model, heldout)


def test_pruned_lm_saves_loads_and_generates_like_before(tmp_path, trained_lm):
    model, ids = trained_lm
    pruned = copy.deepcopy(model)
    prune_depth(pruned, DepthConfig(blocks=[1], attention=[0], recovery="lowrank", rank=4), ids[:64])
    save_pruned_lm(pruned, tmp_path / "lm")
    loaded = load_pruned_lm(tmp_path / "lm").eval()
    assert mean_loss(loaded, ids[200:]) == pytest.approx(mean_loss(pruned, ids[200:]), rel=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
    prompt = ids[200:201, :6]
    cached = loaded.generate(prompt, max_new_tokens=8, do_sample=False)
    greedy = prompt
    for _ in range(8):  # decoding without the KV cache gives the same tokens
        greedy = torch.cat([greedy, loaded(input_ids=greedy).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, greedy)


def test_bad_indices_are_rejected(tiny_lm):
    with pytest.raises(CompressError, match="out of range"):
        prune_depth(tiny_lm, DepthConfig(blocks=[5]))
    with pytest.raises(CompressError, match="both"):
        prune_depth(tiny_lm, DepthConfig(blocks=[0], attention=[0]))

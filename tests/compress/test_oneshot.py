import copy

import pytest
import torch

from vlm.compress.calibration import mean_loss
from vlm.compress.oneshot import OneShotConfig, magnitude_mask, prune_oneshot, sparsegpt_prune, wanda_mask
from vlm.compress.targets import check_two_four, prunable_linears, sparsity_of
from vlm.compress.errors import CompressError


def _layer_and_inputs(seed=0, rows=32, cols=64, n=512):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    # correlated inputs with uneven scales, as real activations are
    x = (torch.randn(n, 16, generator=gen) @ torch.randn(16, cols, generator=gen) + 0.3 * torch.randn(n, cols, generator=gen))
    x = x * torch.linspace(0.1, 3.0, cols)
    return w, x, 2.0 / n * x.T @ x


def test_magnitude_keeps_two_largest_per_group():
    w = torch.tensor([[0.1, -5.0, 0.3, 4.0, 1.0, 2.0, 3.0, -4.0]])
    assert magnitude_mask(w).tolist() == [[False, True, False, True, False, False, True, True]]


def test_wanda_prefers_high_activation_columns():
    w = torch.ones(4, 8)
    gram = torch.diag(torch.tensor([1.0, 100.0, 1.0, 100.0, 100.0, 1.0, 100.0, 1.0]))
    mask = wanda_mask(w, gram)
    assert mask[0].tolist() == [False, True, False, True, True, False, True, False]


def test_sparsegpt_reconstructs_outputs_better_than_magnitude_and_wanda():
    w, x, gram = _layer_and_inputs()
    mask_s, w_s = sparsegpt_prune(w, gram, damp=0.01, block_size=16)
    check_two_four(mask_s)
    assert torch.all(w_s[~mask_s] == 0)
    ref = x @ w.T
    err = {name: float(((x @ (w * m).T) - ref).pow(2).mean()) for name, m in
           (("magnitude", magnitude_mask(w)), ("wanda", wanda_mask(w, gram)))}
    err["sparsegpt"] = float(((x @ w_s.T) - ref).pow(2).mean())
    assert err["sparsegpt"] < 0.8 * err["wanda"] and err["wanda"] < err["magnitude"]


def test_matches_modelopt_sparsegpt_and_magnitude_masks():
    pytest.importorskip("modelopt", reason="nvidia-modelopt (dev dependency) is needed for the cross-check")
    from modelopt.torch.sparsity.weight_sparsity.magnitude import create_asp_mask
    from modelopt.torch.sparsity.weight_sparsity.sparsegpt import create_sgpt_mask

    w, _, gram = _layer_and_inputs(seed=3)
    theirs = create_sgpt_mask(w.clone(), gram.clone(), {"hessian_damp": 0.1, "pattern": "2:4 sparsity",
                                                         "col_block_size": 16, "row_block_size": -1})
    ours, _ = sparsegpt_prune(w, gram, damp=0.1, block_size=16)
    assert torch.equal(ours, theirs)
    assert torch.equal(magnitude_mask(w), create_asp_mask(w.clone(), "2:4 sparsity"))


def test_prune_oneshot_makes_every_lm_linear_two_four_and_sparsegpt_loses_least(trained_lm):
    model, ids = trained_lm
    calib, heldout = ids[:96], ids[200:]
    losses = {"dense": mean_loss(model, heldout)}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = copy.deepcopy(model)
        masks = prune_oneshot(pruned, calib, OneShotConfig(method=method))
        assert set(masks) == set(prunable_linears(pruned)) and "lm_head" not in masks
        for name, layer in prunable_linears(pruned).items():
            check_two_four(layer.weight != 0, name)
        assert sparsity_of(pruned) == pytest.approx(0.5, abs=1e-3)
        losses[method] = mean_loss(pruned, heldout)
    assert losses["dense"] < losses["sparsegpt"] < losses["magnitude"]


def test_inplace_false_leaves_model_untouched_and_needs_data_for_calibrated_methods(tiny_lm):
    before = {k: v.clone() for k, v in tiny_lm.state_dict().items()}
    prune_oneshot(tiny_lm, None, OneShotConfig(method="magnitude"), inplace=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_lm.state_dict().items())
    with pytest.raises(CompressError, match="calibration tokens"):
        prune_oneshot(tiny_lm, None, OneShotConfig(method="wanda"))

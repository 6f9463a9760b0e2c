import copy

import pytest
import torch

from vlm.compress.calibration import iterate_batches, mean_loss
from vlm.compress.errors import CompressError
from vlm.compress.maskllm import GumbelTwoFourMask, MaskLLMConfig, masks_to_candidates, train_maskllm
from vlm.compress.masks_io import load_masks, save_masks
from vlm.compress.oneshot import OneShotConfig, magnitude_mask, prune_oneshot
from vlm.compress.targets import CANDIDATES_2_4, apply_masks, check_two_four


def test_candidates_round_trip_and_prior_sets_the_argmax():
    w = torch.randn(8, 16)
    prior = magnitude_mask(w)
    idx = masks_to_candidates(prior)
    assert torch.equal(CANDIDATES_2_4[idx].reshape(8, 16).bool(), prior)
    w = torch.randn(64, 64)
    prior = magnitude_mask(w)
    gen = torch.Generator().manual_seed(0)
    with_prior = GumbelTwoFourMask((64, 64), prior=prior, generator=gen).eval()
    without = GumbelTwoFourMask((64, 64), generator=gen).eval()
    agree = lambda para: float((masks_to_candidates(para.hard_mask()) == masks_to_candidates(prior)).float().mean())
    # a soft prior: 3·std(logits) below on the five other candidates, against N(0, 0.01) noise
    assert agree(with_prior) > 0.85 and agree(without) < 0.3


def test_soft_mask_is_a_mixture_that_hardens_as_tau_falls():
    para = GumbelTwoFourMask((4, 8), generator=torch.Generator().manual_seed(0)).train()
    torch.manual_seed(0)
    soft = para.soft_mask()
    assert torch.allclose(soft.reshape(4, 2, 4).sum(-1), torch.full((4, 2), 2.0), atol=1e-5)  # always 2 per group in expectation
    para.tau, para.kappa = 0.05, 500.0
    hard_ish = para.soft_mask()
    assert float((hard_ish - hard_ish.round()).abs().max().detach()) < 1e-3


def test_maskllm_trains_only_logits_and_beats_its_magnitude_prior(trained_lm):
    model, ids = trained_lm
    calib, heldout = ids[:192], ids[200:]
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    prior = prune_oneshot(model, None, OneShotConfig(method="magnitude"), inplace=False)
    mag = copy.deepcopy(model)
    apply_masks(mag, prior)
    result = train_maskllm(model, iterate_batches(calib, 16, seed=0), MaskLLMConfig(steps=40, lr=5e-3), prior=prior, progress=False)
    assert all(torch.equal(dense[k], v) for k, v in model.state_dict().items())  # weights frozen, parametrizations removed
    assert not any(n.endswith("logits") for n, _ in model.named_parameters())
    for name, mask in result.masks.items():
        check_two_four(mask, name)
    assert 0.0 < result.changed_from_prior < 1.0
    learned = copy.deepcopy(model)
    apply_masks(learned, result.masks)
    assert mean_loss(learned, heldout) < mean_loss(mag, heldout)


def test_masks_transfer_as_prior_through_the_packed_file(tmp_path, tiny_lm, trained_lm):
    _, ids = trained_lm
    general = prune_oneshot(tiny_lm, ids[:32], OneShotConfig(method="wanda"), inplace=False)
    path = save_masks(general, tmp_path)
    one_step = train_maskllm(tiny_lm, iterate_batches(ids[:32], 8), MaskLLMConfig(steps=1, lr=1e-6), prior=load_masks(path), progress=False)
    assert one_step.changed_from_prior < 0.15  # the transferred mask is where training starts
    with pytest.raises(CompressError, match="does not have"):
        train_maskllm(tiny_lm, iterate_batches(ids[:32], 8), MaskLLMConfig(steps=1), prior={"nope": general[next(iter(general))]})


def test_masks_file_is_one_bit_per_weight_and_rejects_non_two_four(tmp_path):
    masks = {"a": magnitude_mask(torch.randn(64, 128)), "b": magnitude_mask(torch.randn(16, 32))}
    path = save_masks(masks, tmp_path / "m.safetensors")
    assert path.stat().st_size < (64 * 128 + 16 * 32) / 8 + 1024
    loaded = load_masks(path)
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)
    bad = masks["b"].clone()
    bad[0, :4] = True
    with pytest.raises(CompressError, match="not 2:4"):
        save_masks({"b": bad}, tmp_path / "bad.safetensors")

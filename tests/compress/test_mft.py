import copy

import pytest
import torch

from vlm.compress.calibration import iterate_batches, mean_loss
from vlm.compress.mft import FinetuneConfig, MFTLoss, finetune, mft_targets


def test_target_puts_the_label_ahead_by_tau():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 30, generator=gen) * 3
    labels = torch.randint(0, 30, (200,), generator=gen)
    q = mft_targets(logits, labels, tau=0.2)
    assert torch.allclose(q.sum(-1), torch.ones(200), atol=1e-5)
    p_label = q.gather(1, labels[:, None]).squeeze(1)
    others = q.scatter(1, labels[:, None], -1.0).max(-1).values
    p = torch.softmax(logits, -1)
    capped = (p.gather(1, labels[:, None]).squeeze(1) > 0.8)
    assert torch.all((p_label - others)[~capped] >= 0.2 - 1e-4)
    assert torch.allclose(p_label[capped], torch.ones(int(capped.sum())), atol=1e-4)


def test_matches_modelopt_mftloss_and_ignores_minus_100():
    distill = pytest.importorskip("modelopt.torch.distill", reason="nvidia-modelopt (dev dependency) is needed for the cross-check")
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 9, 50, generator=gen), torch.randn(2, 9, 50, generator=gen) * 2
    labels = torch.randint(0, 50, (2, 9), generator=gen)
    labels[0, :3] = teacher[0, :3].argmax(-1)  # some tokens where the teacher is already right
    for temperature in (1.0, 2.0):
        ours = MFTLoss(tau=0.2, temperature=temperature)(student, teacher, labels)
        theirs = distill.MFTLoss(temperature=temperature, threshold=0.2)(student, teacher, labels.reshape(-1))
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    masked = labels.clone()
    masked[1] = -100
    ours = MFTLoss()(student, teacher, masked)
    theirs = distill.MFTLoss(threshold=0.2)(student[0], teacher[0], labels[0])
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_mft_forgets_less_than_standard_finetuning(trained_lm):
    model, ids = trained_lm
    offsets = torch.randint(0, 3, (64, 1), generator=torch.Generator().manual_seed(2))
    site = (torch.arange(32)[None, :] * 5 + offsets) % 128  # a new pattern: steps of 5 the LM never saw
    original = ids[200:]
    results = {}
    for method in ("standard", "mft"):
        tuned = copy.deepcopy(model)
        finetune(tuned, iterate_batches(site, 8), FinetuneConfig(method=method, steps=25, lr=3e-3), progress=False)
        results[method] = (mean_loss(tuned, site), mean_loss(tuned, original))
    base_site, base_orig = mean_loss(model, site), mean_loss(model, original)
    assert results["mft"][0] < base_site  # it does learn the site
    assert results["mft"][1] - base_orig < 0.5 * (results["standard"][1] - base_orig)

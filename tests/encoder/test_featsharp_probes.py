"""FeatSharp upsampler mechanics and the linear probes used to score encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm.encoder import RadioConfig, RadioEncoder
from vlm.encoder.probes import classification_probe, segmentation_probe
from vlm.featsharp import FeatSharpConfig, FeatSharpUpsampler, fit_featsharp, multiview_loss

torch.set_num_threads(1)


def _tiny_encoder() -> RadioEncoder:
    torch.manual_seed(0)
    return RadioEncoder(RadioConfig(hidden_size=32, depth=1, num_heads=2, num_registers=1, max_resolution=128))


def test_upsampler_doubles_the_grid_for_non_square_input():
    up = FeatSharpUpsampler(_tiny_encoder(), FeatSharpConfig(window=4, num_heads=2))
    out = up(torch.rand(2, 1, 64, 96))
    assert out.shape == (2, 32, 8, 12)
    assert not any(p.requires_grad for p in up.encoder.parameters())  # the encoder stays frozen


def test_joint_bilateral_upsampling_follows_image_edges():
    """A feature step at low resolution, with the sharp image edge as guide: JBU lands closer to
    the true high-resolution map than bilinear interpolation does."""
    up = FeatSharpUpsampler(_tiny_encoder(), FeatSharpConfig(upsample=4, jbu_radius=4))
    hi = torch.zeros(1, 1, 32, 32)
    hi[..., :, 13:] = 1.0  # edge between output columns 12 and 13 (not on the low-res grid)
    low = F.avg_pool2d(hi, 4)  # (1, 1, 8, 8) blurred step
    with torch.no_grad():
        jbu = up._joint_bilateral(low, hi)
    bilinear = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    assert (jbu - hi).abs().mean() < 0.9 * (bilinear - hi).abs().mean()
    const = torch.full((1, 3, 8, 8), 2.0)
    with torch.no_grad():
        assert torch.allclose(up._joint_bilateral(const, torch.rand(1, 1, 32, 32)), torch.full((1, 3, 32, 32), 2.0), atol=1e-5)


def test_multiview_training_lowers_the_loss():
    torch.manual_seed(0)
    up = FeatSharpUpsampler(_tiny_encoder(), FeatSharpConfig(window=4, num_heads=2, debias_grid=4))
    imgs = torch.rand(8, 1, 64, 64)
    imgs[:, :, 16:48, 16:48] += 0.5
    imgs = imgs.clamp(0, 1)

    def held_loss() -> float:
        torch.manual_seed(123)  # the same random views before and after
        with torch.no_grad():
            return float(multiview_loss(up, imgs))

    before = held_loss()
    fit_featsharp(up, imgs, steps=40, batch_size=4, lr=3e-3)
    assert held_loss() < 0.9 * before


def test_segmentation_probe_scores_informative_features_high():
    torch.manual_seed(0)
    labels = torch.zeros(24, 16, 16, dtype=torch.int16)
    for i in range(24):  # two organs at random positions
        r, c = torch.randint(0, 8, (2,)).tolist()
        labels[i, r:r + 6, c:c + 6] = 1
        labels[i, 15 - r // 2:16, :4] = 2
    one_hot = F.one_hot(labels.long(), 3).permute(0, 3, 1, 2).float()
    good = F.avg_pool2d(one_hot, 2) + 0.05 * torch.randn(24, 3, 8, 8)
    noise = torch.randn(24, 3, 8, 8)
    s_good = segmentation_probe(good[:18], labels[:18], good[18:], labels[18:], classes=[1, 2], steps=80)
    s_noise = segmentation_probe(noise[:18], labels[:18], noise[18:], labels[18:], classes=[1, 2], steps=80)
    assert s_good["mean_dice"] > 0.75 and s_noise["mean_dice"] < 0.4
    assert set(s_good) == {"dice/1", "dice/2", "mean_dice"}


def test_classification_probe_auroc():
    torch.manual_seed(0)
    y = (torch.rand(200, 3) < 0.4).float()
    x = torch.cat([y * 2 + 0.5 * torch.randn(200, 3), torch.randn(200, 5)], 1)
    good = classification_probe(x[:150], y[:150], x[150:], y[150:])
    bad = classification_probe(torch.randn(200, 8)[:150], y[:150], torch.randn(50, 8), y[150:])
    assert good["mean_auroc"] > 0.95 and 0.25 < bad["mean_auroc"] < 0.75


def test_classification_probe_chooses_l2_by_cross_validation_on_train_only():
    from vlm.encoder.probes import classification_probe

    g = torch.Generator().manual_seed(3)
    y = (torch.rand(120, 2, generator=g) > 0.5).long()
    signal = y.float() @ torch.randn(2, 4, generator=g)
    x = torch.cat([signal + 0.8 * torch.randn(120, 4, generator=g), torch.randn(120, 200, generator=g)], 1)  # 200 noise dims
    grid = (1e-4, 1e-2, 1.0)
    tuned = classification_probe(x[:80], y[:80], x[80:], y[80:], grid=grid)
    assert tuned["weight_decay"] in grid and tuned["mean_auroc"] > 0.65
    fixed = {wd: classification_probe(x[:80], y[:80], x[80:], y[80:], weight_decay=wd)["mean_auroc"] for wd in grid}
    assert tuned["mean_auroc"] == fixed[tuned["weight_decay"]]
    shuffled = classification_probe(x[:80], y[:80], x[80:], y[80:][torch.randperm(40, generator=g)], grid=grid)
    assert shuffled["weight_decay"] == tuned["weight_decay"]  # the choice never looks at the test labels
    assert shuffled["mean_auroc"] < tuned["mean_auroc"]

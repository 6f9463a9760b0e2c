"""The RADIO-style encoder: shapes at any patch-multiple resolution, CPE behaviour, adaptors,
1- and 3-channel input, save / load round trip, input errors."""

from __future__ import annotations

import json

import pytest
import torch

from vlm.encoder import CroppedPositionEmbedding, EncoderInputError, ModelLoadError, RadioConfig, RadioEncoder, TeacherSpec

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def encoder() -> RadioEncoder:
    torch.manual_seed(0)
    cfg = RadioConfig(hidden_size=64, depth=2, num_heads=2, num_registers=2, max_resolution=256,
                      teachers=[TeacherSpec("seg", 32, 48), TeacherSpec("clip", 16, 24)], adaptor_hidden=64)
    return RadioEncoder(cfg).eval()


@pytest.mark.parametrize("hw", [(224, 224), (64, 160), (320, 96)])  # square, non-square, beyond the CPE grid
def test_features_for_any_patch_multiple(encoder, hw):
    x = torch.rand(2, 1, *hw)
    out = encoder(x, spatial=True)
    h, w = hw[0] // 16, hw[1] // 16
    assert out.grid == (h, w)
    assert out.features.shape == (2, 64, h, w)
    assert out.summary.shape == (2, 2 * 64)  # one summary token per teacher
    feats, grid = encoder.forward_features(x, return_grid=True)
    assert feats.shape == (2, h * w, 64) and grid == (h, w)
    assert torch.allclose(feats.transpose(1, 2).reshape(2, 64, h, w), out.features, atol=1e-5)


def test_adaptors_selectable_by_name(encoder):
    x = torch.rand(3, 3, 96, 128)
    out = encoder(x, adaptors=["seg"])
    assert set(out.adaptors) == {"seg"}
    s, f = out.adaptors["seg"]
    assert s.shape == (3, 32) and f.shape == (3, 6 * 8, 48)
    both = encoder(x, adaptors=["seg", "clip"], spatial=True)
    assert both.adaptors["clip"][1].shape == (3, 24, 6, 8)
    with pytest.raises(EncoderInputError, match="has \\['clip', 'seg'\\]"):
        encoder(x, adaptors=["cxr"])


def test_grey_input_equals_replicated_rgb_and_normalisation_is_inside(encoder):
    grey = torch.rand(2, 1, 64, 64)
    a = encoder.forward_features(grey)
    b = encoder.forward_features(grey.expand(-1, 3, -1, -1))
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, encoder.forward_features(grey * 0.5), atol=1e-3)  # intensities matter


def test_input_errors_say_what_to_do(encoder):
    with pytest.raises(EncoderInputError, match="multiples of the patch size 16"):
        encoder(torch.rand(1, 1, 100, 64))
    with pytest.raises(EncoderInputError, match="1 or 3"):
        encoder(torch.rand(1, 4, 64, 64))
    with pytest.raises(EncoderInputError, match="batch axis"):
        encoder(torch.rand(3, 64, 64))


def test_cpe_random_crops_in_training_and_fixed_resize_in_eval():
    torch.manual_seed(0)
    cpe = CroppedPositionEmbedding(8, grid_size=16)
    cpe.train()
    a, b = cpe(4, 6, 5), cpe(4, 6, 5)
    assert a.shape == (4, 30, 8)
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(a, b)  # one random window per sample
    cpe.eval()
    with torch.no_grad():
        e1, e2 = cpe(2, 6, 5), cpe(2, 6, 5)
        assert torch.equal(e1, e2) and torch.equal(e1[0], e1[1])
        full = cpe(1, 16, 16)
    assert torch.allclose(full[0], cpe.grid[0].flatten(1).T, atol=1e-6)  # full grid at its own size is the identity


def test_cpe_window_statistics():
    """Training windows cover 10–100 % of the grid with aspect in [3/4, 4/3]."""
    cpe = CroppedPositionEmbedding(4, grid_size=32)
    theta = cpe._random_windows(20000, torch.device("cpu"))
    sw, sh = theta[:, 0, 0], theta[:, 1, 1]
    area, aspect = sw * sh, sw / sh
    assert area.min() >= 0.1 - 1e-6 and area.max() <= 1 + 1e-6
    assert aspect.min() >= 0.74 and aspect.max() <= 1.34
    assert (theta[:, 0, 2].abs() <= 1 - sw + 1e-6).all()  # windows stay inside the grid


def test_save_and_load_round_trip(encoder, tmp_path):
    path = encoder.save_pretrained(tmp_path / "enc")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "m3_radio" and cfg["hidden_size"] == 64
    loaded = RadioEncoder.from_pretrained(path)
    x = torch.rand(2, 1, 48, 80)
    a, b = encoder(x, adaptors=["clip"]), loaded(x, adaptors=["clip"])
    assert torch.allclose(a.features, b.features, atol=1e-6)
    assert torch.allclose(a.adaptors["clip"][0], b.adaptors["clip"][0], atol=1e-6)
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "llava"}))
    with pytest.raises(ModelLoadError, match="model_type must be 'm3_radio'"):
        RadioEncoder.from_pretrained(path)
    with pytest.raises(ModelLoadError, match="must hold config.json"):
        RadioEncoder.from_pretrained(tmp_path / "missing")


def test_trains_end_to_end_with_gradients_to_cpe():
    torch.manual_seed(0)
    enc = RadioEncoder(RadioConfig(hidden_size=32, depth=1, num_heads=2, max_resolution=128, teachers=[TeacherSpec("t", 8, 8)], adaptor_hidden=32))
    enc.train()
    x = torch.rand(4, 1, 64, 64)
    target = torch.randn(4, 16, 8)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(enc(x, adaptors=["t"]).adaptors["t"][1], target)
        opt.zero_grad()
        loss.backward()
        assert enc.pos_embed.grid.grad is not None and enc.pos_embed.grid.grad.abs().sum() > 0
        opt.step()
        first = first or float(loss.detach())
    assert float(loss.detach()) < 0.7 * first


def test_half_precision_checkpoint_loads_into_float32(encoder, tmp_path):
    path = encoder.save_pretrained(tmp_path / "half", dtype=torch.float16)
    loaded = RadioEncoder.from_pretrained(path)
    assert loaded.patch_embed.weight.dtype == torch.float32
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(encoder.forward_features(x), loaded.forward_features(x), atol=2e-2)

"""Model assembly: image placeholders, several images, save → load round trip, pluggable towers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlm.model import M3Config, M3Model, ModelLoadError, load_model
from vlm.projector import build_projector
from vlm.vision_tower import VisionTower


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(50 + 10 * i, 60), dtype=np.uint8) for i in range(n)]


def _prompt_ids(model: M3Model, text: str) -> torch.Tensor:
    from vlm.vila import tokenize_with_images

    ids = tokenize_with_images(text, model.tokenizer, model.image_token_index, add_special_tokens=False)
    return torch.tensor([model.expand_image_tokens(ids)])


def test_image_placeholders_take_projected_features(tiny_m3):
    assert tiny_m3.tokens_per_image == 9  # 70 px / 14 = 5×5 grid, padded to 6×6, merged 2×2
    pixels = tiny_m3.vision_tower.preprocess(_images(2))
    assert pixels.shape == (2, 3, 70, 70)
    feats = tiny_m3.encode_images(pixels)
    assert feats.shape == (2, 9, 64)
    ids = _prompt_ids(tiny_m3, "<|user|>\n<image>\n<image>\nCompare the two sequences.<|end|>")
    embeds = tiny_m3.embed(ids, feats)
    pos = (ids[0] == tiny_m3.image_token_index).nonzero().flatten()
    assert len(pos) == 18
    assert torch.equal(embeds[0, pos[:9]], feats[0]) and torch.equal(embeds[0, pos[9:]], feats[1])
    text_pos = (ids[0] != tiny_m3.image_token_index).nonzero().flatten()
    assert torch.equal(embeds[0, text_pos], tiny_m3.llm.get_input_embeddings()(ids[0, text_pos]))


def test_placeholder_count_must_match_features(tiny_m3):
    ids = _prompt_ids(tiny_m3, "<image>\n<image>\nwhat?")
    with pytest.raises(ModelLoadError, match="must match"):
        tiny_m3.embed(ids, torch.zeros(1, 9, 64))


def test_save_load_round_trip_gives_equal_logits(tiny_m3, tiny_m3_dir):
    assert {p.name for p in tiny_m3_dir.iterdir()} >= {"config.json", "llm", "vision_tower", "mm_projector"}
    assert (tiny_m3_dir / "mm_projector" / "model.safetensors").is_file()
    assert json.loads((tiny_m3_dir / "config.json").read_text())["model_type"] == "m3_vlm"
    from safetensors.torch import load_file

    assert all(k.startswith("vision_model.") for k in load_file(str(tiny_m3_dir / "vision_tower" / "model.safetensors")))
    loaded = load_model(tiny_m3_dir)
    ids = _prompt_ids(tiny_m3, "<|user|>\n<image>\nWhat is the liver volume?<|end|>\n<|assistant|>\n")
    pixels = tiny_m3.vision_tower.preprocess(_images(1))
    with torch.no_grad():
        a = tiny_m3(ids, pixel_values=pixels).logits
        b = loaded(ids, pixel_values=pixels).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert loaded.tokenizer.chat_template == tiny_m3.tokenizer.chat_template
    assert loaded.image_token_index == tiny_m3.image_token_index


def test_training_loss_ignores_image_positions(tiny_m3):
    ids = _prompt_ids(tiny_m3, "<image>\nThe liver volume is 1523.4 mL.")
    pixels = tiny_m3.vision_tower.preprocess(_images(1))
    out = tiny_m3(ids, pixel_values=pixels, labels=ids.clone())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert tiny_m3.mm_projector.layers[2].weight.grad is not None
    tiny_m3.zero_grad(set_to_none=True)


def test_clip_tower_drops_cls_token_and_round_trips(tmp_path, m3_tokenizer, make):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(3)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            image_size=56, patch_size=14)).eval()
    clip.save_pretrained(tmp_path / "clip")
    tower = VisionTower.from_pretrained(tmp_path / "clip")
    assert tower.select_feature == "patch"
    feats = tower(torch.zeros(1, 3, 56, 56))
    assert feats.shape == (1, 16, 32)  # 4×4 patches, CLS dropped
    model = M3Model(M3Config(), tower, build_projector("mlp_downsample", 32, 64), make.llama(len(m3_tokenizer)), m3_tokenizer)
    model.save_pretrained(tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    assert again.vision_tower.kind == "clip_vision_model" and again.tokens_per_image == 4
    x = torch.randn(1, 3, 56, 56)
    assert torch.allclose(model.encode_images(x), again.encode_images(x), atol=1e-6)


def test_radio_encoder_plugs_in_as_tower(tmp_path, m3_tokenizer, make):
    encoder = pytest.importorskip("vlm.encoder")
    enc = encoder.RadioEncoder(encoder.RadioConfig(patch_size=16, hidden_size=48, depth=2, num_heads=3, image_size=64, max_resolution=128))
    enc.save_pretrained(tmp_path / "enc")
    tower = VisionTower.from_pretrained(tmp_path / "enc")
    assert tower.hidden_size == 48 and tower.image_size == 64
    model = M3Model(M3Config(), tower, build_projector("mlp_downsample", 48, 64), make.llama(len(m3_tokenizer)), m3_tokenizer)
    model.save_pretrained(tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    pixels = again.vision_tower.preprocess([np.full((40, 40), 128, np.uint8)])
    assert float(pixels.max()) <= 1.0  # the encoder normalises inside: [0, 1] in
    assert again.encode_images(pixels).shape == (1, 4, 64)  # 4×4 patches → 2×2 merged
    assert torch.allclose(model.encode_images(pixels), again.encode_images(pixels), atol=1e-5)


def test_folder_without_parts_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "m3_vlm"}))
    with pytest.raises(ModelLoadError, match="llm/"):
        load_model(tmp_path)

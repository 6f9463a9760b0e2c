"""Tiny randomly initialised models for the vlm tests (built once per session, all on CPU)."""

from __future__ import annotations

import pytest
import torch

from vlm.model import M3Config, M3Model
from vlm.projector import build_projector
from vlm.tokenizer import TokenizerConfig, train_tokenizer
from vlm.vision_tower import VisionTower

torch.set_num_threads(1)  # a shared machine: more threads only wait on each other

CORPUS = [
    "The liver volume is 1523.4 mL and the spleen volume is 180.2 mL.",
    "Is there a pleural effusion on this chest x-ray? No pleural effusion is seen.",
    "The brain tumor has an enhancing core, necrosis and surrounding edema.",
    "What does this CT image show? An axial slice of the abdomen with liver, kidneys and spleen.",
    "Call the expert to measure the lesion; the largest diameter is 23 mm.",
] * 40


def tiny_llama(vocab_size: int, hidden: int = 64, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def tiny_siglip(image_size: int = 70, hidden: int = 32, layers: int = 3, seed: int = 1):
    """Patch 14: 70 px → a 5×5 grid (odd, so mlp_downsample pads) → 9 image tokens."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                             image_size=image_size, patch_size=14)
    return SiglipVisionModel(cfg).eval()


def build_tiny_m3(tokenizer, seed: int = 0) -> M3Model:
    llm = tiny_llama(len(tokenizer), seed=seed)
    siglip = tiny_siglip(seed=seed + 1)
    tower = VisionTower(siglip, kind="siglip_vision_model", image_size=70, hidden_size=32)
    torch.manual_seed(seed + 2)
    projector = build_projector("mlp_downsample", 32, 64).eval()
    return M3Model(M3Config(), tower, projector, llm, tokenizer).eval()


@pytest.fixture(scope="session")
def m3_tokenizer():
    return train_tokenizer(CORPUS, None, TokenizerConfig(vocab_size=600))


@pytest.fixture(scope="session")
def tiny_m3(m3_tokenizer) -> M3Model:
    return build_tiny_m3(m3_tokenizer)


@pytest.fixture(scope="session")
def tiny_m3_dir(tiny_m3, tmp_path_factory):
    path = tmp_path_factory.mktemp("m3ckpt") / "tiny-m3"
    tiny_m3.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def make():
    """The builders above, for tests that need their own tiny parts."""
    import types

    return types.SimpleNamespace(llama=tiny_llama, siglip=tiny_siglip, m3=build_tiny_m3, corpus=CORPUS)

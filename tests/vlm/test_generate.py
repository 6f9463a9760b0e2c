"""The in-process backend: streaming, cached image features, prefix KV-cache reuse with identical results."""

from __future__ import annotations

import numpy as np
import torch

from vlm.backends.base import GenerationConfig
from vlm.backends.hf_vlm import HFVLMBackend

IMG = np.random.default_rng(1).integers(0, 256, size=(64, 64), dtype=np.uint8)
CFG = GenerationConfig(max_new_tokens=6)


def _first_messages():
    return [{"role": "system", "content": "You are m3."}, {"role": "user", "content": "<image>\nWhat is the liver volume?"}]


def test_kv_cache_reuse_gives_identical_logits(tiny_m3):
    from transformers import DynamicCache

    backend = HFVLMBackend(tiny_m3)
    ids = backend.prompt_ids(_first_messages())
    full = torch.tensor([tiny_m3.expand_image_tokens(ids)])
    feats = tiny_m3.encode_images(tiny_m3.vision_tower.preprocess([IMG]))
    with torch.no_grad():
        embeds = tiny_m3.embed(full, feats)
        whole = tiny_m3.llm(inputs_embeds=embeds).logits
        cache = DynamicCache(config=tiny_m3.llm.config)
        split = 20  # inside the image tokens' neighbourhood: prefix = system + image
        tiny_m3.llm(inputs_embeds=embeds[:, :split], cache=cache, use_cache=True)
        rest = tiny_m3.llm(inputs_embeds=embeds[:, split:], cache=cache, use_cache=True).logits
    assert torch.allclose(whole[:, split:], rest, atol=1e-5)


def test_streaming_and_follow_up_reuses_image_and_prefix(tiny_m3, monkeypatch):
    backend = HFVLMBackend(tiny_m3)
    encoded = []
    real = tiny_m3.encode_images
    monkeypatch.setattr(tiny_m3, "encode_images", lambda px: encoded.append(px.shape[0]) or real(px))

    pieces = list(backend.stream_chat(_first_messages(), [IMG], config=CFG, cache_key="conv-1"))
    first = "".join(pieces)
    cache = backend.caches.get("conv-1")
    assert cache.reused_tokens == 0 and encoded == [1]
    first_prompt = cache.prompt_tokens

    follow = _first_messages() + [{"role": "assistant", "content": first}, {"role": "user", "content": "And the spleen?"}]
    cached_text = "".join(backend.stream_chat(follow, [IMG], config=CFG, cache_key="conv-1"))
    assert encoded == [1]  # the image was not encoded again
    assert cache.reused_tokens >= first_prompt  # the whole first prompt (image included) came from the cache
    assert cache.prompt_tokens - cache.reused_tokens < 40

    fresh = HFVLMBackend(tiny_m3)
    assert "".join(fresh.stream_chat(follow, [IMG], config=CFG)) == cached_text  # same answer as without caches


def test_changed_image_is_not_served_from_cache(tiny_m3):
    backend = HFVLMBackend(tiny_m3)
    list(backend.stream_chat(_first_messages(), [IMG], config=CFG, cache_key="c"))
    other = 255 - IMG
    text = "".join(backend.stream_chat(_first_messages(), [other], config=CFG, cache_key="c"))
    cache = backend.caches.get("c")
    assert cache.reused_tokens < cache.prompt_tokens - tiny_m3.tokens_per_image  # stops before the image
    assert text == "".join(HFVLMBackend(tiny_m3).stream_chat(_first_messages(), [other], config=CFG))


def test_image_count_must_match_placeholders(tiny_m3):
    import pytest

    from vlm.model import ModelLoadError

    backend = HFVLMBackend(tiny_m3)
    with pytest.raises(ModelLoadError, match="placeholders"):
        list(backend.stream_chat(_first_messages(), [], config=CFG))

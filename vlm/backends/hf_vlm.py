"""The in-process backend for m3's own model and published VILA-layout checkpoints.

``HFVLMBackend.from_pretrained(path)`` loads through ``vlm.model.load_model``; ``stream_chat`` renders
the messages with the model's chat format (the tokenizer's chat template, or VILA's ``llama_3`` /
``vicuna_v1``), expands ``<image>`` placeholders, reuses the conversation's cached image features and
prefix key/value cache (``cache_key``), and streams the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from vlm.backends.base import BackendInfo, GenerationConfig, TokenLogprobs
from vlm.constraints import DecodingConstraints
from vlm.generate import CacheStore, PrefixCache, image_key, stream_generate, token_keys
from vlm.model import M3Model, ModelLoadError, load_model
from vlm.vila import VILA_CHAT_FORMATS, render_vila_prompt, tokenize_with_images

__all__ = ["HFVLMBackend"]

_STOP_TOKENS = ("<|eot_id|>", "<|end|>", "<|im_end|>", "</s>", "<end_of_turn>")


class HFVLMBackend:
    """``ChatBackend`` over an ``M3Model`` running in this process."""

    def __init__(self, model: M3Model, *, name: str = "m3", max_conversations: int = 8, model_card: str = "") -> None:
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            raise ModelLoadError("HFVLMBackend needs the model's tokenizer (llm/ must hold one).")
        self.caches = CacheStore(max_conversations)
        self.info = BackendInfo(name=name, version=model.config.version, takes_images=True, model_card=model_card,
                                token_logprobs=True)
        self._eos = _eos_ids(self.tokenizer, model.llm)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None) -> "HFVLMBackend":
        """The backend over the checkpoint folder ``path``, loaded on ``device`` in ``dtype`` (``vlm.model.load_model``:
        "auto" = CUDA with bf16 where available, else CPU float32; ``None`` = CPU)."""
        path = Path(path)
        # m3 folders carry model_card.md; published Hugging Face checkpoints a README.md
        card = next((c for c in (path / "model_card.md", path / "README.md") if c.is_file()), None)
        return cls(load_model(path, device=device, dtype=dtype), name=path.name, model_card=card.read_text() if card else "")

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text for ``messages`` (ending with the assistant's turn opening)."""
        fmt = self.model.config.chat_format
        if fmt in VILA_CHAT_FORMATS:
            return render_vila_prompt(messages, fmt, tools)
        clean = [{k: v for k, v in m.items() if k in ("role", "content", "tool_calls", "name")} for m in messages]
        return self.tokenizer.apply_chat_template(clean, tools=tools or None, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt token ids with one placeholder id per ``<image>`` (not yet expanded)."""
        vila = self.model.config.chat_format in VILA_CHAT_FORMATS
        return tokenize_with_images(self.render(messages, tools), self.tokenizer, self.model.image_token_index,
                                    add_special_tokens=vila, image_token=self.model.config.image_token)

    def image_features(self, images: list[np.ndarray], cache: PrefixCache) -> tuple[list[str], torch.Tensor | None]:
        """Hashes and ``(n, T, H)`` features of ``images``, encoding only those not yet in ``cache``."""
        keys = [image_key(im) for im in images]
        todo = [i for i, k in enumerate(keys) if k not in cache.image_features]
        todo = list({keys[i]: i for i in todo}.values())  # each new picture once
        if todo:
            pixels = self.model.vision_tower.preprocess([images[i] for i in todo], self.model.config.image_aspect_ratio)
            with torch.no_grad():
                feats = self.model.encode_images(pixels)  # moved to the model's device and dtype there
            for j, i in enumerate(todo):
                cache.image_features[keys[i]] = feats[j]
        if not keys:
            return keys, None
        return keys, torch.stack([cache.image_features[k] for k in keys])

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        images: list[np.ndarray] | None = None,
        tools: list[dict[str, Any]] | None = None,
        config: GenerationConfig | None = None,
        cache_key: str | None = None,
        constraints: DecodingConstraints | None = None,
        logprobs: TokenLogprobs | None = None,
    ) -> Iterator[str]:
        """Stream the answer to ``messages``, decoded under ``constraints`` (their failures recorded on them);
        ``logprobs`` gets the generated tokens' log-probabilities."""
        config = config or GenerationConfig()
        images = list(images or [])
        cache = self.caches.get(cache_key)
        ids = self.prompt_ids(messages, tools)
        n_placeholders = sum(1 for t in ids if t == self.model.image_token_index)
        if n_placeholders != len(images):
            raise ModelLoadError(f"the messages hold {n_placeholders} <image> placeholders but {len(images)} images were given; they must match.")
        keys, feats = self.image_features(images, cache)
        full = self.model.expand_image_tokens(ids)
        input_ids = torch.tensor([full], device=self.model.llm.device)
        with torch.no_grad():
            embeds = self.model.embed(input_ids, feats)
        tkeys = token_keys(full, self.model.image_token_index, keys, self.model.tokens_per_image)
        yield from stream_generate(self.model.llm, self.tokenizer, embeds, tkeys, config, cache, self._eos, constraints, logprobs)


def _eos_ids(tokenizer: Any, llm: torch.nn.Module) -> list[int]:
    ids: list[int] = []
    gen_eos = getattr(getattr(llm, "generation_config", None), "eos_token_id", None)
    for t in [tokenizer.eos_token_id] + (gen_eos if isinstance(gen_eos, list) else [gen_eos]):
        if t is not None and t not in ids:
            ids.append(int(t))
    vocab = tokenizer.get_vocab()
    for tok in _STOP_TOKENS:
        if tok in vocab and vocab[tok] not in ids:
            ids.append(vocab[tok])
    return ids

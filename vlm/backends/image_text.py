"""A backend over any local ``AutoModelForImageTextToText`` checkpoint (LLaVA-, MedGemma-format ...).

The checkpoint's own processor renders the chat (its chat template) and prepares the pictures; the
model's ``generate`` decodes. ``<image>`` placeholders in the agent's messages become image content
parts; ``tool`` turns become user turns ("Expert result: ...") when the template has no tool role.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from vlm.backends.base import BackendInfo, GenerationConfig, TokenLogprobs
from vlm.constraints import DecodingConstraints
from vlm.device import from_pretrained_kwargs, resolve_device
from vlm.generate import generation_kwargs, threaded_generate

__all__ = ["ImageTextBackend", "to_content_parts"]

_IMAGE = "<image>"


class ImageTextBackend:
    """``ChatBackend`` adapter: ``ImageTextBackend.from_pretrained(folder)``."""

    def __init__(self, model: torch.nn.Module, processor: Any, *, name: str = "image-text-model", model_card: str = "") -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None) or ""
        self._tool_role = "tool" in template
        self.info = BackendInfo(name=name, version="", takes_images=True, model_card=model_card, token_logprobs=True)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None) -> "ImageTextBackend":
        """Load ``path`` on ``device`` in ``dtype`` (``vlm.device.resolve_device``; ``None`` = CPU, "auto" precision)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        placement = resolve_device(device if device is not None else "cpu", dtype if dtype is not None else "auto")
        kwargs = from_pretrained_kwargs(placement)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(placement.device)
        card = path / "README.md"
        return cls(model, AutoProcessor.from_pretrained(path), name=path.name, model_card=card.read_text() if card.is_file() else "")

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text the processor's chat template makes of ``messages``."""
        conv = to_content_parts(messages, tool_role=self._tool_role)
        return self.processor.apply_chat_template(conv, tools=tools or None, add_generation_prompt=True, tokenize=False)

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        images: list[np.ndarray] | None = None,
        tools: list[dict[str, Any]] | None = None,
        config: GenerationConfig | None = None,
        cache_key: str | None = None,  # this adapter re-reads the prompt each call
        constraints: DecodingConstraints | None = None,
        logprobs: TokenLogprobs | None = None,
    ) -> Iterator[str]:
        """Stream the answer to ``messages``, decoded under ``constraints`` (their failures recorded on them);
        ``logprobs`` gets the generated tokens' log-probabilities."""
        config = config or GenerationConfig()
        pictures = [Image.fromarray(_rgb(im)) for im in images or []]
        inputs = self.processor(text=self.render(messages, tools), images=pictures or None, return_tensors="pt")
        # ids stay integers; pixel tensors take the model's dtype (a bf16 model refuses float32 pixels)
        inputs = {k: (v.to(self.model.device, self.model.dtype) if v.is_floating_point() else v.to(self.model.device))
                  if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        # ``generate`` hands the processors the prompt's ids too: the constraints read only what follows them
        prompt_length = int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else 0
        kwargs = generation_kwargs(self.tokenizer, config, [t for t in [self.tokenizer.eos_token_id] if t is not None], constraints,
                                   prompt_length)
        kwargs.update(inputs)
        yield from threaded_generate(self.model, self.tokenizer, kwargs, {}, logprobs)


def to_content_parts(messages: list[dict[str, Any]], *, tool_role: bool) -> list[dict[str, Any]]:
    """Agent messages (text with ``<image>``) → HF content-part messages; consecutive same-role turns
    merge (templates that require alternation), system kept first."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        role, text = msg["role"], msg.get("content") or ""
        if role == "tool" and not tool_role:
            role, text = "user", "Expert result: " + text
        parts: list[dict[str, Any]] = []
        for i, chunk in enumerate(text.split(_IMAGE)):
            if i > 0:
                parts.append({"type": "image"})
            chunk = chunk.lstrip("\n") if i > 0 else chunk
            if chunk:
                parts.append({"type": "text", "text": chunk})
        if out and out[-1]["role"] == role and role != "system":
            out[-1]["content"].extend([{"type": "text", "text": "\n"}] + parts)
        else:
            out.append({"role": role, "content": parts})
    return out


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[:, :, :3]

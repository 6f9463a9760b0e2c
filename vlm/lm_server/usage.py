"""Token counts for a completion's ``usage``: the prompt as the backend feeds it to the model, the answer re-tokenized.

A ``ChatBackend`` streams text only, so ``m3 serve-lm`` counts with the backend's own tokenizer: the prompt through
the backend's renderer (``HFVLMBackend``: ``prompt_ids`` with every picture expanded to the model's image tokens;
``ImageTextBackend``: its processor over the rendered prompt and the pictures), the answer by tokenizing the text it
wrote. Re-tokenizing a generated text can give fewer tokens than were sampled (a model may emit a non-canonical
split), so ``completion_tokens`` — and ``finish_reason: "length"``, which compares it with ``max_tokens`` — can be
short by a token or so; a backend without a tokenizer reports 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["prompt_tokens", "text_tokens", "usage"]


def prompt_tokens(backend: Any, messages: list[dict[str, Any]], images: list[np.ndarray], tools: list[dict[str, Any]] | None) -> int:
    """How many positions the model reads for ``messages`` (and ``images``, ``tools``)."""
    model = getattr(backend, "model", None)
    if hasattr(backend, "prompt_ids") and hasattr(model, "expand_image_tokens"):  # m3 / VILA layout, in process
        return len(model.expand_image_tokens(backend.prompt_ids(messages, tools)))
    processor = getattr(backend, "processor", None)
    if processor is not None and hasattr(backend, "render"):  # any image-text-to-text checkpoint
        from PIL import Image

        pictures = [Image.fromarray(_rgb(im)) for im in images] or None
        ids = processor(text=backend.render(messages, tools), images=pictures, return_tensors="np")["input_ids"]
        return int(np.asarray(ids).shape[-1])
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        return 0
    return text_tokens(backend, "\n".join(str(m.get("content") or "") for m in messages))


def text_tokens(backend: Any, text: str) -> int:
    """Tokens of ``text`` in the backend's tokenizer (no special tokens added); 0 without a tokenizer."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None or not text:
        return 0
    return len(tokenizer.encode(text, add_special_tokens=False))


def usage(prompt: int, completion: int) -> dict[str, int]:
    """The ``usage`` object of a response."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[:, :, :3]

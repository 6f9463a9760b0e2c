"""Generation with per-conversation caches, streamed token by token.

A conversation keeps (``PrefixCache``): the projected features of every image it has seen (by content
hash), and the LM's key/value cache of the last sequence it ran with the keys of those positions. A
follow-up question re-renders the whole conversation, finds the longest prefix already in the cache,
drops the rest, and runs the LM only on the new tokens; images are not re-encoded. Decoding is
transformers' ``generate`` (greedy or sampled, stop strings, EOS) with a ``TextIteratorStreamer``;
``DecodingConstraints`` (``vlm.constraints``) become its logits processors: ``ReferenceConstraint`` keeps each
``[[key]]`` reference on the result field its own sentence names, ``SideConstraint`` keeps the tool calls' arguments
on the side of the body the question names and the answer on the side the calls measured (re-exported here).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import torch
from transformers import TextIteratorStreamer

from data.errors import M3Error
from vlm.backends.base import GenerationConfig, TokenLogprobs
from vlm.constraints import OTHER_SIDE, DecodingConstraints, ReferenceConstraint, SideConstraint
from vlm.constraints import token_texts as _token_texts  # noqa: F401  (older callers and tests)

log = logging.getLogger(__name__)

__all__ = ["PrefixCache", "CacheStore", "image_key", "stream_generate", "threaded_generate", "generation_kwargs", "token_keys", "GenerationError",
           "DecodingConstraints", "ReferenceConstraint", "SideConstraint", "OTHER_SIDE"]


class GenerationError(M3Error, RuntimeError):
    """Generation failed inside the language model (the message names the cause)."""


@dataclass
class PrefixCache:
    """One conversation's reusable state.

    image_features: image hash → ``(T, H)`` projected features.
    kv: the LM cache (``DynamicCache``) of the positions in ``keys``.
    keys: one key per cached position: the token id, or ``(image hash, index)`` for image positions.
    reused_tokens: how many prompt positions the last call took from the cache (for tests, benchmarks).
    """

    image_features: dict[str, torch.Tensor] = field(default_factory=dict)
    kv: Any = None
    keys: list[Hashable] = field(default_factory=list)
    reused_tokens: int = 0
    prompt_tokens: int = 0


class CacheStore:
    """Per-conversation caches by key, least recently used dropped beyond ``max_conversations``."""

    def __init__(self, max_conversations: int = 8) -> None:
        self.max_conversations = max_conversations
        self._caches: OrderedDict[str, PrefixCache] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str | None) -> PrefixCache:
        """The cache of conversation ``key`` (a fresh, unstored one when ``key`` is None)."""
        if key is None:
            return PrefixCache()
        with self._lock:
            cache = self._caches.pop(key, None) or PrefixCache()
            self._caches[key] = cache
            while len(self._caches) > self.max_conversations:
                self._caches.popitem(last=False)
            return cache

    def drop(self, key: str) -> None:
        with self._lock:
            self._caches.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._caches


def image_key(image: np.ndarray) -> str:
    """A content hash of a picture (shape, dtype and bytes)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha1(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:20]


def token_keys(ids: Sequence[int], image_token_index: int, image_keys: Sequence[str], tokens_per_image: int) -> list[Hashable]:
    """Cache keys for an expanded id list: ids for text, ``(image hash, i)`` for image positions."""
    keys: list[Hashable] = []
    n_img = 0
    for t in ids:
        if t == image_token_index:
            keys.append((image_keys[n_img // tokens_per_image], n_img % tokens_per_image))
            n_img += 1
        else:
            keys.append(int(t))
    return keys


def stream_generate(
    llm: torch.nn.Module,
    tokenizer: Any,
    inputs_embeds: torch.Tensor,
    keys: list[Hashable],
    config: GenerationConfig,
    cache: PrefixCache,
    eos_token_ids: Sequence[int] = (),
    constraints: DecodingConstraints | None = None,
    logprobs: TokenLogprobs | None = None,
) -> Iterator[str]:
    """Stream the continuation of ``inputs_embeds`` ``(1, L, H)`` whose positions have ``keys``, decoded under
    ``constraints`` (their failures recorded on them); ``logprobs`` gets the generated tokens' log-probabilities.

    Positions whose keys match the start of ``cache.keys`` are taken from ``cache.kv``; afterwards the
    cache holds the prompt and the generated tokens, ready for the next turn.
    """
    from transformers import DynamicCache

    length = inputs_embeds.shape[1]
    reuse = 0
    if cache.kv is not None:
        for a, b in zip(cache.keys, keys):
            if a != b:
                break
            reuse += 1
        reuse = min(reuse, length - 1)  # the last prompt position must run to give the first logits
        drop = cache.kv.get_seq_length() - reuse
        if drop > 0:
            cache.kv.crop(-drop)
    else:
        cache.kv = DynamicCache(config=llm.config)
    cache.reused_tokens, cache.prompt_tokens = reuse, length
    cache.keys = list(keys[:reuse])

    kwargs = generation_kwargs(tokenizer, config, eos_token_ids, constraints)
    kwargs.update(inputs_embeds=inputs_embeds, attention_mask=torch.ones(1, length, dtype=torch.long, device=inputs_embeds.device))
    kwargs[_cache_kwarg(llm)] = cache.kv
    result: dict[str, Any] = {}
    try:
        yield from threaded_generate(llm, tokenizer, kwargs, result, logprobs)
    except GenerationError:
        cache.kv, cache.keys = None, []
        raise
    generated = result["ids"][0].tolist()
    cached = cache.kv.get_seq_length()
    cache.keys = list(keys) + [int(t) for t in generated[: max(0, cached - length)]]


def generation_kwargs(tokenizer: Any, config: GenerationConfig, eos_token_ids: Sequence[int] = (),
                      constraints: DecodingConstraints | None = None, prompt_length: int = 0) -> dict[str, Any]:
    """``generate`` keyword arguments for a ``GenerationConfig`` (greedy when temperature is 0), with the
    ``constraints``' logits processors (``prompt_length``: prompt tokens in ``input_ids``; 0 for embeddings)."""
    kwargs: dict[str, Any] = dict(
        max_new_tokens=config.max_new_tokens,
        do_sample=config.temperature > 0,
        eos_token_id=list(eos_token_ids) or None,
        pad_token_id=_pad_id(tokenizer, eos_token_ids),
    )
    if config.temperature > 0:
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
    if config.stop:
        kwargs.update(stop_strings=list(config.stop), tokenizer=tokenizer)
    processors = constraints.processors(tokenizer, prompt_length) if constraints is not None else []
    if processors:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(processors)
    return kwargs


class _CoalescingStreamer(TextIteratorStreamer):
    """``TextIteratorStreamer`` that hands text to the reading thread at most every ``STREAM_COALESCE_S`` (and at the
    end): one queue hand-off per ~20 ms instead of one per token keeps the decoding thread's steps as fast as plain
    ``generate``'s; a reader sees the text a few milliseconds later, well under the app's own update interval."""

    def __init__(self, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(tokenizer, **kwargs)
        self._pending, self._last = "", 0.0

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self._pending += text
        now = time.perf_counter()
        if stream_end or (self._pending and now - self._last >= STREAM_COALESCE_S):
            super().on_finalized_text(self._pending, stream_end)
            self._pending, self._last = "", now


STREAM_COALESCE_S = 0.02


def threaded_generate(model: torch.nn.Module, tokenizer: Any, kwargs: dict[str, Any], result: dict[str, Any],
                      logprobs: TokenLogprobs | None = None) -> Iterator[str]:
    """Run ``model.generate(**kwargs)`` in a thread and yield its decoded text as it comes
    (``_CoalescingStreamer``); the output ids land in ``result["ids"]``. ``logprobs``: gets the log-probability of
    each generated token under the model's own logits (before sampling settings and logits processors)."""
    streamer = _CoalescingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    if logprobs is not None:
        kwargs = {**kwargs, "return_dict_in_generate": True, "output_logits": True}

    def run() -> None:
        try:
            with torch.no_grad():
                result["ids"] = model.generate(**kwargs, streamer=streamer)
        except Exception as exc:  # re-raised in the caller's thread below
            result["error"] = exc
            streamer.end()

    worker = threading.Thread(target=run, name="m3-generate", daemon=True)
    worker.start()
    try:
        yield from streamer
    finally:
        worker.join()
    if "error" in result:
        raise GenerationError(f"the language model failed while generating: {result['error']}") from result["error"]
    if logprobs is not None:
        result["ids"] = _record_logprobs(result["ids"], logprobs)


def _record_logprobs(output: Any, logprobs: TokenLogprobs) -> torch.Tensor:
    """The sequences of a ``generate`` output with ``output_logits``, after appending each generated token's
    log-probability (log-softmax of its step's raw logits) to ``logprobs``."""
    if not output.logits:
        return output.sequences
    steps = torch.stack(output.logits, dim=1)[0].float()  # (T, V): one row per generated token
    chosen = output.sequences[0, -steps.shape[0]:].to(steps.device)  # (T,): the tail of the sequence is what was generated
    logprobs.extend(torch.log_softmax(steps, dim=-1).gather(1, chosen[:, None])[:, 0].tolist())
    return output.sequences


def _cache_kwarg(llm: torch.nn.Module) -> str:
    params = inspect.signature(type(llm).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pad_id(tokenizer: Any, eos: Sequence[int]) -> int | None:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else (eos[0] if eos else None)

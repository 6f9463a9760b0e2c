"""Generation with per-conversation caches, streamed token by token.

A conversation keeps (``PrefixCache``): the projected features of every image it has seen (by content
hash), and the LM's key/value cache of the last sequence it ran with the keys of those positions. A
follow-up question re-renders the whole conversation, finds the longest prefix already in the cache,
drops the rest, and runs the LM only on the new tokens; images are not re-encoded. Decoding is
transformers' ``generate`` (greedy or sampled, stop strings, EOS) with a ``TextIteratorStreamer``;
with ``GenerationConfig.references`` set, ``ReferenceConstraint`` keeps each ``[[key]]`` reference on the
result field its own sentence names; with ``GenerationConfig.call_side`` / ``answer_side`` set,
``SideConstraint`` keeps the tool calls' arguments on the side of the body the question names and the
answer on the side the calls measured.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import torch
from transformers import TextIteratorStreamer

from data.errors import M3Error
from data.phantoms.labels import FINDING_SYNONYMS
from data.slice_facts import IN_SLICE, asks_about_shown_slice
from data.tool_text import REF_CLOSE, REF_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from vlm.backends.base import GenerationConfig

log = logging.getLogger(__name__)

__all__ = ["PrefixCache", "CacheStore", "image_key", "stream_generate", "threaded_generate", "generation_kwargs", "token_keys", "GenerationError",
           "ReferenceConstraint", "SideConstraint", "OTHER_SIDE"]


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
) -> Iterator[str]:
    """Stream the continuation of ``inputs_embeds`` ``(1, L, H)`` whose positions have ``keys``.

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

    kwargs = generation_kwargs(tokenizer, config, eos_token_ids)
    kwargs.update(inputs_embeds=inputs_embeds, attention_mask=torch.ones(1, length, dtype=torch.long, device=inputs_embeds.device))
    kwargs[_cache_kwarg(llm)] = cache.kv
    result: dict[str, Any] = {}
    try:
        yield from threaded_generate(llm, tokenizer, kwargs, result)
    except GenerationError:
        cache.kv, cache.keys = None, []
        raise
    generated = result["ids"][0].tolist()
    cached = cache.kv.get_seq_length()
    cache.keys = list(keys) + [int(t) for t in generated[: max(0, cached - length)]]


def generation_kwargs(tokenizer: Any, config: GenerationConfig, eos_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """``generate`` keyword arguments for a ``GenerationConfig`` (greedy when temperature is 0)."""
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
    processors = []
    if config.references:
        processors.append(ReferenceConstraint(tokenizer, config.references, question=config.question))
    if config.call_side:
        processors.append(SideConstraint(tokenizer, config.call_side))
    if config.answer_side:
        processors.append(SideConstraint(tokenizer, config.answer_side, in_answer=True))
    if processors:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(processors)
    return kwargs


_AUXILIARY = re.compile(r"(?:^|[:.,?!]\s*)(?:is|are|does|do|did|can|was|were|has|have)\b")
_YES_NO_CHOICE = re.compile(r"\b(?:yes or no|present or absent)\b")
_WH_WORD = re.compile(r"\b(?:which|what|where|how|when|who)\b")
_WHICH_SIDE = re.compile(r"\b(?:which|what) (?:side|hemisphere)\b")


def yes_no_question(question: str) -> bool:
    """Whether ``question`` asks for yes or no: a clause opening with an auxiliary verb ("Is there…",
    "Could you tell me: do you see…") that offers no other choice ("left or right", "CT or MRI"), or one
    offering "yes or no" / "present or absent"."""
    q = " ".join(question.lower().split())
    if _YES_NO_CHOICE.search(q):
        return True
    # "Can you check: which side…?": a polite lead-in's auxiliary does not make the question after it yes / no
    asked = q.partition(":")[2].strip() or q
    return bool(_AUXILIARY.search(asked)) and " or " not in asked


def _reference_processor_base() -> type:
    from transformers import LogitsProcessor

    return LogitsProcessor


class ReferenceConstraint(_reference_processor_base()):
    """A ``transformers`` logits processor that keeps a ``[[key]]`` reference on the structure its own
    sentence names: when the text just before the ``[[`` (since the last ``.``, ``;``, ``,`` or reference)
    names fields of the conversation's expert results (``keys``), the reference may spell only those
    fields ("The left kidney volume is [[" → ``left kidney volume``, never ``right kidney volume``).
    When the sentence names none of them (say, an organ no result measured) nothing is masked, so the
    agent still shows "(not in the expert result)" rather than another structure's value. Text outside
    references is untouched. ``input_ids`` are the generated tokens (the prompt goes in as embeddings);
    with a text prompt pass ``prompt_length``. A reference that opens the answer (no words before it, as in
    a closed question's "[[edema?]]") takes its subject from ``question``: the fields the question names;
    after a wh-question never a yes / no field, named or not ("Which side of the brain…?": the
    ``hemisphere`` field when a result has one); after a yes / no question about the slice on screen
    only an "in this slice" field, after any other never one.
    """

    # lead-matched key masking over the vocabulary: transformers offers the hook, not this constraint
    def __init__(self, tokenizer: Any, keys: Sequence[str], prompt_length: int = 0, question: str = "") -> None:
        self.tokenizer, self.prompt_length, self.question = tokenizer, prompt_length, question
        self.open, self.close = REF_OPEN, REF_CLOSE
        self.keys = sorted({" ".join(k.lower().split()) for k in keys}, key=len, reverse=True)
        self._named = [(k, re.compile(r"\b" + re.escape(k).replace(r"\ ", r"\s+") + r"s?\b")) for k in self.keys]
        self.pieces = _token_texts(tokenizer)
        self.bracketed = np.array([i for i, t in enumerate(self.pieces) if REF_OPEN[0] in t], dtype=np.int64)

    def allowed(self, lead: str) -> set[str]:
        """The keys a reference after ``lead`` may name: those of the fields the lead's last phrase
        names (longest names first: "liver tumor" before "liver"; "edema" allows ``edema?`` too); empty
        when it names none. With no words in ``lead``, the fields the whole question names."""
        from_question = not re.search(r"[a-z]", lead.lower()) and bool(self.question)
        if from_question and yes_no_question(self.question):
            # a yes / no question is answered by the yes / no field of the finding it names; naming none
            # ("Is it abnormal?"), by any finding's, the model's to pick
            yes_no = {k for k in self.keys if k.endswith("?")}
            # one about the slice on screen by an "in this slice" field, any other by the rest
            on_slice = {k for k in yes_no if k.endswith(IN_SLICE + "?")}
            if on_slice and asks_about_shown_slice(self.question):
                yes_no = on_slice
            elif yes_no - on_slice:
                yes_no -= on_slice
            return self._named_findings(yes_no) or yes_no
        phrase = self.question.lower() if from_question else re.split(r"[.;,\n]\s|;|\]\]", lead.lower())[-1]
        sides = set(re.findall(r"\b(left|right)\b", phrase))
        named: list[str] = []
        for key, pattern in self._named:
            # "left or right hemisphere?" asks for the side: it does not name the "right hemisphere" finding
            if from_question and len(sides) > 1 and re.search(r"\b(left|right)\b", key):
                continue
            if pattern.search(phrase) and not any(key in longer for longer in named):
                named.append(key)
        picked = {k for k in self.keys for n in named if k in (n, n + "?") or k.startswith(n + " ")}
        if from_question and "hemisphere" in self.keys and _WHICH_SIDE.search(self.question.lower()):
            return {"hemisphere"}  # "Which side of the brain contains the tumor?" asks for the side, not the tumour
        if from_question and _WH_WORD.search(self.question.lower()):
            # "Which side…?", "How large…?" are never answered by a finding's yes / no field
            return {k for k in (picked if named else self.keys) if not k.endswith("?")}
        return picked

    def _named_findings(self, yes_no: set[str]) -> set[str]:
        """The yes / no fields whose finding the question names, each word by its stem ("Is there central
        necrosis?" → ``necrosis?``, "Does the tumour enhance?" → ``enhancing tumor?``; a field inside a
        longer named one gives way to it); empty when it names none."""
        text = " ".join(self.question.lower().split())
        # "mass" is the tumour, "collapsed lung" the pneumothorax: the words the data names each finding with
        also = [name for name, words in FINDING_SYNONYMS.items() if any(re.search(rf"\b{re.escape(w.lower())}\b", text) for w in words)]
        asked = re.findall(r"[a-z]+", " ".join([text, *also]))
        named = {k for k in yes_no if all(any(word[:4] in a for a in asked) for word in k[:-1].removesuffix(IN_SLICE).split())}
        return {k for k in named if not any(k != o and re.search(r"\b" + re.escape(k[:-1]) + r"\b", o) for o in named)}

    def ok(self, partial: str, keys: set[str]) -> bool:
        """Whether the text after an open ``[[`` can still become (or already closes) one of ``keys``."""
        partial = partial.lower()
        end = partial.find(self.close)
        if end >= 0:
            return " ".join(partial[:end].split()) in keys and self.open not in partial[end:]
        return any((k + self.close).startswith(partial) for k in keys)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        try:
            return self._mask(input_ids, scores)
        except Exception:  # a constraint bug must not cost the answer: decode unconstrained, say so in the log
            log.exception("reference constraint failed; decoding this step unconstrained")
            return scores

    def _mask(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for b in range(input_ids.shape[0]):
            text = self.tokenizer.decode(input_ids[b, self.prompt_length:].tolist(), skip_special_tokens=True)
            if text.rfind(TOOL_CALL_OPEN) > text.rfind(TOOL_CALL_CLOSE):  # a tool call's JSON is not an answer
                continue
            at = text.rfind(self.open)
            if at >= 0 and text.find(self.close, at) < 0:  # inside a reference: every token is checked
                keys = self.allowed(text[:at])
                partial = text[at + len(self.open):]
                candidates = range(min(len(self.pieces), scores.shape[-1]))
                banned = [i for i in candidates if not self.ok(partial + self.pieces[i], keys)] if keys else []
            else:  # outside: only tokens that open one and already spell part of its key (" [[liver", …)
                banned = []
                for i in self.bracketed:
                    cand = text[-1:] + self.pieces[i]
                    j = cand.find(self.open)
                    if j < 0 or j + len(self.open) == len(cand):
                        continue
                    keys = self.allowed(text + cand[1:j])
                    if keys and not self.ok(cand[j + len(self.open):], keys):
                        banned.append(int(i))
            if banned and len(banned) < scores.shape[-1]:
                scores[b, torch.as_tensor(banned, dtype=torch.long, device=scores.device)] = -float("inf")
        return scores


OTHER_SIDE = {"left": "right", "right": "left"}


class SideConstraint(_reference_processor_base()):
    """A ``transformers`` logits processor that keeps tool calls on the side of the body the question
    names: asked about the left kidney, a call's arguments may not spell "right" (nor a word on its way to
    it), so a small model's slip to ``right kidney`` cannot measure the wrong organ. Text outside
    ``<tool_call>`` is untouched. With ``in_answer`` it guards the answer instead (outside tool calls):
    after a call that measured only the left kidney, the answer cannot name the right side, of which the
    results hold nothing. ``input_ids`` are the generated tokens (pass ``prompt_length`` with a text prompt).
    """

    # wrong-side masking over the vocabulary: transformers offers the hook, not this constraint
    def __init__(self, tokenizer: Any, side: str, prompt_length: int = 0, *, in_answer: bool = False) -> None:
        if side not in OTHER_SIDE:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
        self.tokenizer, self.prompt_length, self.in_answer = tokenizer, prompt_length, in_answer
        self.other = OTHER_SIDE[side]
        self.pieces = _token_texts(tokenizer)
        # a call's arguments are enum values: any word on its way to the other side is stopped early;
        # free answer text only once the word can be nothing else ("righ")
        self.min_prefix = len(self.other) - 1 if in_answer else 2

    def spells_other(self, text: str) -> bool:
        """Whether the text names the other side, or ends in a word only it can complete."""
        low = text.lower()
        if re.search(r"\b" + self.other + r"\b", low):
            return True
        tail = re.search(r"(?<![a-z])([a-z]+)$", low)
        return bool(tail) and len(tail.group(1)) >= self.min_prefix and self.other.startswith(tail.group(1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        try:
            for b in range(input_ids.shape[0]):
                text = self.tokenizer.decode(input_ids[b, self.prompt_length:].tolist(), skip_special_tokens=True)
                at = text.rfind(TOOL_CALL_OPEN)
                in_call = at >= 0 and text.rfind(TOOL_CALL_CLOSE) < at
                if in_call == self.in_answer:
                    continue
                if in_call:
                    span = text[at + len(TOOL_CALL_OPEN):]
                else:  # the answer since the last call closed
                    close = text.rfind(TOOL_CALL_CLOSE)
                    span = text[close + len(TOOL_CALL_CLOSE):] if close >= 0 else text
                banned = [i for i in range(min(len(self.pieces), scores.shape[-1])) if self.spells_other(span + self.pieces[i])]
                if banned and len(banned) < scores.shape[-1]:
                    scores[b, torch.as_tensor(banned, dtype=torch.long, device=scores.device)] = -float("inf")
        except Exception:  # a constraint bug must not cost the answer: decode unconstrained, say so in the log
            log.exception("side constraint failed; decoding this step unconstrained")
        return scores


_TOKEN_TEXTS: dict[int, list[str]] = {}


def _token_texts(tokenizer: Any) -> list[str]:
    """Each vocabulary id's decoded text (computed once per tokenizer)."""
    key = id(tokenizer)
    if key not in _TOKEN_TEXTS:
        _TOKEN_TEXTS[key] = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return _TOKEN_TEXTS[key]


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


def threaded_generate(model: torch.nn.Module, tokenizer: Any, kwargs: dict[str, Any], result: dict[str, Any]) -> Iterator[str]:
    """Run ``model.generate(**kwargs)`` in a thread and yield its decoded text as it comes
    (``_CoalescingStreamer``); the output ids land in ``result["ids"]``."""
    streamer = _CoalescingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

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


def _cache_kwarg(llm: torch.nn.Module) -> str:
    params = inspect.signature(type(llm).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pad_id(tokenizer: Any, eos: Sequence[int]) -> int | None:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else (eos[0] if eos else None)

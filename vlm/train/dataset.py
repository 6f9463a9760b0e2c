"""LLaVA-style JSON records → tokenised conversations for the VLM, labels on the assistant turns only.

A record ``{"image" | "images", "conversations": [{"from": human|gpt|tool, "value"}]}`` is rendered with
the model's own chat template, with the agent's system prompt and the experts' tool definitions, so a
training sample is token for token what the agent shows the model at inference. Each ``<image>`` becomes
``tokens_per_image`` placeholder positions; labels are ``-100`` everywhere except the assistant's
content and its closing ``<|end|>``. Pictures go through the tower's own ``preprocess``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Sample", "ConversationDataset", "PixelCache", "collate", "tokenize_record", "record_messages", "MASK_EXPERTS", "IGNORE_INDEX"]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ROLES = {"human": "user", "gpt": "assistant", "tool": "tool"}
MASK_EXPERTS = ("ct_segmentation", "mri_brain_tumor")  # results with a mask: the agent shows their overlay
_IMAGE = "<image>"


@dataclass
class Sample:
    """One tokenised conversation: ``input_ids`` / ``labels`` ``(L,)`` and the picture paths in
    placeholder order (each stands for ``tokens_per_image`` positions of ``input_ids``)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    images: list[Path]


def record_messages(record: dict, system_prompt: str, overlay_stand_in: bool = True) -> tuple[list[dict], list[str]]:
    """Chat messages of a record and its picture paths in placeholder order.

    A tool turn of an expert that returns a mask gets ``<image>\\n`` first when ``overlay_stand_in``, as the
    agent adds the overlay; the case's first picture stands in for it.
    """
    images = list(record.get("images") or ([record["image"]] if record.get("image") else []))
    messages: list[dict] = [{"role": "system", "content": system_prompt}]
    order: list[str] = []
    first_user = True
    for turn in record["conversations"]:
        role = ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"conversation turns must come from human, gpt or tool, got {turn['from']!r} in record {record.get('id')}.")
        content = turn["value"]
        if role == "user" and first_user:
            first_user = False
            order += images[: content.count(_IMAGE)]
        if role == "tool" and overlay_stand_in and images and _expert_of(content) in MASK_EXPERTS:
            content = _IMAGE + "\n" + content
            order.append(images[0])
        messages.append({"role": role, "content": content})
    return messages, order


class ConversationDataset:
    """Tokenised records of one LLaVA JSON file (``path``), pictures resolved against its folder.

    tokenizer: the model's tokenizer (chat template with ``tools``); tools: the tool definitions the
    agent passes; image_token_index / tokens_per_image: from the ``M3Model``; max_length: samples are
    cut to this many tokens (records whose labels would all be cut are dropped, with a warning);
    measurement_copies: that many extra copies of each record with tool results, their mL / mm values
    re-drawn (``data.instructions.augment``; seeded by ``seed``); leave_out: image kinds (``meta.kind``)
    whose records are skipped.
    """

    def __init__(self, path: str | Path, tokenizer: Any, *, system_prompt: str, tools: Sequence[dict], image_token_index: int,
                 tokens_per_image: int, max_length: int, overlay_stand_in: bool = True, measurement_copies: int = 0, seed: int = 0,
                 leave_out: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        records = [r for r in json.loads(self.path.read_text()) if r.get("meta", {}).get("kind") not in set(leave_out)]
        if measurement_copies > 0:
            from data.instructions.augment import resample_measurements

            rng = np.random.default_rng([seed, 0x3A5])
            copies = [c for rec in records for _ in range(measurement_copies) if (c := resample_measurements(rec, rng)) is not None]
            records = records + copies
        self.samples: list[Sample] = []
        dropped = 0
        for rec in records:
            sample = tokenize_record(rec, tokenizer, system_prompt, tools, image_token_index, tokens_per_image, max_length, overlay_stand_in)
            if sample is None:
                dropped += 1
                continue
            sample.images = [self.root / p for p in sample.images]
            self.samples.append(sample)
        if dropped:
            log.warning("%s: %d of %d records dropped (longer than %d tokens before their first answer)", self.path.name, dropped, len(records), max_length)
        if not self.samples:
            raise ValueError(f"{self.path} must hold at least one usable record; found none of {len(records)}.")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def tokenize_record(record: dict, tokenizer: Any, system_prompt: str, tools: Sequence[dict], image_token_index: int,
                    tokens_per_image: int, max_length: int, overlay_stand_in: bool = True) -> Sample | None:
    """One record → ``Sample`` (None when nothing to learn is left after cutting to ``max_length``)."""
    messages, images = record_messages(record, system_prompt, overlay_stand_in)
    tools = list(tools) or None
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False).rstrip("\n")
        if not text.startswith(upto) or not upto.startswith(before):
            raise ValueError("the chat template must render a conversation as the concatenation of its turns; it does not.")
        spans.append((len(before), len(upto)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = []
    labels: list[int] = []
    for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        if tid == image_token_index:
            ids += [tid] * tokens_per_image
            labels += [IGNORE_INDEX] * tokens_per_image
            continue
        inside = any(a <= start and end <= b for a, b in spans)
        ids.append(tid)
        labels.append(tid if inside else IGNORE_INDEX)
    n_images = sum(1 for t in enc["input_ids"] if t == image_token_index)
    if n_images != len(images):
        raise ValueError(f"record {record.get('id')} has {n_images} <image> placeholders but {len(images)} pictures.")
    if len(ids) > max_length:
        if image_token_index in ids[max_length:]:
            return None  # the cut would split or drop a picture
        ids, labels = ids[:max_length], labels[:max_length]
    if all(l == IGNORE_INDEX for l in labels):
        return None
    return Sample(torch.tensor(ids), torch.tensor(labels), list(images))


class PixelCache:
    """Preprocessed pictures by path (float16, the tower's ``preprocess`` output), loaded once."""

    def __init__(self, tower: Any, aspect_ratio: str = "resize") -> None:
        self.tower = tower
        self.aspect_ratio = aspect_ratio
        self._cache: dict[Path, torch.Tensor] = {}

    def __call__(self, paths: Sequence[Path]) -> torch.Tensor:
        from PIL import Image

        todo = [p for p in dict.fromkeys(paths) if p not in self._cache]
        if todo:
            pics = [np.asarray(Image.open(p)) for p in todo]
            pix = self.tower.preprocess(pics, self.aspect_ratio)
            for p, x in zip(todo, pix):
                self._cache[p] = x.to(torch.float16)
        return torch.stack([self._cache[p].float() for p in paths]) if paths else torch.zeros(0)


def collate(samples: Sequence[Sample], pixels: PixelCache, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids`` / ``labels`` / ``attention_mask`` ``(B, L)`` and ``pixel_values``
    ``(n_images, 3, S, S)`` in placeholder order (row-major over the batch)."""
    length = max(len(s.input_ids) for s in samples)
    b = len(samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        input_ids[i, :n], labels[i, :n], mask[i, :n] = s.input_ids, s.labels, 1
    paths = [p for s in samples for p in s.images]
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
    if paths:
        batch["pixel_values"] = pixels(paths)
    return batch


def _expert_of(tool_text: str) -> str | None:
    try:
        return json.loads(tool_text).get("expert")
    except (json.JSONDecodeError, AttributeError):
        return None

"""Calibration and evaluation text for compression: load samples, pack token blocks, measure loss.

Text samples come from a ``.txt`` file (one sample per line), a ``.jsonl`` file (``text`` field, or
LLaVA-style ``conversations``), or a ``.json`` list of the same records. Conversations are rendered with
the model's own chat template (system prompt, expert tools, tool-call turns) when a tokenizer with one is
given, so a mask or a fine-tune is calibrated on the text the model actually sees in the agent; the
``<image>`` placeholders are dropped (the LM is compressed on text alone).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from vlm.compress.errors import CompressError
from vlm.compress.targets import resolve_lm

__all__ = ["load_texts", "pack_tokens", "vlm_batches", "forward_batches", "iterate_batches", "lm_loss",
           "mean_loss", "perplexity"]

# token ids (B, T), or a dict batch: {"input_ids" | "inputs_embeds", "labels", "attention_mask"?} with -100 = not scored
Batch = torch.Tensor | dict[str, torch.Tensor]
# calibration data: token blocks (N, T), or prepared dict batches (``vlm_batches``)
CalibData = torch.Tensor | list[dict[str, torch.Tensor]]


def load_texts(path: str | Path, tokenizer=None, *, system_prompt: str | None = None, tools: list[dict] | None = None) -> list[str]:
    """Text samples from ``path`` (``.txt`` lines, ``.jsonl`` / ``.json`` records with ``text`` or ``conversations``).

    tokenizer: when it has a chat template, conversations are rendered with it (``system_prompt`` and
    ``tools`` as the agent passes them); otherwise their turns are joined with newlines."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"Calibration data file {path} does not exist; pass a .txt, .jsonl or .json file.")
    if path.suffix == ".txt":
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raw = path.read_text(encoding="utf-8")
        records = json.loads(raw) if path.suffix == ".json" else [json.loads(x) for x in raw.splitlines() if x.strip()]
        chat = tokenizer if getattr(tokenizer, "chat_template", None) else None
        texts = [_record_text(r, chat, system_prompt, tools) for r in records]
    if not texts:
        raise CompressError(f"Calibration data file {path} holds no text samples; expected at least one.")
    return texts


def pack_tokens(tokenizer, texts: list[str], seq_len: int, eos: bool = True) -> torch.Tensor:
    """Tokenize ``texts``, join them (separated by EOS) and cut into blocks: LongTensor ``(N, seq_len)``."""
    ids: list[int] = []
    eos_id = getattr(tokenizer, "eos_token_id", None)
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos and eos_id is not None:
            ids.append(eos_id)
    n = len(ids) // seq_len
    if n == 0:
        raise CompressError(f"Calibration text has {len(ids)} tokens, fewer than one block of {seq_len}; add samples.")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def vlm_batches(model_dir: str | Path, files: list[str | Path], *, per_file: int, batch_size: int = 8, max_length: int = 1024) -> list[dict]:
    """Calibration batches that are what the LM sees inside the VLM: the conversations of ``files`` (LLaVA
    JSON with pictures) rendered with the model's chat template, system prompt and the expert tools,
    their pictures through the (uncompressed) vision tower and projector into ``inputs_embeds``; labels
    score the assistant's turns only, as in instruction tuning. ``per_file`` records from each file."""
    from vlm.agent_context import agent_context
    from vlm.model import M3Model
    from vlm.train.dataset import ConversationDataset, PixelCache, collate

    model = M3Model.from_pretrained(model_dir).float().eval()
    context = agent_context(model.config)  # what the agent serves this model with
    pixels = PixelCache(model.vision_tower, getattr(model.config, "image_aspect_ratio", "resize"))
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    batches: list[dict] = []
    for path in files:
        data = ConversationDataset(path, model.tokenizer, system_prompt=context.system_prompt, tools=context.tools,
                                   image_token_index=model.image_token_index, tokens_per_image=model.tokens_per_image,
                                   max_length=max_length)
        samples = [data[i] for i in range(min(per_file, len(data)))]
        for start in range(0, len(samples), batch_size):
            b = collate(samples[start : start + batch_size], pixels, pad)
            feats = model.encode_images(b["pixel_values"].float()) if "pixel_values" in b else None
            labels = b["labels"].masked_fill(b["input_ids"] == model.image_token_index, -100)
            batches.append({"inputs_embeds": model.embed(b["input_ids"], feats).float(), "attention_mask": b["attention_mask"], "labels": labels})
    if not batches:
        raise CompressError(f"No calibration conversations in {[str(f) for f in files]}.")
    return batches


def forward_batches(data: CalibData, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """LM inputs (no labels) over all of ``data``, in order: for activation statistics."""
    if isinstance(data, list):
        for b in data:
            yield {k: v for k, v in b.items() if k != "labels"}
        return
    for start in range(0, data.shape[0], batch_size):
        yield {"input_ids": data[start : start + batch_size]}


def calibration_size(data: CalibData | None) -> int:
    """Number of calibration rows (0 for none)."""
    if data is None:
        return 0
    if isinstance(data, list):
        return sum(int(b["labels"].shape[0]) for b in data)
    return int(data.shape[0])


def iterate_batches(ids: CalibData, batch_size: int, seed: int = 0, epochs: int | None = None) -> Iterator[Batch]:
    """Shuffled batches of the rows of ``ids`` ``(N, T)`` (prepared dict batches are shuffled as they are),
    endlessly when ``epochs`` is None."""
    if isinstance(ids, list):
        gen = torch.Generator().manual_seed(seed)
        epoch = 0
        while epochs is None or epoch < epochs:
            for i in torch.randperm(len(ids), generator=gen).tolist():
                yield ids[i]
            epoch += 1
        return
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = torch.randperm(ids.shape[0], generator=gen)
        for start in range(0, ids.shape[0] - batch_size + 1, batch_size):
            yield ids[order[start : start + batch_size]]
        epoch += 1


def lm_loss(model: nn.Module, ids: Batch, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy (nats / token) of the LM on ``ids`` ``(B, T)`` (or a dict batch); -100 labels ignored."""
    lm = resolve_lm(model)
    if isinstance(ids, dict):
        return lm(**ids).loss
    return lm(input_ids=ids, labels=ids if labels is None else labels).loss


@torch.no_grad()
def mean_loss(model: nn.Module, ids: CalibData, batch_size: int = 16) -> float:
    """Token-weighted mean loss (nats / scored token) over all of ``ids``, in eval mode."""
    lm = resolve_lm(model)
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    batches = ids if isinstance(ids, list) else ({"input_ids": b, "labels": b} for b in ids.split(batch_size))
    for b in batches:
        tokens = int((b["labels"][:, 1:] != -100).sum())
        if tokens:
            total += float(lm_loss(lm, b)) * tokens
            count += tokens
    lm.train(was_training)
    return total / max(count, 1)


def perplexity(model: nn.Module, ids: CalibData, batch_size: int = 16) -> float:
    """exp(mean next-token loss) on ``ids`` ``(N, T)``."""
    return math.exp(mean_loss(model, ids, batch_size))


def _record_text(record: dict, chat_tokenizer=None, system_prompt: str | None = None, tools: list[dict] | None = None) -> str:
    if "text" in record:
        return str(record["text"])
    if "conversations" in record and chat_tokenizer is not None:
        from vlm.train.dataset import record_messages

        messages, _ = record_messages(record, system_prompt or "", overlay_stand_in=False)
        if not system_prompt:
            messages = messages[1:]  # the template's own default system prompt
        for m in messages:
            m["content"] = m["content"].replace("<image>\n", "").replace("<image>", "")
        return chat_tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False)
    if "conversations" in record:
        return "\n".join(str(turn.get("value", "")).replace("<image>", "").strip() for turn in record["conversations"])
    raise CompressError(f"A calibration record has neither `text` nor `conversations` (keys: {sorted(record)[:5]}).")

"""Calibration and evaluation text for compression: load samples, pack token blocks, measure loss.

Text samples come from a ``.txt`` file (one sample per line), a ``.jsonl`` file (``text`` field, or
LLaVA-style ``conversations`` joined), or a ``.json`` list of the same records.
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

__all__ = ["load_texts", "pack_tokens", "iterate_batches", "lm_loss", "mean_loss", "perplexity"]


def load_texts(path: str | Path) -> list[str]:
    """Text samples from ``path`` (``.txt`` lines, ``.jsonl`` / ``.json`` records with ``text`` or ``conversations``)."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"Calibration data file {path} does not exist; pass a .txt, .jsonl or .json file.")
    if path.suffix == ".txt":
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raw = path.read_text(encoding="utf-8")
        records = json.loads(raw) if path.suffix == ".json" else [json.loads(x) for x in raw.splitlines() if x.strip()]
        texts = [_record_text(r) for r in records]
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


def iterate_batches(ids: torch.Tensor, batch_size: int, seed: int = 0, epochs: int | None = None) -> Iterator[torch.Tensor]:
    """Shuffled batches ``(B, T)`` of the rows of ``ids``, endlessly when ``epochs`` is None."""
    gen = torch.Generator().manual_seed(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = torch.randperm(ids.shape[0], generator=gen)
        for start in range(0, ids.shape[0] - batch_size + 1, batch_size):
            yield ids[order[start : start + batch_size]]
        epoch += 1


def lm_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy (nats / token) of the LM on ``ids`` ``(B, T)``; -100 labels ignored."""
    lm = resolve_lm(model)
    return lm(input_ids=ids, labels=ids if labels is None else labels).loss


@torch.no_grad()
def mean_loss(model: nn.Module, ids: torch.Tensor, batch_size: int = 16) -> float:
    """Token-weighted mean loss (nats / token) over all rows of ``ids``, in eval mode."""
    lm = resolve_lm(model)
    was_training = lm.training
    lm.eval()
    total, count = 0.0, 0
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start : start + batch_size]
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        total += float(lm_loss(lm, batch)) * tokens
        count += tokens
    lm.train(was_training)
    return total / max(count, 1)


def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 16) -> float:
    """exp(mean next-token loss) on ``ids`` ``(N, T)``."""
    return math.exp(mean_loss(model, ids, batch_size))


def _record_text(record: dict) -> str:
    if "text" in record:
        return str(record["text"])
    if "conversations" in record:
        return "\n".join(str(turn.get("value", "")).replace("<image>", "").strip() for turn in record["conversations"])
    raise CompressError(f"A calibration record has neither `text` nor `conversations` (keys: {sorted(record)[:5]}).")

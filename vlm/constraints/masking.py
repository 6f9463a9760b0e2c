"""The logits-processor base every decoding constraint shares: a ban computed per batch row from the running decoded
text, applied to the row's scores; a failure inside a constraint leaves that step unconstrained and is recorded for the
turn's flag (``failures``), never dropped silently."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from data.errors import M3Error
from vlm.constraints.vocabulary import RunningText, token_index

log = logging.getLogger(__name__)

__all__ = ["Ban", "ConstraintError", "GuardedProcessor"]


class ConstraintError(M3Error, RuntimeError):
    """A decoding constraint could not decide a step (the step is decoded unconstrained and the turn is flagged)."""


@dataclass
class Ban:
    """The ids one step bans: ``ids`` (``keep_below`` 0), or every id below ``keep_below`` but ``ids`` (a
    reference's few allowed continuations: setting the row and restoring those costs less than a mask)."""

    ids: torch.Tensor
    keep_below: int = 0

    def apply(self, row: torch.Tensor) -> None:
        """Set the banned entries of a ``(vocab,)`` score row to -inf, in place."""
        ids = self.ids.to(row.device)
        if self.keep_below:
            kept = row[ids].clone()
            row[: self.keep_below] = -float("inf")
            row[ids] = kept
        else:
            row.index_fill_(0, ids, -float("inf"))


class GuardedProcessor(LogitsProcessor, ABC):
    """Runs ``_banned`` row by row; a failure leaves that step unconstrained and is recorded in ``failures``.

    ``input_ids`` are the generated tokens (the prompt goes in as embeddings); with a text prompt pass
    ``prompt_length``. ``running``: each batch row's running text, shared by the processors of one ``generate`` call
    (decoded once a step); ``failures``: one line per failed step (shared with a ``DecodingConstraints``)."""

    name = "constraint"

    def __init__(self, tokenizer: Any, prompt_length: int, running: dict[int, RunningText] | None,
                 failures: list[str] | None = None) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.index = token_index(tokenizer)
        self.pieces = self.index.pieces
        self.failures: list[str] = [] if failures is None else failures
        self._texts: dict[int, RunningText] = {} if running is None else running

    @property
    def failed(self) -> bool:
        """Whether any step was decoded unconstrained because the constraint failed."""
        return bool(self.failures)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for b in range(input_ids.shape[0]):
            try:
                running = self._texts.get(b)
                if running is None:
                    running = self._texts[b] = RunningText(self.tokenizer)
                # the processors of one ``generate`` call get one ``input_ids`` a step: the first decodes it for all
                text = running.text if running.source is input_ids else running.update(input_ids[b, self.prompt_length:].tolist())
                running.source = input_ids
                banned = self._banned(text, scores.shape[-1])
            except Exception as exc:  # the answer goes on unconstrained; the failure is kept for the turn's flag
                step = input_ids.shape[1] - self.prompt_length
                self.failures.append(f"{self.name} failed at generated token {step}: {type(exc).__name__}: {exc}")
                log.exception("%s failed; decoding this step unconstrained", self.name)
                continue
            if banned is not None:
                banned.apply(scores[b])
        return scores

    @abstractmethod
    def _banned(self, text: str, vocab: int) -> Ban | None:
        """The tokens a subclass bans after ``text`` (None: none), over a vocabulary of ``vocab`` ids."""

    def _mask(self, vocab: int, ids: Iterable[int] | np.ndarray = (), *, all_candidates: bool = False,
              allowed: Sequence[int] | None = None) -> Ban | None:
        """The ``Ban`` of ``ids``, of every candidate (ids of the tokenizer that fit the ``vocab`` scores) or of
        every candidate but ``allowed``; None when it bans nothing or every score (the step is left to the model)."""
        n = min(len(self.pieces), vocab)
        if allowed is not None or all_candidates:
            kept = sorted({i for i in allowed or () if i < n})
            return Ban(torch.as_tensor(kept, dtype=torch.long), keep_below=n) if 0 < n - len(kept) < vocab else None
        chosen = np.unique(np.asarray(ids, dtype=np.int64))
        chosen = chosen[chosen < n]
        return Ban(torch.from_numpy(chosen)) if 0 < len(chosen) < vocab else None

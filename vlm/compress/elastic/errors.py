"""Errors of the elastic (Flextron) model. Messages say context → expected → found → what to do."""

from __future__ import annotations

from vlm.compress.errors import CompressError

__all__ = ["ElasticError"]


class ElasticError(CompressError):
    """An elastic width, budget, plan or checkpoint that the Flextron code cannot work with."""

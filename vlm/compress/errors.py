"""Errors raised by compression and export. Messages say context → expected → found → what to do."""

from __future__ import annotations

__all__ = ["CompressError"]


class CompressError(Exception):
    """A model, mask or dataset that compression cannot work with (wrong shape, wrong pattern, no data)."""

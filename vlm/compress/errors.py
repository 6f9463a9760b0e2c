"""Errors raised by compression and export. Messages say context → expected → found → what to do."""

from __future__ import annotations

from data.errors import M3Error

__all__ = ["CompressError"]


class CompressError(M3Error):
    """A model, mask or dataset that compression cannot work with (wrong shape, wrong pattern, no data)."""

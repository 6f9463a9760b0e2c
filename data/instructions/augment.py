"""Measurement re-sampling for expert conversations: a copy of a record whose tool results carry other
volumes and diameters, changed the same way wherever the assistant quotes them.

Phantom measurements repeat across cases (similar anatomy, similar volumes), so a small model can learn
to write a plausible number from memory instead of reading it from the tool result. Copies in which the
numbers are re-drawn make reading the only way to be right. Counts, probabilities and zero values (an
absent structure) are left as they are: the words around them depend on them.
"""

from __future__ import annotations

import copy
import re

import numpy as np

__all__ = ["resample_measurements"]

# a measurement as the tool text writes it: one decimal, then its unit
_MEASUREMENT = re.compile(r"(?<![\d.])(\d+\.\d)(?= (?:mL|mm)\b)")


def resample_measurements(record: dict, rng: np.random.Generator, low: float = 0.4, high: float = 2.5) -> dict | None:
    """A deep copy of ``record`` with every non-zero mL / mm value of its tool turns multiplied by a factor
    drawn from [low, high] (one per distinct value) and the same substitution in the assistant's turns.
    None when the record's tool turns quote no such value."""
    tool_values = sorted({m for t in record.get("conversations", []) if t.get("from") == "tool"
                          for m in _MEASUREMENT.findall(str(t.get("value", ""))) if float(m) > 0})
    if not tool_values:
        return None
    taken = set(tool_values)
    mapping: dict[str, str] = {}
    for value in tool_values:
        for _ in range(20):  # a new value that is no other value of the record, old or new
            new = f"{max(0.1, float(value) * float(rng.uniform(low, high))):.1f}"
            if new not in taken:
                break
        taken.add(new)
        mapping[value] = new
    out = copy.deepcopy(record)
    for turn in out["conversations"]:
        if turn.get("from") in ("tool", "gpt"):
            turn["value"] = _MEASUREMENT.sub(lambda m: mapping.get(m.group(1), m.group(1)), turn["value"])
    if out.get("id") is not None:
        out["id"] = f"{out['id']}~m"
    return out

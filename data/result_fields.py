"""An expert result as one table of fields: key → value (with unit, probability, provenance), built once per result.

The table holds what the expert reported (each measurement "liver volume", each finding "cardiomegaly") and the keys
derived from it that answer a question's form — a lesion's ``size``, a ``side``, a ``count``, a closed question's
``X?``, ``X normal?`` and ``normal?``, a paired organ's ``larger kidney``, a report's ``impression`` and
``positive findings`` / ``negative findings``, a brain tumour's ``hemisphere``. Each derived key is defined once, in
``_derive`` (one block per rule, in the order a key that two rules make is taken from). The ``tool`` message text the
model reads (``ResultFields.tool_text``) and the value an answer's ``[[key]]`` reference is replaced by both come from
this table; ``data.tool_text`` builds it from a ``ToolResult`` (``ToolResult.fields()``) or, for text-only callers,
from a tool message (``fields_from_text``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ResultField", "ResultFields", "result_fields", "fields_from_text", "field_key", "size_category", "IN_SLICE_WORDS"]

IN_SLICE_WORDS = " in this slice"
FINDING_LISTS = ("positive findings", "negative findings", "impression")
PAIRS = ("kidney", "lung")  # paired organs whose two volumes a "larger kidney" key compares


@dataclass(frozen=True)
class ResultField:
    """One field of a result: ``key`` (lower case, single spaces: "liver volume", "cardiomegaly?", "larger kidney");
    ``value``: the words a ``[[key]]`` reference is replaced by ("1253.3 mL", "yes (probability 0.87)");
    ``provenance``: the expert that reported it; ``rule``: how it was made ("measurement", "finding", "yes/no",
    "count", "size", "side", "normal", "comparison", "structure", "named", "finding list"); ``number`` / ``unit``: the
    quantity it states, where it states one (mL, mm, count); ``probability``: the expert's, for a finding;
    ``offered``: whether the model is offered it as a reference target (``ResultFields.offered``)."""

    key: str
    value: str
    provenance: str
    rule: str
    number: float | None = None
    unit: str = ""
    probability: float | None = None
    offered: bool = False


class ResultFields(Mapping[str, ResultField]):
    """The field table of one result: a read-only mapping key → ``ResultField`` (look-ups normalise the key:
    "Liver  Volume" finds "liver volume", "pneumothorax ?" finds "pneumothorax?").

    expert: the reporting expert; findings: (label, verdict) as the tool message states them ("cardiomegaly",
    "yes (0.87)"); measurements: (name, value) as stated ("liver volume", "1253.3 mL"); offered: the keys the model is
    offered as references, in the order the tool message suggests them."""

    def __init__(self, expert: str, findings: tuple[tuple[str, str], ...], measurements: tuple[tuple[str, str], ...],
                 table: dict[str, ResultField], offered: tuple[str, ...]) -> None:
        self.expert, self.findings, self.measurements = expert, findings, measurements
        self._table, self.offered = table, offered

    def __getitem__(self, key: str) -> ResultField:
        return self._table[field_key(key)]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and field_key(key) in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def value(self, key: str) -> str | None:
        """The words ``[[key]]`` is replaced by, or None when this result holds no such field."""
        found = self._table.get(field_key(key))
        return None if found is None else found.value

    def tool_text(self) -> str:
        """The ``tool`` message text (compact JSON: small models have short contexts)."""
        body: dict[str, Any] = {"expert": self.expert}
        if self.findings:
            body["findings"] = dict(self.findings)
        if self.measurements:
            body["measurements"] = [f"{name}: {value}" for name, value in self.measurements]
        return json.dumps(body, ensure_ascii=False)


def field_key(key: str) -> str:
    """A reference's key as the table stores it: lower case, single spaces, no space before a final "?"."""
    key = " ".join(key.lower().split())
    return key[:-1].rstrip() + "?" if key.endswith("?") else key


def size_category(diameter_mm: float) -> str:
    """small (< 10 mm), medium (10–30 mm) or large (> 30 mm): how a lesion's size is named in questions and answers."""
    return "small" if diameter_mm < 10.0 else ("medium" if diameter_mm <= 30.0 else "large")


def result_fields(expert: str, findings: Mapping[str, str] | tuple[tuple[str, str], ...],
                  measurements: tuple[tuple[str, str], ...]) -> ResultFields:
    """The table of a result that reported ``findings`` (label → verdict "yes (0.87)" / "no") and ``measurements``
    ((name, value) pairs: "liver volume", "1253.3 mL"), as ``expert``."""
    stated = tuple(dict(findings).items())  # one verdict per label, as a JSON object states them
    measured: dict[str, str] = {}
    for name, value in measurements:
        measured[_norm(name)] = value.strip()
    verdicts: dict[str, str] = {}
    for label, verdict in stated:
        verdicts[_norm(label)] = str(verdict)
    table = _derive(expert, measured, verdicts)
    offered = tuple(dict.fromkeys(k for k in _suggested(measured, verdicts) if k in table))
    for key in offered:
        table[key] = _offer(table[key])
    return ResultFields(expert, stated, tuple(measurements), table, offered)


def fields_from_text(text: str) -> ResultFields:
    """The table of a ``tool`` message text (for callers that hold only text: training-data generators, evaluation);
    an empty table for anything else (an error, other JSON)."""
    try:
        body = json.loads(text[text.find("{"):]) if "{" in text else None
    except json.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return result_fields("", (), ())
    measurements = []
    for item in body.get("measurements") or []:
        name, sep, value = str(item).rpartition(": ")
        if sep:
            measurements.append((name, value))
    found = body.get("findings")
    findings = tuple((str(k), str(v)) for k, v in found.items()) if isinstance(found, dict) else ()
    return result_fields(str(body.get("expert", "")), findings, tuple(measurements))


# ---------------------------------------------------------------------------------------------------------
# the rules


class _Table:
    """Fields by key; of two rules making one key, the one of lower ``rank`` (``_derive``'s order) is kept."""

    def __init__(self, expert: str) -> None:
        self.expert = expert
        self.rows: dict[str, tuple[int, ResultField]] = {}

    def put(self, rank: int, key: str, value: str, rule: str, **extra: Any) -> None:
        held = self.rows.get(key)
        if held is None or rank < held[0]:
            self.rows[key] = (rank, ResultField(key, value, self.expert, rule, **extra))

    def get(self, key: str) -> str | None:
        held = self.rows.get(key)
        return None if held is None else held[1].value


def _derive(expert: str, measurements: dict[str, str], findings: dict[str, str]) -> dict[str, ResultField]:
    """Every field of a result, reported and derived, each rule once; ``rank`` decides a key two rules make."""
    t = _Table(expert)
    yes = {k for k, v in findings.items() if v.startswith("yes")}
    # 1. a measurement as reported: "liver volume" → "1253.3 mL"
    for k, v in measurements.items():
        t.put(1, k, v, "measurement", **_quantity(v))
    # 2. the whole study's normality: "normal?" → "no (cardiomegaly (0.87))" / "yes (no finding above …)"
    if findings:
        abnormal = {k: v for k, v in findings.items() if not _descriptive(k)}
        t.put(2, "normal?", ("no (" + _finding_list("positive findings", abnormal) + ")") if yes & set(abnormal)
              else "yes (no finding above the expert's thresholds)", "normal")
    # 2. a paired organ's two volumes compared: "larger kidney" → "the left kidney (left 150.2 mL, right 120.9 mL)"
    for pair in PAIRS:
        left, right = measurements.get(f"left {pair} volume"), measurements.get(f"right {pair} volume")
        try:
            lv, rv = float(left.split()[0]), float(right.split()[0])  # type: ignore[union-attr]
        except (AttributeError, ValueError, IndexError):
            continue
        for word, side in (("larger", "left" if lv > rv else "right"), ("smaller", "left" if lv < rv else "right")):
            t.put(2, f"{word} {pair}", f"the {side} {pair} (left {left}, right {right})", "comparison")
    # 3. a lesion's size named from its largest diameter: "liver tumor size" → "medium (largest diameter 25.1 mm)"
    for k, v in measurements.items():
        if k.endswith(" largest diameter") and v.endswith(" mm"):
            try:
                mm = float(v[:-3])
            except ValueError:
                continue
            t.put(3, k[: -len(" largest diameter")] + " size", f"{size_category(mm)} (largest diameter {v})", "size", number=mm, unit="mm")
    # 4. a side from the "<x> on the <side>" findings present: "kidney cyst side" → "left and right"
    sides: dict[str, list[str]] = {}
    for k in findings:
        for m in re.finditer(" on the ", k):
            if k in yes:
                sides.setdefault(k[: m.start()], []).append(k[m.end():])
    for x, named in sides.items():
        t.put(4, x + " side", " and ".join(named), "side")
    # 4. a counted lesion the expert did not find has no side: "kidney cyst side" → "none found"
    for x in findings:
        if x not in yes and x not in sides and f"{x} count" in measurements:
            t.put(4, x + " side", "none found", "side")
    # 4. a brain tumour's side is its hemisphere: "tumor side" → "left (left hemisphere)"
    hemispheres = [k for k in findings if k.endswith(" hemisphere") and k in yes]
    if hemispheres:
        for x in findings:
            t.put(4, x + " side", " and ".join(h.split()[0] for h in hemispheres) + f" ({' and '.join(hemispheres)})", "side")
    # 5. a counted structure: "liver tumor" → "2 found, volume 12.3 mL, largest diameter 25.1 mm" / "none found";
    # 7. a measured structure: "whole tumor" → "volume 52.1 mL, largest diameter 40.2 mm"
    for prefix in dict.fromkeys(p for k in measurements for p in _word_prefixes(k)):
        own = {k[len(prefix) + 1:]: v for k, v in measurements.items() if k.startswith(prefix + " ")}
        if "count" in own:
            n = own.pop("count")
            t.put(5, prefix, "none found" if n in ("0", "0.0") else f"{n} found" + "".join(f", {q} {v}" for q, v in own.items()),
                  "count", **_quantity(n))
        elif not prefix.endswith("?"):
            t.put(7, prefix, ", ".join(f"{q} {v}" for q, v in own.items()), "structure")
    # 6. a finding: "cardiomegaly" → "present (probability 0.87)"; asked closed: "cardiomegaly?" → "yes (probability 0.87)"
    for k, verdict in findings.items():
        prob = verdict[verdict.find("(") + 1:verdict.find(")")] if "(" in verdict else ""
        extra = _probability(prob)
        for key, word in ((k, "present" if k in yes else "not present"), (k + "?", "yes" if k in yes else "no")):
            t.put(6, key, f"{word} (probability {prob})" if prob else word, "finding" if key == k else "yes/no", **extra)
    # 8. a present finding by its last words: "hemisphere" → "left hemisphere"
    for k in findings:
        if k in yes:
            words = k.split()
            for i in range(1, len(words)):
                t.put(8, " ".join(words[i:]), k, "named")
    # 9. the findings as a report states them: "impression" → "Cardiomegaly; nodule.", "positive findings" → "cardiomegaly (0.87)"
    if findings:
        for key in FINDING_LISTS:
            t.put(9, key, _finding_list(key, findings), "finding list")
    # 2. a counted lesion asked closed: "liver tumor?" → "yes (2 found, …)" (its expert counts it instead of scoring it)
    for k, verdict in findings.items():
        if f"{k} count" in measurements and "(" not in verdict:
            count = t.get(k)
            t.put(2, k + "?", ("yes" if k in yes else "no") + (f" ({count})" if count else ""), "yes/no")
    # 2. the reverse polarity of a closed question: "cardiomegaly normal?" → "no (cardiomegaly present, probability 0.87)"
    for key in [k for k in t.rows if k.endswith("?") and not k.endswith("normal?")]:
        verdict, name = t.get(key) or "", key[:-1]
        present = verdict.startswith("yes")
        detail = verdict[verdict.find("(") + 1:verdict.rfind(")")] if "(" in verdict else ""
        t.put(2, name + " normal?", ("no" if present else "yes") + f" ({name} {'present' if present else 'not present'}"
              + (f", {detail}" if detail else "") + ")", "normal", probability=t.rows[key][1].probability)
    return {k: f for k, (_, f) in t.rows.items()}


def _suggested(measurements: dict[str, str], findings: dict[str, str]) -> list[str]:
    """The keys the model is offered as references, in order (those of them the table holds): what it reported, the
    structures its measurements name, sizes, sides, a finding's last word and closed question, the report lists, a
    finding's normality, the study's, and the paired-organ comparisons."""
    keys = list(measurements) + list(findings)
    keys += [p for k in measurements for p in _word_prefixes(k)]
    keys += [k[: -len(" largest diameter")] + " size" for k in measurements if k.endswith(" largest diameter")]
    keys += [k.split(" on the ")[0] + " side" for k in findings if " on the " in k]
    keys += [k + " side" for k in findings if f"{k} count" in measurements]
    keys += [k.split()[-1] for k in findings] + [k + "?" for k in findings] + (list(FINDING_LISTS) if findings else [])
    keys += [k + " normal?" for k in findings if not _descriptive(k)] + (["normal?"] if findings else [])
    keys += [f"{w} {p}" for p in PAIRS for w in ("larger", "smaller")]
    return keys


def _offer(f: ResultField) -> ResultField:
    return ResultField(f.key, f.value, f.provenance, f.rule, f.number, f.unit, f.probability, offered=True)


def _word_prefixes(key: str) -> list[str]:
    words = key.split()
    return [" ".join(words[:i]) for i in range(1, len(words))]


def _descriptive(finding: str) -> bool:
    """A finding that describes the study rather than an abnormality (the contrast phase, a hemisphere, a side)."""
    return finding.endswith((" phase", " hemisphere")) or finding == "contrast" or " on the " in finding or IN_SLICE_WORDS in finding


def _finding_list(key: str, findings: dict[str, str]) -> str:
    on = key != "negative findings"
    # a lesion's side, the slice on screen and "contrast" describe other findings or the study: not findings of their own
    listed = {k: v for k, v in findings.items() if " on the " not in k and IN_SLICE_WORDS not in k and k != "contrast"}
    picked = [(k, v[v.find("(") + 1:v.find(")")] if "(" in v else "") for k, v in listed.items() if v.startswith("yes") == on]
    if key == "impression":
        return ("; ".join(k for k, _ in picked).capitalize() + ".") if picked else "No finding above the expert's thresholds."
    return ", ".join(f"{k} ({p})" if p else k for k, p in picked) if picked else "none"


def _quantity(value: str) -> dict[str, Any]:
    """``number`` and ``unit`` of a stated value ("1253.3 mL" → 1253.3, "mL"); none when it states no number."""
    number, _, unit = value.partition(" ")
    try:
        return {"number": float(number), "unit": unit}
    except ValueError:
        return {}


def _probability(text: str) -> dict[str, Any]:
    try:
        return {"probability": float(text)} if text else {}
    except ValueError:
        return {}


def _norm(key: str) -> str:
    return " ".join(key.lower().split())

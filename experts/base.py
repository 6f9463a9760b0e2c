"""The expert interface the agent and the app call: ``Expert``, ``ExpertResult``, ``ExpertError``.

An expert is a model with a model card (``description``, read by the VLM as a tool definition), the
modalities it accepts, a JSON schema for its arguments, and ``run(volumes, **args) -> ExpertResult``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from data.errors import M3Error
from data.study import Volume
from data.slice_facts import slice_details, slice_findings
from data.tool_text import Finding, Measurement, ToolResult, format_tool_result

__all__ = ["Expert", "ExpertResult", "ExpertError", "Measurement", "Finding", "tool_message", "with_slice_findings"]


class ExpertError(M3Error):
    """An expert could not run on this input. The message says what to change; the agent shows it
    to the model as a tool error (so the model can retry or explain) and the app shows it to the user."""


@dataclass
class ExpertResult(ToolResult):
    """What an expert returns.

    findings: per-label yes/no (+ probability); measurements: numbers with units;
    label_volume: integer mask on the input's grid (``Volume``) or None; label_names: value → name;
    summary: one short paragraph for people and the VLM; seconds: wall time of ``run``;
    uncertain: why the result should not be taken at face value (``experts.plausibility`` reasons), empty when
    nothing is implausible; when set, the summary ends with "Uncertain: ..." and the tool message carries it.
    """

    label_volume: Volume | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    summary: str = ""
    seconds: float = 0.0
    version: str = ""
    overlay_renderer: Callable[..., Any] | None = None  # (volume, result, slice_index=None) -> RGB array
    uncertain: list[str] = field(default_factory=list)

    def mark_uncertain(self, reasons: list[str]) -> "ExpertResult":
        """Add ``reasons`` to ``uncertain`` and say so at the end of the summary (in place; returns ``self``)."""
        new = [r for r in reasons if r not in self.uncertain]
        if new:
            self.uncertain.extend(new)
            self.summary = (self.summary.rstrip() + " Uncertain: " + "; ".join(new) + ".").strip()
        return self

    def to_json(self) -> dict[str, Any]:
        """Structured findings for the tool message and the audit log (no arrays, no PHI)."""
        return {
            "expert": self.expert,
            "arguments": self.arguments,
            "findings": [asdict(f) for f in self.findings],
            "measurements": [asdict(m) for m in self.measurements],
            "labels": {str(k): v for k, v in self.label_names.items()},
            "summary": self.summary,
            "seconds": round(self.seconds, 3),
            "version": self.version,
            **({"uncertain": list(self.uncertain)} if self.uncertain else {}),
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False)

    def render_overlay(self, volume: Volume, slice_index: int | None = None, **kwargs: Any) -> np.ndarray:
        """An RGB ``(H, W, 3)`` uint8 picture: the slice, the coloured mask and a legend."""
        if self.overlay_renderer is None:
            raise ExpertError(f"expert {self.expert!r} returned no mask, so there is no overlay to draw.")
        return self.overlay_renderer(volume, self, slice_index=slice_index, **kwargs)


class Expert(ABC):
    """Base class of every expert. Subclasses set the class attributes and implement ``_run``."""

    name: str = ""
    title: str = ""  # what a clinician sees on buttons, chat steps and legends ("CT segmentation"); empty: ``name``
    description: str = ""  # model-card text the VLM reads as the tool's description
    modalities: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()  # series roles taken together (the MR sequences), by ``Volume.sequence``; empty: one series
    parameters: Mapping[str, Any] = {"type": "object", "properties": {}}  # JSON schema of the arguments
    version: str = ""
    # argument → {choice: the words a question names it by}: lets a call be kept on what the question names
    vocabulary: Mapping[str, Mapping[str, tuple[str, ...]]] = {}
    # choice → what it is, for vocabulary choices the clinical lexicon (``data.lexicon``) lacks: "organ" (a structure
    # measured), "lesion" or "finding" (present or not); the question parser reads them with the vocabulary
    vocabulary_kinds: Mapping[str, str] = {}

    def covers(self, argument: str, value: Any, choice: str) -> bool:
        """Whether ``value`` given for ``argument`` (a choice or a list of choices) includes ``choice``; experts
        whose choices name groups ("lesions") expand them here."""
        values = [value] if isinstance(value, str) else list(value or [])
        return choice in values

    def tool_schema(self) -> dict[str, Any]:
        """The tool definition given to ``apply_chat_template(..., tools=[...])``."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }

    def validate_arguments(self, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Arguments checked against ``parameters``; raises ``ExpertError`` naming the bad field."""
        import jsonschema

        args = dict(arguments or {})
        try:
            jsonschema.validate(args, dict(self.parameters))
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "arguments"
            raise ExpertError(f"{self.name}: invalid {where}: {exc.message}.") from None
        return args

    def run(self, volumes: Volume | Mapping[str, Volume], **arguments: Any) -> ExpertResult:
        """Validate ``arguments`` and run on ``volumes`` (one volume, or a dict by sequence name)."""
        import time

        args = self.validate_arguments(arguments)
        t0 = time.perf_counter()
        result = self._run(volumes, **args)
        result.seconds = time.perf_counter() - t0
        result.arguments = args
        result.expert = self.name
        result.version = result.version or self.version
        return result

    def select_inputs(self, volumes: Mapping[str, Volume], primary: str | None = None) -> Volume | dict[str, Volume]:
        """What this expert runs on, chosen from a study's volumes (name → ``Volume``): the series on screen
        (``primary``) when it is of a modality the expert reads, else the study's first such series; an expert
        with ``sequences`` gets every series of its modalities by sequence role (``run`` names any missing).
        Raises ``ExpertError`` when the study has none."""
        match = {n: v for n, v in volumes.items() if not self.modalities or v.modality in self.modalities}
        if not match:
            have = ", ".join(dict.fromkeys(v.modality for v in volumes.values())) or "no images"
            raise ExpertError(f"{self.name} needs a {'/'.join(self.modalities)} volume; this study has {have}.")
        if self.sequences:
            return {(v.sequence or n): v for n, v in match.items()}
        return match[primary] if primary in match else next(iter(match.values()))

    @abstractmethod
    def _run(self, volumes: Volume | Mapping[str, Volume], **arguments: Any) -> ExpertResult: ...



def tool_message(result: ExpertResult) -> str:
    """The one text form of an expert result given to the VLM as a ``tool`` message, in training data
    and at inference alike (``data.tool_text.format_tool_result``). A result marked uncertain gets an
    ``"uncertain": [reasons]`` entry at the end; without one the text is exactly ``format_tool_result``'s."""
    text = format_tool_result(result)
    reasons = list(getattr(result, "uncertain", None) or [])
    if not reasons:
        return text
    body = json.loads(text)
    body["uncertain"] = reasons
    return json.dumps(body, ensure_ascii=False)


def with_slice_findings(result: ExpertResult, slice_index: int) -> ExpertResult:
    """A copy of ``result`` that ends with what axial slice ``slice_index`` of its mask shows ("kidney cyst
    in this slice: yes", the lesions' sides and sizes there, ``data.slice_facts``), for a question about the slice on screen; ``result``
    itself when it has no mask, the slice is off its grid, or the expert has no such findings."""
    from dataclasses import replace

    labels = result.label_volume
    if labels is None or not 0 <= int(slice_index) < labels.shape[2]:
        return result
    k = int(slice_index)
    extra = slice_findings(result.expert, labels.array[:, :, k], result.label_names, result.measurements)
    sides, sizes = slice_details(result.expert, labels.array[:, :, k], result.label_names, result.measurements, labels.affine, k)
    if not (extra or sides or sizes):
        return result
    return replace(result, findings=list(result.findings) + extra + sides, measurements=list(result.measurements) + sizes)

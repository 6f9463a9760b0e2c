"""Stand-ins for the app's tests, e2e browser tests and the load benchmark: a scripted ``ChatBackend``
and a threshold expert.

It is not a language model: it follows a fixed script so the app's mechanics can be tested honestly
without trained weights — a measurement question makes it emit a ``<tool_call>`` for the matching
expert; once the tool's result is in the conversation it answers by quoting that result's numbers; a
report prompt gets a Findings / Impression draft quoting the results given. Everything else about a
turn (parsing the call, running the expert, streaming, overlays, audit) is the app's real code.

``ThresholdExpert`` is a test expert (voxels above a HU threshold, their volume in mL) used where the
trained experts' weights are not available; it is not a segmentation model either.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Iterator

import numpy as np

from experts.base import Expert, ExpertResult, Measurement
from vlm.backends.base import BackendInfo, GenerationConfig

__all__ = ["ScriptedBackend", "ThresholdExpert", "TOPICS", "registry_for_tests"]

# question keyword → expert name
TOPICS = {
    "ct_segmentation": ("liver", "spleen", "kidney", "organ", "volume", "lesion", "measure"),
    "mri_brain_tumor": ("tumor", "tumour", "brain", "edema", "enhancing"),
    "cxr_classification": ("chest", "cardiomegaly", "effusion", "pneumothorax", "x-ray"),
    "threshold_volume": ("dense",),
}


class ScriptedBackend:
    """Script: tool call for a measurement question → answer quoting the tool's numbers."""

    info = BackendInfo(
        name="scripted-test-backend",
        version="script-1",
        takes_images=False,
        model_card="# Scripted test backend\n\n## Intended use\n\nTesting the app's mechanics only; it is not a language model.\n",
    )

    def __init__(self, delay_s: float = 0.0, topics: dict[str, tuple[str, ...]] | None = None) -> None:
        self.delay_s = delay_s  # pause between streamed pieces, to make streaming visible
        self.topics = {**TOPICS, **(topics or {})}
        self.calls = 0
        self.constraints: list[Any] = []  # the decoding constraints each generation was given (it follows its script)

    def stream_chat(self, messages: list[dict[str, Any]], images: Any = None, tools: list[dict[str, Any]] | None = None,
                    config: GenerationConfig | None = None, cache_key: str | None = None, constraints: Any = None) -> Iterator[str]:
        self.calls += 1
        self.constraints.append(constraints)
        text = self._reply(messages, tools or [])
        for piece in re.findall(r"\S+\s*", text):
            if self.delay_s:
                time.sleep(self.delay_s)
            yield piece

    def _reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        last = messages[-1]
        content = str(last.get("content", ""))
        if last["role"] == "tool":
            return _quote(json.loads(content.split("\n")[-1]))
        if content.startswith("Write a short radiology report"):
            results = [json.loads(line) for line in content.splitlines() if line.startswith("{")]
            numbers = "; ".join(_facts(r) for r in results)
            return f"Findings: {numbers}.\nImpression: Measurements as above from the expert models."
        names = {t["function"]["name"] for t in tools}
        question = content.lower()
        for name, words in self.topics.items():
            if name in names and any(w in question for w in words):
                return '<tool_call>{"name": "%s", "arguments": {}}</tool_call>' % name
        return "The series is in the viewer. Ask about an organ volume, a tumour or a chest finding to measure it."


def _facts(body: dict[str, Any]) -> str:
    parts = list(body.get("measurements", []))
    parts += [f"{k}: {v}" for k, v in body.get("findings", {}).items()]
    return f"{body.get('expert', 'expert')}: " + ("; ".join(parts) if parts else "no findings")


def _quote(body: dict[str, Any]) -> str:
    return f"According to {_facts(body)}."


class ThresholdExpert(Expert):
    """Test expert: voxels above ``min_hu`` form label 1 ("dense tissue"); reports its volume in mL."""

    name = "threshold_volume"
    description = "Test expert: volume of voxels denser than min_hu."
    modalities = ("CT",)
    parameters = {"type": "object", "properties": {"min_hu": {"type": "number"}}, "additionalProperties": False}
    version = "test-1"

    def _run(self, volume, min_hu: float = 100.0, **_):
        from experts.overlay import render_overlay

        mask = (np.asarray(volume.array) > min_hu).astype(np.uint8)
        ml = float(mask.sum()) * volume.voxel_volume_ml
        return ExpertResult(expert=self.name, measurements=[Measurement("dense tissue", "volume", round(ml, 1), "mL")],
                            label_volume=volume.like(mask), label_names={1: "dense tissue"},
                            summary=f"dense tissue {ml:.1f} mL", overlay_renderer=render_overlay)


def registry_for_tests():
    """(registry, question, expert name, measured structure): the built-in experts when their weights load
    (asking for the liver volume), else a registry with only ``ThresholdExpert`` (asking for dense tissue)."""
    from experts.base import ExpertError
    from experts.registry import ExpertRegistry, default_registry

    registry = default_registry()
    try:
        registry.get("ct_segmentation")
        return registry, "What is the liver volume?", "ct_segmentation", "liver"
    except ExpertError:
        reg = ExpertRegistry()
        reg.register("threshold_volume", ThresholdExpert)
        return reg, "What is the dense tissue volume?", "threshold_volume", "dense tissue"

"""The registry: names, one load per expert across threads, tool schemas, argument validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult
from experts.registry import ExpertRegistry, default_registry


class _Echo(Expert):
    name = "echo"
    description = "returns the mean intensity"
    modalities = ("CT",)
    parameters = {"type": "object", "properties": {"scale": {"type": "number", "minimum": 0}}, "additionalProperties": False}
    builds = 0

    def __init__(self) -> None:
        type(self).builds += 1

    def _run(self, volumes, scale: float = 1.0) -> ExpertResult:
        return ExpertResult(expert=self.name, summary=f"mean {float(volumes.array.mean()) * scale:.1f}")


def test_default_registry_lists_the_three_builtin_experts_without_loading_them():
    reg = default_registry()
    assert reg.names() == ["ct_segmentation", "mri_brain_tumor", "cxr_classification"]
    assert default_registry() is reg


def test_factory_runs_once_even_when_many_threads_ask_at_once():
    _Echo.builds = 0
    reg = ExpertRegistry()
    reg.register("echo", _Echo)
    got: list[Expert] = []
    threads = [threading.Thread(target=lambda: got.append(reg.get("echo"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _Echo.builds == 1 and len({id(e) for e in got}) == 1


def test_run_validates_arguments_and_names_the_bad_field():
    reg = ExpertRegistry()
    reg.register("echo", _Echo)
    vol = Volume(np.full((4, 4, 4), 10.0), np.eye(4), modality="CT")
    assert reg.run("echo", vol, scale=2).summary == "mean 20.0"
    with pytest.raises(ExpertError, match="scale"):
        reg.run("echo", vol, scale=-1)
    with pytest.raises(ExpertError, match="Additional properties"):
        reg.run("echo", vol, colour="red")


def test_unknown_expert_and_duplicate_names_are_clear_errors():
    reg = ExpertRegistry()
    reg.register("echo", _Echo)
    with pytest.raises(ExpertError, match="unknown expert 'nope'.*echo"):
        reg.get("nope")
    with pytest.raises(ExpertError, match="already registered"):
        reg.register("echo", _Echo)
    with pytest.raises(ExpertError, match="cannot import"):
        reg.register("broken", "experts.no_such_module:Thing")
        reg.get("broken")


def test_tool_schemas_carry_the_ct_target_enum():
    schemas = {s["function"]["name"]: s for s in default_registry().tool_schemas()}
    assert set(schemas) == {"ct_segmentation", "mri_brain_tumor", "cxr_classification"}
    targets = schemas["ct_segmentation"]["function"]["parameters"]["properties"]["targets"]["anyOf"][0]["enum"]
    assert {"everything", "organs", "lesions", "liver tumor", "lung nodule", "kidney cyst", "liver", "aorta"} <= set(targets)
    assert schemas["mri_brain_tumor"]["function"]["parameters"]["properties"] == {}
    assert "not for clinical use" in schemas["cxr_classification"]["function"]["description"]

"""Test experts for the app's flows: one that takes a while (progress, Draft report waiting for it) and one
that always fails (how a failure is shown, logged and audited). Neither is a model."""

from __future__ import annotations

import time

from scripted_backend import ThresholdExpert

from experts.base import Expert, ExpertResult, Measurement

__all__ = ["SlowExpert", "BrokenExpert", "LiverCT", "BROKEN_MESSAGE"]

BROKEN_MESSAGE = "the test expert always fails"


class SlowExpert(ThresholdExpert):
    """``ThresholdExpert`` (dense tissue volume on CT) that first waits ``delay_s`` seconds."""

    name = "slow_threshold"
    title = "Slow test expert"
    delay_s = 4.0

    def _run(self, volume, min_hu: float = 100.0, **kwargs):
        time.sleep(self.delay_s)
        return super()._run(volume, min_hu=min_hu, **kwargs)


class BrokenExpert(Expert):
    """A CT expert whose every run raises ``RuntimeError`` (as a model running out of memory would)."""

    name = "broken_ct"
    title = "Broken test expert"
    description = "Test expert that always fails."
    modalities = ("CT",)
    version = "test-1"

    def _run(self, volume, **_):
        raise RuntimeError(BROKEN_MESSAGE)


class LiverCT(Expert):
    """A CT "segmentation" that measures a 1523.4 mL liver and counts its own runs (``LiverCT.runs``)."""

    name = "ct_segmentation"
    description = "CT organ segmentation with volumes in mL."
    modalities = ("CT",)
    parameters = {"type": "object", "properties": {"targets": {"type": "string", "enum": ["everything", "liver"]}},
                  "additionalProperties": False}
    runs = 0

    def _run(self, volume, **args):
        LiverCT.runs += 1
        return ExpertResult(expert=self.name, measurements=[Measurement("liver", "volume", 1523.4, "mL")], summary="Liver 1523.4 mL.")

"""TotalSegmentator (nnU-Net) as an m3 CT expert, when the ``TotalSegmentator`` package and its weights
are installed locally.

Calls ``totalsegmentator.python_api.totalsegmentator`` on an in-memory NIfTI built from the volume
(``ml=True``: one multi-label image back, on the input grid) and names labels from
``totalsegmentator.map_to_binary.class_map[task]``. Weights must already be in the package's weights
folder (``totalsegmentator.config.get_weights_dir()``, i.e. ``$TOTALSEG_WEIGHTS_PATH`` or
``$TOTALSEG_HOME_DIR/nnunet/results``); m3 never lets it download.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult, Measurement
from experts.overlay import render_overlay
from experts.preprocess import check_volume

__all__ = ["TotalSegmentatorExpert", "totalsegmentator_weights_dir"]


def totalsegmentator_weights_dir() -> Path:
    """The weights folder the installed TotalSegmentator reads; ``ExpertError`` if not installed."""
    try:
        config = importlib.import_module("totalsegmentator.config")
    except ImportError:
        raise ExpertError(
            "TotalSegmentator is not installed: `pip install TotalSegmentator` on this server and copy its weights into "
            "$TOTALSEG_HOME_DIR/nnunet/results (default ~/.totalsegmentator/nnunet/results); m3 downloads nothing."
        ) from None
    return Path(config.get_weights_dir())


class TotalSegmentatorExpert(Expert):
    """TotalSegmentator's ``task`` (default ``total``) on a CT volume: mask and volume per structure."""

    modalities = ("CT",)
    parameters = {
        "type": "object",
        "properties": {"roi_subset": {"type": "array", "items": {"type": "string"}, "description": "structure names to keep"}},
        "additionalProperties": False,
    }

    def __init__(self, task: str = "total", *, name: str = "totalsegmentator", fast: bool = False, device: str | None = None) -> None:
        weights = totalsegmentator_weights_dir()
        if not weights.is_dir() or not any(weights.iterdir()):
            raise ExpertError(f"TotalSegmentator weights not found: expected the nnU-Net results folders in {weights} "
                              "(copy them from a machine where `totalseg_download_weights` ran).")
        self._api = importlib.import_module("totalsegmentator.python_api")
        self.class_map: dict[int, str] = dict(importlib.import_module("totalsegmentator.map_to_binary").class_map[task])
        self.task, self.fast, self.name = task, fast, name
        import torch

        self.device_name = device or ("gpu" if torch.cuda.is_available() else "cpu")
        self.version = f"TotalSegmentator {task}"
        self.description = (f"TotalSegmentator ({task}) CT segmentation of {len(self.class_map)} structures; returns the mask "
                            "and the volume of each structure in mL. Optional `roi_subset`: structure names to keep.")

    def _run(self, volumes: Volume | Mapping[str, Volume], roi_subset: list[str] | None = None) -> ExpertResult:
        import nibabel as nib

        volume = volumes if isinstance(volumes, Volume) else next(iter(volumes.values()))
        check_volume(volume, self.name, self.modalities, two_d=False)
        unknown = sorted(set(roi_subset or []) - set(self.class_map.values()))
        if unknown:
            raise ExpertError(f"{self.name}: unknown structure(s) {unknown} for task {self.task!r}.")
        image = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine)
        kwargs: dict[str, Any] = dict(output=None, ml=True, task=self.task, fast=self.fast, device=self.device_name, quiet=True)
        if roi_subset:
            kwargs["roi_subset"] = list(roi_subset)
        out = self._api.totalsegmentator(image, **kwargs)
        labels = np.asarray(out.dataobj).round().astype(np.int16)
        if labels.shape != volume.shape:
            raise ExpertError(f"{self.name}: TotalSegmentator returned a {labels.shape} mask for a {volume.shape} input.")
        values = [int(v) for v in np.unique(labels) if v > 0]
        names = {v: self.class_map.get(v, f"label {v}") for v in values}
        measurements = [Measurement(names[v], "volume", float((labels == v).sum()) * volume.voxel_volume_ml, "mL") for v in values]
        return ExpertResult(
            expert=self.name, measurements=measurements, label_names=names,
            label_volume=volume.like(labels, modality="SEG", description=f"{self.name} mask", window=None),
            summary=f"{self.name}: " + ("; ".join(m.text() for m in measurements[:12]) if measurements else "nothing segmented")
            + (f" (+{len(measurements) - 12} more)" if len(measurements) > 12 else "") + ".",
            overlay_renderer=render_overlay,
        )

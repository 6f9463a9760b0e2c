"""Run a published MONAI bundle (``wholeBody_ct_segmentation``, ``brats_mri_segmentation``, ...) from a
local folder as an m3 expert, through ``monai.bundle``.

The bundle's own ``configs/inference.json`` (or ``.yaml``) defines the network (``network_def``), the
preprocessing, the inferer and the postprocessing; its ``models/model.pt`` holds the weights and
``configs/metadata.json`` names the output channels. The input volume is written to a temporary NIfTI so
the bundle's ``LoadImaged`` and the rest of its preprocessing run unchanged; its postprocessing runs
without ``SaveImaged`` (the result stays in memory, on the input grid via its ``Invertd``)::

    registry.register("wholebody_ct", lambda: MonaiBundleExpert("/models/wholeBody_ct_segmentation"))
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult, Measurement
from experts.overlay import render_overlay
from experts.preprocess import check_volume, pick_device

__all__ = ["MonaiBundleExpert", "bundle_files"]


def bundle_files(bundle_dir: str | Path) -> dict[str, Path]:
    """The files of a bundle folder (``inference``, ``model``, optional ``metadata``); ``ExpertError``
    naming the expected path of anything missing."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise ExpertError(f"MONAI bundle folder not found: expected {root} holding configs/inference.json and models/model.pt "
                          "(copy the bundle there; nothing is downloaded at run time).")
    inference = next((root / "configs" / n for n in ("inference.json", "inference.yaml", "inference.yml") if (root / "configs" / n).is_file()), None)
    if inference is None:
        raise ExpertError(f"MONAI bundle {root.name}: expected {root / 'configs' / 'inference.json'} (or .yaml); not found.")
    model = root / "models" / "model.pt"
    if not model.is_file():
        raise ExpertError(f"MONAI bundle {root.name}: expected weights at {model}; not found (download the bundle's "
                          "weights on a connected machine and copy them there).")
    files = {"inference": inference, "model": model}
    if (root / "configs" / "metadata.json").is_file():
        files["metadata"] = root / "configs" / "metadata.json"
    return files


class MonaiBundleExpert(Expert):
    """A segmentation bundle run as an expert: label mask on the input grid and a volume per label."""

    parameters = {"type": "object", "properties": {}, "additionalProperties": False}

    def __init__(self, bundle_dir: str | Path, *, name: str | None = None, modalities: tuple[str, ...] = ("CT",),
                 description: str | None = None, device: str | torch.device | None = None) -> None:
        from monai.bundle import ConfigParser

        files = bundle_files(bundle_dir)
        self.bundle_dir = Path(bundle_dir)
        self.name = name or self.bundle_dir.name
        self.modalities = modalities
        self.device = torch.device(device) if device is not None else pick_device()
        meta = json.loads(files["metadata"].read_text()) if "metadata" in files else {}
        self.version = str(meta.get("version", ""))
        self.parser = ConfigParser()
        self.parser.read_config(str(files["inference"]))
        self.parser["bundle_root"] = str(self.bundle_dir)
        self.parser["device"] = self.device
        key = "network_def" if "network_def" in self.parser else "network"
        if key not in self.parser:
            raise ExpertError(f"MONAI bundle {self.name}: {files['inference']} defines neither 'network_def' nor 'network'.")
        self.network = self.parser.get_parsed_content(key)
        state = torch.load(files["model"], map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        self.network.load_state_dict(state)
        self.network.to(self.device).eval()
        self.inferer = self.parser.get_parsed_content("inferer") if "inferer" in self.parser else None
        self.label_names = _channel_names(meta)
        self.description = description or (
            f"MONAI bundle {meta.get('name', self.name)} {self.version}: {meta.get('description', 'segmentation')} "
            f"Labels: {', '.join(self.label_names.values()) or 'see bundle'}."
        )

    def _run(self, volumes: Volume | Mapping[str, Volume]) -> ExpertResult:
        import nibabel as nib
        from monai.transforms import Compose, SaveImaged

        volume = volumes if isinstance(volumes, Volume) else next(iter(volumes.values()))
        check_volume(volume, self.name, self.modalities, two_d=False)
        with tempfile.TemporaryDirectory(prefix="m3-bundle-") as tmp:
            path = Path(tmp) / "input.nii.gz"
            nib.save(nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), volume.affine), str(path))
            self.parser["output_dir"] = tmp
            pre = self.parser.get_parsed_content("preprocessing", instantiate=True)
            data = pre({"image": str(path)})
            with torch.inference_mode():
                image = data["image"][None].to(self.device)
                pred = self.inferer(image, self.network) if self.inferer is not None else self.network(image)
            data["pred"] = pred[0]
            if "postprocessing" in self.parser:
                post = self.parser.get_parsed_content("postprocessing", instantiate=True)
                steps = [t for t in getattr(post, "transforms", [post]) if not isinstance(t, SaveImaged)]
                data = Compose(steps)(data)
        pred = torch.as_tensor(data["pred"]).cpu()
        labels = (pred.argmax(0) if pred.shape[0] > 1 else pred[0]).numpy().round().astype(np.int16)
        if labels.shape != volume.shape:
            raise ExpertError(f"{self.name}: the bundle's output {labels.shape} is not on the input grid {volume.shape}; "
                              "its postprocessing must invert the preprocessing (Invertd).")
        values = [int(v) for v in np.unique(labels) if v > 0]
        names = {v: self.label_names.get(v, f"label {v}") for v in values}
        measurements = [Measurement(names[v], "volume", float((labels == v).sum()) * volume.voxel_volume_ml, "mL") for v in values]
        return ExpertResult(
            expert=self.name, measurements=measurements,
            label_volume=volume.like(labels, modality="SEG", description=f"{self.name} mask", window=None),
            label_names=names,
            summary=f"{self.name}: " + ("; ".join(m.text() for m in measurements) if measurements else "nothing segmented") + ".",
            overlay_renderer=render_overlay,
        )


def _channel_names(meta: dict[str, Any]) -> dict[int, str]:
    """``{value: name}`` from ``network_data_format.outputs.pred.channel_def`` (background left out)."""
    outputs = meta.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    names = {int(k): str(v) for k, v in pred.get("channel_def", {}).items()}
    return {k: v for k, v in names.items() if k > 0 and v.lower() != "background"}

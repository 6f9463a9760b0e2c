"""TorchXRayVision DenseNet weights from a local file, run as a chest X-ray expert.

With the ``torchxrayvision`` package installed, its own ``DenseNet`` reads the file (pickled models
included). Without it, a state dict in its layout (torchvision DenseNet keys: ``features.denseblockN.
denselayerM.norm1.weight`` ..., ``classifier.weight``, optional ``op_threshs``) is loaded into the
equivalent MONAI ``DenseNet``, whose architecture is read off the tensor shapes. Inputs follow
TorchXRayVision: one channel scaled to [-1024, 1024], 224×224; outputs are sigmoid probabilities,
normalised by the operating thresholds when the weights carry them (then 0.5 means "at threshold").
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult, Finding
from experts.overlay import render_overlay
from experts.preprocess import check_volume, pick_device

__all__ = ["TorchXRayVisionExpert", "XRV_PATHOLOGIES", "xrv_to_monai_state", "monai_densenet_for"]

# the output order of TorchXRayVision's "all" DenseNet (18 outputs)
XRV_PATHOLOGIES = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis", "Effusion",
    "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion", "Fracture",
    "Lung Opacity", "Enlarged Cardiomediastinum",
)
_LAYER = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def xrv_to_monai_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchXRayVision / torchvision DenseNet keys → MONAI ``DenseNet`` keys (``op_threshs`` dropped)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("model.")
        if key == "op_threshs":
            continue
        key = _LAYER.sub(r"\1.layers.\2\3.\4", key)
        key = key.replace("classifier.", "class_layers.out.")
        out[key] = value
    return out


def monai_densenet_for(state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """A MONAI 2D DenseNet shaped like the weights (init features, growth, bottleneck, blocks, outputs)."""
    from monai.networks.nets import DenseNet

    try:
        conv0 = state["features.conv0.weight"]
        growth = state["features.denseblock1.denselayer1.conv2.weight"].shape[0]
        bottleneck = state["features.denseblock1.denselayer1.conv1.weight"].shape[0]
        n_out = state["classifier.weight"].shape[0]
    except KeyError as exc:
        raise ExpertError(f"torchxrayvision: the weights are not a DenseNet state dict (missing {exc}).") from None
    blocks = []
    b = 1
    while any(k.startswith(f"features.denseblock{b}.") for k in state):
        layers = {int(m.group(1)) for k in state if (m := re.match(rf"features\.denseblock{b}\.denselayer(\d+)\.", k))}
        blocks.append(max(layers))
        b += 1
    return DenseNet(spatial_dims=2, in_channels=conv0.shape[1], out_channels=n_out, init_features=conv0.shape[0],
                    growth_rate=growth, block_config=tuple(blocks), bn_size=bottleneck // growth)


class TorchXRayVisionExpert(Expert):
    """A TorchXRayVision DenseNet on a frontal chest radiograph: probability and yes/no per pathology."""

    modalities = ("DX", "CR")
    parameters = {"type": "object", "properties": {}, "additionalProperties": False}

    def __init__(self, weights: str | Path, *, name: str = "torchxrayvision", pathologies: tuple[str, ...] | None = None,
                 device: str | torch.device | None = None) -> None:
        path = Path(weights)
        if not path.is_file():
            raise ExpertError(f"torchxrayvision weights not found: expected a file at {path} (a DenseNet .pt / .pth / "
                              ".safetensors copied from a connected machine; nothing is downloaded at run time).")
        self.name = name
        self.device = torch.device(device) if device is not None else pick_device()
        state, op = _read_state(path)
        self.network = monai_densenet_for(state)
        self.network.load_state_dict(xrv_to_monai_state(state))
        self.network.to(self.device).eval()
        n_out = state["classifier.weight"].shape[0]
        self.pathologies = tuple(pathologies) if pathologies else (XRV_PATHOLOGIES if n_out == len(XRV_PATHOLOGIES) else tuple(f"output {k}" for k in range(n_out)))
        if len(self.pathologies) != n_out:
            raise ExpertError(f"torchxrayvision: {len(self.pathologies)} pathology names given for {n_out} outputs.")
        self.op_threshs = op
        self.version = path.name
        self.description = (f"TorchXRayVision DenseNet ({path.name}) on a frontal chest radiograph: probability and yes/no for "
                            f"{', '.join(p for p in self.pathologies if p)}. No arguments.")

    def probabilities(self, volume: Volume) -> np.ndarray:
        """Per-output probability; with operating thresholds, normalised so 0.5 is the threshold."""
        from monai.transforms import Resize, ScaleIntensityRangePercentiles

        img = torch.as_tensor(np.asarray(volume.array[:, :, 0], dtype=np.float32).T)[None]  # (1, rows, cols)
        img = ScaleIntensityRangePercentiles(0.5, 99.5, -1024.0, 1024.0, clip=True)(img)
        img = Resize((224, 224), mode="area")(img)
        with torch.inference_mode():
            p = torch.sigmoid(self.network(torch.as_tensor(img)[None].to(self.device))[0].float()).cpu()
        if self.op_threshs is not None:  # TorchXRayVision's op_norm: threshold → 0.5, piecewise linear
            t = self.op_threshs
            p = torch.where(p < t, p / (2 * t), 1 - (1 - p) / (2 * (1 - t)))
        return p.numpy()

    def _run(self, volumes: Volume | Mapping[str, Volume]) -> ExpertResult:
        volume = volumes if isinstance(volumes, Volume) else next(iter(volumes.values()))
        check_volume(volume, self.name, self.modalities, two_d=True, min_voxels=64 * 64)
        probs = self.probabilities(volume)
        findings = [Finding(name, bool(p >= 0.5), round(float(p), 4), 0.5) for name, p in zip(self.pathologies, probs) if name]
        yes = [f.label for f in findings if f.present]
        return ExpertResult(expert=self.name, findings=findings, overlay_renderer=render_overlay, version=self.version,
                            summary=f"{self.name}: " + (", ".join(yes) if yes else "no finding above threshold") + ".")


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """State dict and optional operating thresholds from a safetensors / state-dict / pickled-model file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # a pickled model object: only torchxrayvision's classes can rebuild it
            try:
                import torchxrayvision  # noqa: F401
            except ImportError:
                raise ExpertError(
                    f"torchxrayvision: {path} is a pickled model, which needs the torchxrayvision package to read "
                    "(pip install torchxrayvision), or save its state_dict() (plus op_threshs) and point m3 at that file."
                ) from exc
            model = torch.load(path, map_location="cpu", weights_only=False)
            state = dict(model.state_dict())
            if getattr(model, "op_threshs", None) is not None:
                state["op_threshs"] = torch.as_tensor(model.op_threshs)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    op = state.pop("op_threshs", None) if isinstance(state, dict) else None
    return {k.removeprefix("module."): v for k, v in state.items()}, (None if op is None else op.float())

"""``cxr_classification`` (the TorchXRayVision role): multi-label probabilities and yes/no answers on a
frontal chest radiograph.

A small MONAI 2D ``DenseNet`` reads the image resized to ``image_size`` and scaled by its 0.5–99.5th
percentiles; each finding's yes/no threshold was chosen on validation phantoms (maximum Youden J) and
is stored with the weights in ``config.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch

from data.phantoms.labels import CXR_FINDINGS
from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult, Finding
from experts.model_files import load_expert_files
from experts.overlay import render_overlay
from experts.preprocess import check_volume, pick_device

__all__ = ["CXRConfig", "CXRClassificationExpert", "build_cxr_network", "cxr_tensor"]

NAME = "cxr_classification"


@dataclass
class CXRConfig:
    """Network and input of the radiograph classifier (saved as ``network`` in ``config.json``)."""

    image_size: int = 128
    init_features: int = 16
    growth_rate: int = 12
    block_config: tuple[int, ...] = (3, 6, 8, 6)
    pool: str = "max"  # global pooling before the classifier: "max" keeps small findings (nodules) visible
    findings: tuple[str, ...] = CXR_FINDINGS
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CXRConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_cxr_network(cfg: CXRConfig) -> torch.nn.Module:
    """MONAI 2D DenseNet: ``(B, 1, S, S)`` scaled image → ``(B, n_findings)`` logits."""
    from monai.networks.nets import DenseNet

    net = DenseNet(spatial_dims=2, in_channels=1, out_channels=len(cfg.findings), init_features=cfg.init_features,
                   growth_rate=cfg.growth_rate, block_config=cfg.block_config)
    if cfg.pool == "max":  # MONAI's head averages; a nodule is a few pixels of a 4x4 map, so take the maximum
        net.class_layers.pool = torch.nn.AdaptiveMaxPool2d(1)
    elif cfg.pool != "avg":
        raise ValueError(f"pool must be 'max' or 'avg', got {cfg.pool!r}.")
    return net


def cxr_tensor(volume: Volume, cfg: CXRConfig) -> torch.Tensor:
    """``(1, S, S)`` float32 image (axes ``i, j`` as stored) resized and percentile-scaled to 0..1."""
    from monai.transforms import Resize, ScaleIntensityRangePercentiles

    img = torch.as_tensor(np.asarray(volume.array[:, :, 0], dtype=np.float32))[None]
    if tuple(img.shape[1:]) != (cfg.image_size, cfg.image_size):
        img = Resize((cfg.image_size, cfg.image_size), mode="area")(img)
    img = ScaleIntensityRangePercentiles(cfg.low_percentile, cfg.high_percentile, 0.0, 1.0, clip=True)(img)
    return torch.as_tensor(img, dtype=torch.float32)


class CXRClassificationExpert(Expert):
    name = NAME
    title = "Chest X-ray findings"
    modalities = ("DX", "CR")
    description = (
        "Chest X-ray classifier for a frontal radiograph: probability and yes/no for cardiomegaly, pleural effusion, "
        "nodule, pneumothorax and consolidation (thresholds calibrated on validation data). No arguments. Trained on "
        "synthetic phantoms: a demonstration, not for clinical use."
    )
    parameters = {"type": "object", "properties": {}, "additionalProperties": False}

    def __init__(self, weights_root: str | None = None, device: str | torch.device | None = None) -> None:
        files, state = load_expert_files(NAME, weights_root)
        self.config = CXRConfig.from_dict(files["network"])
        self.thresholds: dict[str, float] = {f: float(files.get("thresholds", {}).get(f, 0.5)) for f in self.config.findings}
        self.version = str(files.get("version", ""))
        self.device = torch.device(device) if device is not None else pick_device()
        self.network = build_cxr_network(self.config)
        self.network.load_state_dict(state)
        self.network.to(self.device).eval()

    def probabilities(self, volume: Volume) -> dict[str, float]:
        """Sigmoid probability per finding."""
        with torch.inference_mode():
            logits = self.network(cxr_tensor(volume, self.config)[None].to(self.device))[0]
        return {f: float(p) for f, p in zip(self.config.findings, torch.sigmoid(logits.float()).cpu())}

    def _run(self, volumes: Volume | Mapping[str, Volume]) -> ExpertResult:
        volume = _single_radiograph(volumes)
        check_volume(volume, NAME, self.modalities, two_d=True, min_voxels=64 * 64)
        if min(volume.shape[:2]) < 64:
            raise ExpertError(f"{NAME}: the radiograph of {volume.shape[0]}x{volume.shape[1]} pixels is too small; it needs at least 64x64.")
        probs = self.probabilities(volume)
        findings = [Finding(f, probs[f] >= self.thresholds[f], round(probs[f], 4), self.thresholds[f]) for f in self.config.findings]
        yes = [f.label for f in findings if f.present]
        # a normal film says how far below threshold each finding was, as a positive one says its probability
        summary = "Chest X-ray: " + (", ".join(f"{f} ({probs[f]:.2f})" for f in yes) if yes else "no finding above threshold ("
                                     + ", ".join(f"{f} {probs[f]:.2f}" for f in self.config.findings) + ")") + "."
        from experts.plausibility import cxr_saturation_reasons

        return ExpertResult(
            expert=NAME,
            findings=findings,
            summary=summary,
            overlay_renderer=render_overlay,
        ).mark_uncertain(cxr_saturation_reasons(probs))


def _single_radiograph(volumes: Volume | Mapping[str, Volume]) -> Volume:
    if isinstance(volumes, Volume):
        return volumes
    for key in ("DX", "CR"):
        if key in volumes:
            return volumes[key]
    if len(volumes) == 1:
        return next(iter(volumes.values()))
    raise ExpertError(f"{NAME}: expects one chest radiograph, got {len(volumes)} volumes ({', '.join(volumes)}).")

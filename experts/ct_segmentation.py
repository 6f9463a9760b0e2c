"""``ct_segmentation`` (the VISTA3D role): organs and lesions on a CT volume, with volumes, lesion
counts and the largest lesion diameter.

A small MONAI 3D ``UNet`` works on a coarse RAS grid (``spacing_mm``); the input is reoriented and
resampled to it with MONAI transforms, segmented with ``sliding_window_inference``, and the class
scores are resampled back onto the input's own grid before the argmax, so the mask lines up with the
series the user sees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch

from data.phantoms.labels import CT_LABELS, CT_LESIONS, CT_ORGANS, CT_TARGETS, FINDING_SYNONYMS, ct_target_values
from data.study import Volume
from experts.base import Expert, ExpertError, ExpertResult, Finding, Measurement
from experts.measurements import (contrast_phase, drop_components_without, drop_detached_components, drop_small_components, keep_largest_component, lesion_sides, lesion_stats,
                                  mean_attenuation, structure_volume_ml)
from experts.model_files import load_expert_files
from experts.overlay import render_overlay
from experts.preprocess import channel_argmax, check_volume, labels_to_input_grid, pick_device, to_model_grid

__all__ = ["CTSegConfig", "CTSegmentationExpert", "build_ct_network", "ct_input", "ct_targets", "keep_confident_lesions", "TARGET_CHOICES"]

NAME = "ct_segmentation"
TARGET_CHOICES: list[str] = CT_TARGETS
# the words a question names each structure by (a word shared by two choices names both: "kidneys")
TARGET_WORDS: dict[str, tuple[str, ...]] = {
    "liver": ("liver", "hepatic"),
    "spleen": ("spleen", "splenic"),
    "left kidney": ("left kidney", "left renal", "kidney", "renal"),
    "right kidney": ("right kidney", "right renal", "kidney", "renal"),
    "left lung": ("left lung", "lung"),
    "right lung": ("right lung", "lung"),
    "heart": ("heart", "cardiac"),
    "aorta": ("aorta", "aortic"),
    "spine": ("spine", "spinal", "vertebra", "vertebrae", "vertebral column"),
    # a lesion by its bare noun too ("cysts in the kidneys"): the CT expert has one lesion type of each
    "liver tumor": (*FINDING_SYNONYMS["liver tumor"], "tumor", "tumour", "mass"),
    "lung nodule": (*FINDING_SYNONYMS["lung nodule"], "nodule"),
    "kidney cyst": (*FINDING_SYNONYMS["kidney cyst"], "cyst"),
}
_LESION_ORGANS = {10: (1,), 11: (5, 6), 12: (3, 4)}  # liver tumour in the liver, nodule in a lung, cyst in a kidney


@dataclass
class CTSegConfig:
    """Network and grid of the CT expert (saved as ``network`` in ``config.json``)."""

    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)  # model grid
    hu_min: float = -1000.0  # wide intensity window scaled to 0..1 (clipped): air, lung, bone
    hu_max: float = 1000.0
    soft_min: float = -160.0  # soft-tissue window (centre 40, width 400): organ and lesion contrast
    soft_max: float = 240.0
    # Sliding-window patch (model voxels). Along z it stays within the training patch (64): a taller window
    # pads short series with zeros above and below, a context the network never saw in training.
    roi_size: tuple[int, int, int] = (96, 96, 64)
    channels: tuple[int, ...] = (16, 32, 64, 128)  # 4x the parameters of (8..64) at ~the same CPU step time (memory-bound)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    overlap: float = 0.25
    sw_batch_size: int = 1
    min_lesion_ml: float = 0.3  # smaller components are specks: < ~8 mm across, under 3 model voxels, below what the model resolves
    organ_largest_component: bool = True  # an organ is one piece: stray islands of an organ label become background
    lesion_max_gap_mm: float = 3.0  # lesion components farther than this from their organ are dropped (< 0: keep all)
    lesion_logit_offset: float = 0.0  # subtracted from the lesion logits before the argmax (> 0: fewer, surer lesions)
    lesion_seed_margin: float = 0.0  # > 0: a lesion component needs a model voxel whose logit beats all others by this (its extent stays the argmax's)
    body_hu: float = -500.0  # voxels above this are the body (for the left-right position channel)
    position_scale_mm: float = 150.0
    num_classes: int = len(CT_LABELS) + 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CTSegConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_ct_network(cfg: CTSegConfig) -> torch.nn.Module:
    """The MONAI 3D UNet: ``(B, 3, X, Y, Z)`` (wide window, soft-tissue window, left-right position) →
    ``(B, num_classes, X, Y, Z)`` logits."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=3, out_channels=cfg.num_classes, channels=cfg.channels,
                strides=cfg.strides, num_res_units=cfg.num_res_units, norm="instance")


def ct_input(volume: Volume, cfg: CTSegConfig):
    """The network input on the model grid: ``(3, X, Y, Z)`` MetaTensor of HU scaled to 0..1 through a
    wide and a soft-tissue window, and the RAS x position (mm from the body's centroid ÷
    ``position_scale_mm``).

    The position channel (hand-written: no MONAI transform adds it) tells left from right organs
    (kidneys, lungs), which patches of a mirror-symmetric body cannot."""
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRange

    img = to_model_grid(volume, cfg.spacing_mm)  # (1, X, Y, Z), RAS: axis 0 runs to the patient's right
    hu = img.as_tensor()[0]
    body = hu > cfg.body_hu
    x_mm = torch.arange(hu.shape[0], dtype=torch.float32) * float(cfg.spacing_mm[0])
    centre = float((x_mm[:, None, None] * body).sum() / body.sum()) if bool(body.any()) else float(x_mm.mean())
    position = ((x_mm - centre) / cfg.position_scale_mm)[:, None, None].expand_as(hu)
    wide = ScaleIntensityRange(cfg.hu_min, cfg.hu_max, 0.0, 1.0, clip=True)(hu)
    soft = ScaleIntensityRange(cfg.soft_min, cfg.soft_max, 0.0, 1.0, clip=True)(hu)
    stacked = torch.stack([torch.as_tensor(wide), torch.as_tensor(soft), position]).as_subclass(torch.Tensor)
    return MetaTensor(stacked, affine=img.affine)


def ct_targets(targets: str | list[str]) -> list[int]:
    """Label values selected by the ``targets`` argument (a choice or a list of choices)."""
    return ct_target_values(targets)


class CTSegmentationExpert(Expert):
    name = NAME
    title = "CT segmentation"
    modalities = ("CT",)
    description = (
        "CT segmentation of 9 organs (liver, spleen, left/right kidney, left/right lung, heart, aorta, spine) and "
        "3 lesion types (liver tumor, lung nodule, kidney cyst) on a 3D CT series. Returns the mask, the volume of "
        "each structure in mL, for lesions the count and the largest diameter in mm, and the contrast phase read from "
        "the mean attenuation (HU) of the aorta and the liver. Argument `targets`: "
        "'everything', 'organs', 'lesions', a lesion type or one structure name. Trained on synthetic phantoms: "
        "a demonstration, not for clinical use."
    )
    parameters = {
        "type": "object",
        "properties": {
            "targets": {
                "description": "what to segment: everything, organs, lesions, a lesion type or a structure",
                "anyOf": [
                    {"type": "string", "enum": TARGET_CHOICES},
                    {"type": "array", "items": {"type": "string", "enum": TARGET_CHOICES}, "minItems": 1},
                ],
                "default": "everything",
            }
        },
        "additionalProperties": False,
    }
    vocabulary = {"targets": TARGET_WORDS}

    def covers(self, argument: str, value: Any, choice: str) -> bool:
        """``targets`` groups ("organs", "lesions", "everything") include their structures."""
        if argument != "targets" or choice not in TARGET_CHOICES:
            return super().covers(argument, value, choice)
        try:
            return set(ct_targets(choice)) <= set(ct_targets(value if value else "everything"))
        except ValueError:  # a value outside the choices covers nothing
            return False

    def __init__(self, weights_root: str | None = None, device: str | torch.device | None = None) -> None:
        files, state = load_expert_files(NAME, weights_root)
        self.config = CTSegConfig.from_dict(files["network"])
        self.card = files
        self.version = str(files.get("version", ""))
        self.device = torch.device(device) if device is not None else pick_device()
        self.network = build_ct_network(self.config)
        self.network.load_state_dict(state)
        self.network.to(self.device).eval()

    def scores(self, volume: Volume):
        """Class logits ``(C, X, Y, Z)`` on the model grid, a ``MetaTensor`` carrying its affine."""
        from monai.inferers import sliding_window_inference

        cfg = self.config
        img = ct_input(volume, cfg)
        with torch.inference_mode():  # a plain tensor in: MetaTensor bookkeeping on every window costs seconds on a big volume
            logits = sliding_window_inference(
                img.as_tensor()[None].to(self.device), cfg.roi_size, cfg.sw_batch_size, self.network,
                overlap=cfg.overlap, mode="gaussian", device=torch.device("cpu"),
            )
            scores = logits[0]
            if cfg.lesion_logit_offset:
                for value in CT_LESIONS:
                    scores[value] -= cfg.lesion_logit_offset  # in place: no second copy of a (C, X, Y, Z) array
        from monai.data import MetaTensor

        return MetaTensor(scores, affine=img.affine)

    def segment(self, volume: Volume) -> np.ndarray:
        """All labels (``CT_LABELS`` values) as an ``int16`` array on ``volume``'s grid, before the
        connected-component clean-up of ``postprocess`` (with ``lesion_seed_margin``, lesion components
        the network is nowhere sure of are already background)."""
        scores = self.scores(volume)
        winner = channel_argmax(scores)
        labels = labels_to_input_grid(scores, volume, argmax=winner)
        if self.config.lesion_seed_margin > 0:
            keep_confident_lesions(labels, scores, volume, self.config.lesion_seed_margin, winner=winner)
        return labels

    def postprocess(self, labels: np.ndarray, volume: Volume) -> np.ndarray:
        """Clean ``labels`` (all ``CT_LABELS`` values, on ``volume``'s grid) in place and return it: the
        largest component of each organ; lesion components of at least ``min_lesion_ml`` that lie within
        ``lesion_max_gap_mm`` of their organ."""
        cfg = self.config
        if cfg.organ_largest_component:
            for value in CT_ORGANS:
                keep_largest_component(labels, value)
        min_voxels = max(1, int(round(cfg.min_lesion_ml / volume.voxel_volume_ml)))
        gap_voxels = max(1, int(np.ceil(cfg.lesion_max_gap_mm / min(volume.spacing))))
        for value in CT_LESIONS:
            drop_small_components(labels, value, min_voxels)
            if cfg.lesion_max_gap_mm >= 0:
                drop_detached_components(labels, value, _LESION_ORGANS[value], gap_voxels)
        return labels

    def _run(self, volumes: Volume | Mapping[str, Volume], targets: str | list[str] = "everything") -> ExpertResult:
        volume = _single_ct(volumes)
        check_volume(volume, NAME, self.modalities, two_d=False, min_extent_mm=64.0)
        wanted = ct_targets(targets)
        labels = self.postprocess(self.segment(volume), volume)  # on all labels: lesions are checked against their organ
        phase = _phase(volume, labels)  # from the aorta and the liver, whatever was asked
        uncertain = _plausibility(volume, labels, phase)  # on every structure, whatever was asked
        spine = next((v for v, n in CT_LABELS.items() if n == "spine"), None)
        sides = {v: lesion_sides(labels, v, volume, spine) for v in wanted if v in CT_LESIONS}  # before other labels go
        labels[~np.isin(labels, wanted)] = 0
        findings: list[Finding] = []
        measurements: list[Measurement] = []
        parts: list[str] = []
        for value in wanted:
            name = CT_LABELS[value]
            if value in CT_LESIONS:
                stats = lesion_stats(labels, value, volume)
                findings.append(Finding(name, stats.count > 0))
                measurements.append(Measurement(name, "count", float(stats.count), "count"))
                if stats.count:
                    measurements.append(Measurement(name, "volume", stats.total_volume_ml, "mL"))
                    measurements.append(Measurement(name, "largest diameter", stats.largest_diameter_mm, "mm"))
                    parts.append(f"{stats.count} {name}{'s' if stats.count > 1 else ''} (largest {stats.largest_diameter_mm:.0f} mm, "
                                 f"{' and '.join(sides[value])})")
                    findings += [Finding(f"{name} on the {side}", True) for side in sides[value]]
                else:
                    parts.append(f"no {name}")
            else:
                ml = structure_volume_ml(labels, value, volume)
                measurements.append(Measurement(name, "volume", ml, "mL"))
                parts.append(f"{name} {ml:.0f} mL" if ml > 0 else f"{name} not found")
        for have, extra in zip((findings, measurements, parts), phase):
            have += extra
        return ExpertResult(
            expert=NAME,
            findings=findings,
            measurements=measurements,
            label_volume=volume.like(labels.astype(np.int16), modality="SEG", description="ct_segmentation mask", window=None),
            label_names={v: CT_LABELS[v] for v in wanted},
            summary="CT segmentation: " + "; ".join(parts) + ".",
            overlay_renderer=render_overlay,
        ).mark_uncertain(uncertain)


def keep_confident_lesions(labels: np.ndarray, scores, volume: Volume, margin: float, *, winner: torch.Tensor | None = None) -> int:
    """Hysteresis on lesions: set to background (in place) each lesion component of ``labels`` (on
    ``volume``'s grid) that holds no seed, a model-grid voxel where that lesion's logit in ``scores``
    (``(C, X, Y, Z)`` ``MetaTensor``) beats every other class by ``margin``. Faint false positives go,
    true lesions keep the extent of the plain argmax. Returns how many components were dropped.
    ``winner``: ``channel_argmax(scores)`` when the caller has it already."""
    plain = torch.as_tensor(scores).as_subclass(torch.Tensor).float()
    winner = channel_argmax(plain) if winner is None else winner
    to_input = np.linalg.inv(volume.affine) @ np.asarray(scores.affine, dtype=np.float64)  # model index → input index
    dropped = 0
    for value in CT_LESIONS:
        where = torch.nonzero(winner == value)  # the margin is only needed where the lesion wins (few voxels)
        top = plain[:, where[:, 0], where[:, 1], where[:, 2]].topk(2, dim=0).values if len(where) else torch.zeros(2, 0)
        idx = where[(top[0] - top[1]) >= margin].numpy()
        inside = np.zeros(labels.shape, dtype=bool)
        if len(idx):
            pts = np.rint(idx @ to_input[:3, :3].T + to_input[:3, 3]).astype(int)
            pts = pts[((pts >= 0) & (pts < np.asarray(labels.shape))).all(axis=1)]
            inside[tuple(pts.T)] = True
        dropped += drop_components_without(labels, value, inside, 1)
    return dropped


def _phase(volume: Volume, labels: np.ndarray) -> tuple[list[Finding], list[Measurement], list[str]]:
    """Findings ``<phase> phase`` and ``contrast``, with the aorta and liver mean attenuation they rest on;
    nothing when either structure is missing from the scan."""
    (aorta_value,), (liver_value,) = ct_target_values("aorta"), ct_target_values("liver")
    aorta = mean_attenuation(volume.array, labels, aorta_value)
    liver = mean_attenuation(volume.array, labels, liver_value)
    if aorta is None or liver is None:
        return [], [], []
    phase = contrast_phase(aorta, liver)
    return ([Finding(f"{phase} phase", True), Finding("contrast", phase != "non-contrast")],
            [Measurement("aorta", "mean attenuation", aorta, "HU"), Measurement("liver", "mean attenuation", liver, "HU")],
            [f"{phase} phase (aorta {aorta:.0f} HU, liver {liver:.0f} HU)"])


def _plausibility(volume: Volume, labels: np.ndarray, phase) -> list[str]:
    """``experts.plausibility`` reasons for this segmentation: organ volumes, nodule density, the phase's aorta."""
    from experts.plausibility import ct_nodule_density_reasons, ct_organ_volume_reasons, ct_phase_reasons

    by_name = {n: v for v, n in CT_LABELS.items()}
    reasons = ct_organ_volume_reasons(labels, {v: CT_LABELS[v] for v in CT_ORGANS}, volume)
    reasons += ct_nodule_density_reasons(volume.array, labels, by_name["lung nodule"])
    called = next((f.label.removesuffix(" phase") for f in phase[0] if f.label.endswith(" phase")), None)
    aorta = next((m.value for m in phase[1] if m.structure == "aorta"), None)
    kidneys = np.isin(labels, (by_name["left kidney"], by_name["right kidney"])).astype(np.int16)
    kidney_hu = mean_attenuation(volume.array, kidneys, 1)
    return reasons + ct_phase_reasons(called, aorta, kidney_hu)


def _single_ct(volumes: Volume | Mapping[str, Volume]) -> Volume:
    if isinstance(volumes, Volume):
        return volumes
    if "CT" in volumes:
        return volumes["CT"]
    if len(volumes) == 1:
        return next(iter(volumes.values()))
    raise ExpertError(f"{NAME}: expects one CT volume, got {len(volumes)} volumes ({', '.join(volumes)}); pass the CT series.")

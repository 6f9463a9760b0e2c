"""What training differs in per expert: network, phantom data on the model grid, loss, validation
metrics, calibration, held-out evaluation through the real expert, and the model card.

Seeds: training phantoms use ``10_000 + i``, validation ``20_000 + i``, held-out test ``30_000 + i``
(never overlapping), so the held-out numbers in a model card come from studies the model never saw.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data.phantoms.labels import CT_LABELS, CT_LESIONS, CT_ORGANS
from experts.base import ExpertError

__all__ = ["Recipe", "CTTask", "apply_override", "dice_per_class", "fresh_seed", "TRAIN_SEED", "VAL_SEED", "TEST_SEED"]

TRAIN_SEED, VAL_SEED, TEST_SEED = 10_000, 20_000, 30_000
FRESH_SEED = 1_000_000  # phantoms drawn during training (``refresh_every``): seed FRESH_SEED + run seed * 100_000 + k


def fresh_seed(run_seed: int, k: int) -> int:
    """Seed of the ``k``-th (1, 2, ...) phantom drawn during a run; never a validation or test seed."""
    if not 1 <= k < 100_000:
        raise ValueError(f"fresh phantom index {k} out of range 1..99999")
    return FRESH_SEED + run_seed * 100_000 + k


@dataclass
class Recipe:
    """Training hyper-parameters of one expert (saved in ``config.json`` and the checkpoint)."""

    steps: int
    batch_size: int
    lr: float
    n_train: int
    n_val: int
    n_test: int
    val_every: int
    patch: tuple[int, ...] = ()
    lesion_weight: float = 1.0  # class weight of lesion labels in the loss (small structures learn late)
    lesion_rate: float = 0.9  # probability of each lesion type in a training phantom
    crop_ratios: dict[str, float] = field(default_factory=dict)  # structure name -> patch-centre sampling ratio
    refresh_every: int = 0  # every this many steps a new phantom replaces the oldest training one (0: a fixed set)


def apply_override(recipe: Recipe, key: str, value: Any) -> None:
    """Set one recipe field from ``--set KEY=VALUE``; ``crop_ratios.<structure>`` sets one sampling ratio."""
    if key.startswith("crop_ratios."):
        recipe.crop_ratios[key.split(".", 1)[1]] = float(value)
        return
    names = [f for f in Recipe.__dataclass_fields__ if f not in ("patch", "crop_ratios")]
    if key not in names:
        raise ExpertError(f"unknown recipe setting {key!r}; settable: {', '.join(names)}, crop_ratios.<structure>.")
    kind = type(getattr(recipe, key))
    try:
        setattr(recipe, key, kind(value))
    except ValueError as exc:
        raise ExpertError(f"recipe setting {key!r} needs a {kind.__name__}, got {value!r}.") from exc


def dice_per_class(pred: np.ndarray, truth: np.ndarray, values: list[int]) -> dict[int, float]:
    """Dice of each label value whose ground truth is present (absent truth → left out)."""
    out: dict[int, float] = {}
    for v in values:
        t = truth == v
        n_t = int(t.sum())
        if n_t == 0:
            continue
        p = pred == v
        out[v] = float(2.0 * np.logical_and(p, t).sum() / (n_t + p.sum()))
    return out


def _phantom(kind: str, seed: int, **options: Any):
    import data.phantoms

    return data.phantoms.generate(kind, seed, **options)


class CTTask:
    """3D UNet on 3 mm RAS patches; DiceCE loss; organ / lesion Dice."""

    name = "ct_segmentation"

    def __init__(self) -> None:
        from experts.ct_segmentation import CTSegConfig

        self.net_cfg = CTSegConfig()
        self.recipe = Recipe(steps=600, batch_size=2, lr=4e-3, n_train=32, n_val=3, n_test=30, val_every=150, patch=(64, 64, 64),
                             lesion_weight=4.0)
        self.seed = 0
        self.train_cases: list[dict] = []
        self.val_cases: list[dict] = []

    def build_model(self) -> torch.nn.Module:
        from experts.ct_segmentation import build_ct_network

        return build_ct_network(self.net_cfg)

    def network_config(self) -> dict[str, Any]:
        return self.net_cfg.to_dict()

    def _case(self, seed: int, **options: Any) -> dict:
        from monai.transforms import ClassesToIndices, SpatialPad

        from experts.ct_segmentation import ct_input
        from experts.preprocess import to_model_grid

        c = self.net_cfg
        case = _phantom("ct", seed, **options)
        vol = case.volumes["CT"]
        img = ct_input(vol, c)
        lab = to_model_grid(vol.like(case.labels.astype(np.float32)), c.spacing_mm, mode="nearest")
        pad = SpatialPad(self.recipe.patch)
        img, lab = pad(img).as_tensor(), pad(lab).as_tensor().round().to(torch.uint8)
        indices = ClassesToIndices(num_classes=c.num_classes)(lab)
        return {"image": img, "label": lab, "indices": indices, "seed": seed}

    def prepare_data(self, start_step: int = 0) -> None:
        """The training set as it stands at ``start_step`` (a resumed run sees the phantoms it would have seen)."""
        from tqdm.auto import tqdm

        r = self.recipe
        self.train_cases = [self._case(TRAIN_SEED + self.seed * 1000 + i, lesion_rate=r.lesion_rate) for i in tqdm(range(r.n_train), desc="phantoms", leave=False)]
        self.val_cases = [self._case(VAL_SEED + i, lesion_rate=0.9) for i in range(r.n_val)]
        if r.refresh_every and start_step > 0:
            last = (start_step - 1) // r.refresh_every
            for k in range(max(1, last - r.n_train + 1), last + 1):
                self.refresh(k * r.refresh_every)

    def refresh(self, step: int) -> None:
        """At each multiple of ``refresh_every``: a newly drawn phantom takes the oldest training phantom's place."""
        r = self.recipe
        if r.refresh_every <= 0 or step <= 0 or step % r.refresh_every:
            return
        k = step // r.refresh_every
        self.train_cases[(k - 1) % r.n_train] = self._case(fresh_seed(self.seed, k), lesion_rate=r.lesion_rate)

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.transforms import RandCropByLabelClasses

        c = self.net_cfg
        ratios = [1.0] + [1.0 if v in CT_ORGANS else 4.0 for v in range(1, c.num_classes)]
        for name, ratio in self.recipe.crop_ratios.items():
            if name not in CT_LABELS.values():
                raise ExpertError(f"crop_ratios: unknown structure {name!r}; known: {', '.join(CT_LABELS.values())}.")
            ratios[next(v for v, n in CT_LABELS.items() if n == name)] = ratio
        xs, ys = [], []
        for _ in range(self.recipe.batch_size):
            case = self.train_cases[int(rng.integers(len(self.train_cases)))]
            crop = RandCropByLabelClasses(self.recipe.patch, ratios=ratios, num_classes=c.num_classes, indices=case["indices"], warn=False)
            # image and label stacked so both are cropped around the same centre
            both = torch.cat([case["image"], case["label"].float()], 0)
            crop.set_random_state(seed=int(rng.integers(2**31)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                patch = torch.as_tensor(crop(both, label=case["label"])[0])
            xs.append(patch[:-1])
            ys.append(patch[-1:].round().long())
        x = torch.stack(xs)
        x[:, :2] += 0.02 * float(rng.standard_normal())  # small global intensity shift (contrast phases vary)
        return x, torch.stack(ys)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_loss"):
            from monai.losses import DiceCELoss

            weight = torch.tensor([self.recipe.lesion_weight if v in CT_LESIONS else 1.0 for v in range(self.net_cfg.num_classes)])
            self._loss = DiceCELoss(to_onehot_y=True, softmax=True, weight=weight)
        return self._loss(logits, y)

    def _predict(self, model: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            logits = sliding_window_inference(image[None], self.net_cfg.roi_size, 1, model, overlap=0.25, mode="gaussian")
        return logits[0].argmax(0).numpy()

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        organ, lesion = [], []
        for case in self.val_cases:
            pred, truth = self._predict(model, case["image"]), case["label"][0].numpy()
            d = dice_per_class(pred, truth, list(CT_LABELS))
            organ += [d[v] for v in CT_ORGANS if v in d]
            lesion += [d[v] for v in CT_LESIONS if v in d]
        return {"organ_dice": float(np.mean(organ)), "lesion_dice": float(np.mean(lesion)) if lesion else float("nan")}

    def calibrate(self, model: torch.nn.Module) -> dict[str, Any]:
        return {}

    def evaluate_held_out(self, weights_root: str | None) -> dict[str, Any]:
        from experts.ct_segmentation import CTSegmentationExpert

        return evaluate_ct(CTSegmentationExpert(weights_root), self.recipe.n_test)

    def model_card(self, config: dict[str, Any]) -> str:
        from experts.model_cards import ct_card

        return ct_card(config)


def evaluate_ct(expert, n_cases: int, seed0: int = TEST_SEED) -> dict[str, Any]:
    """Dice per structure on the input grid (mask from ``expert.run``), lesion counts and diameters, the
    contrast phase, over ``n_cases`` default phantoms (seeds ``seed0 + i``)."""
    per_class: dict[str, list[float]] = {CT_LABELS[v]: [] for v in CT_LABELS}
    count_ok, diam_err, seconds, phase_ok = 0, [], [], []
    n_lesion_types = 0
    for i in range(n_cases):
        case = _phantom("ct", seed0 + i)
        res = expert.run(case.volumes["CT"], targets="everything")
        seconds.append(res.seconds)
        phase_ok.append(any(f.label == f"{case.truth['phase']} phase" and f.present for f in res.findings))
        d = dice_per_class(res.label_volume.array, case.labels, list(CT_LABELS))
        for v, s in d.items():
            per_class[CT_LABELS[v]].append(s)
        meas = {(m.structure, m.quantity): m.value for m in res.measurements}
        for les in CT_LESIONS:
            name = CT_LABELS[les]
            n_true = case.truth["lesion_counts"][name]
            n_lesion_types += 1
            count_ok += int(meas.get((name, "count"), 0) == n_true)
            if n_true and (name, "largest diameter") in meas:
                true_d = max(x["max_diameter_mm"] for x in case.truth["lesions"] if x["type"] == name)
                diam_err.append(abs(meas[(name, "largest diameter")] - true_d))
    organ = [s for v in CT_ORGANS for s in per_class[CT_LABELS[v]]]
    lesion_means = [float(np.mean(per_class[CT_LABELS[v]])) for v in CT_LESIONS if per_class[CT_LABELS[v]]]
    return {
        "n_cases": n_cases,
        "seed0": seed0,
        "mean_organ_dice": round(float(np.mean(organ)), 4),
        "mean_lesion_dice": round(float(np.mean(lesion_means)), 4),
        "dice_per_structure": {k: round(float(np.mean(v)), 4) for k, v in per_class.items() if v},
        "lesion_count_accuracy": round(count_ok / max(1, n_lesion_types), 4),
        "largest_diameter_abs_error_mm": round(float(np.mean(diam_err)), 2) if diam_err else None,
        "contrast_phase_accuracy": round(float(np.mean(phase_ok)), 4),
        "seconds_per_case": round(float(np.mean(seconds)), 2),
    }

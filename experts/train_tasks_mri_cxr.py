"""Training tasks of ``mri_brain_tumor`` (3D UNet, DiceCE) and ``cxr_classification`` (2D DenseNet,
BCE, Youden-J thresholds), with their held-out evaluations. Seeds as in ``experts.train_tasks``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from data.phantoms.labels import CXR_FINDINGS, MRI_LABELS
from experts.train_tasks import TEST_SEED, TRAIN_SEED, VAL_SEED, Recipe, _phantom, dice_per_class

__all__ = ["BrainTumorTask", "CXRTask", "evaluate_mri", "evaluate_cxr", "youden_thresholds"]


class BrainTumorTask:
    """4-sequence 3D UNet on 2.5 mm patches; whole-tumour / tumour-core / enhancing Dice."""

    name = "mri_brain_tumor"

    def __init__(self) -> None:
        from experts.mri_brain_tumor import BrainTumorConfig

        self.net_cfg = BrainTumorConfig()
        self.recipe = Recipe(steps=600, batch_size=2, lr=4e-3, n_train=32, n_val=3, n_test=30, val_every=150, patch=(48, 48, 48))
        self.seed = 0

    def build_model(self) -> torch.nn.Module:
        from experts.mri_brain_tumor import build_mri_network

        return build_mri_network(self.net_cfg)

    def network_config(self) -> dict[str, Any]:
        return self.net_cfg.to_dict()

    def _case(self, seed: int) -> dict:
        from monai.transforms import ClassesToIndices, SpatialPad

        from experts.mri_brain_tumor import stack_sequences
        from experts.preprocess import to_model_grid

        case = _phantom("mri", seed, tumor_rate=0.8)
        ref, img = stack_sequences(case.volumes, self.net_cfg)
        lab = to_model_grid(ref.like(case.labels.astype(np.float32)), self.net_cfg.spacing_mm, mode="nearest")
        pad = SpatialPad(self.recipe.patch)
        img, lab = pad(img).as_tensor(), pad(lab).as_tensor().round().to(torch.uint8)
        return {"image": img, "label": lab, "indices": ClassesToIndices(num_classes=self.net_cfg.num_classes)(lab)}

    def prepare_data(self) -> None:
        from tqdm.auto import tqdm

        r = self.recipe
        self.train_cases = [self._case(TRAIN_SEED + self.seed * 1000 + i) for i in tqdm(range(r.n_train), desc="phantoms", leave=False)]
        self.val_cases = [self._case(VAL_SEED + i) for i in range(r.n_val)]

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.transforms import RandCropByLabelClasses

        xs, ys = [], []
        for _ in range(self.recipe.batch_size):
            case = self.train_cases[int(rng.integers(len(self.train_cases)))]
            crop = RandCropByLabelClasses(self.recipe.patch, ratios=[1.0, 2.0, 2.0, 2.0], num_classes=self.net_cfg.num_classes,
                                          indices=case["indices"], warn=False)
            crop.set_random_state(seed=int(rng.integers(2**31)))
            both = torch.cat([case["image"], case["label"].float()], 0)  # one centre for image and label
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                patch = torch.as_tensor(crop(both, label=case["label"])[0])
            xs.append(patch[:-1])
            ys.append(patch[-1:].round().long())
        return torch.stack(xs), torch.stack(ys)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_loss"):
            from monai.losses import DiceCELoss

            self._loss = DiceCELoss(to_onehot_y=True, softmax=True)
        return self._loss(logits, y)

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        from monai.inferers import sliding_window_inference

        wt, et = [], []
        for case in self.val_cases:
            with torch.inference_mode():
                pred = sliding_window_inference(case["image"][None], self.net_cfg.roi_size, 1, model, overlap=0.25)[0].argmax(0).numpy()
            truth = case["label"][0].numpy()
            wt += list(dice_per_class((pred > 0).astype(int), (truth > 0).astype(int), [1]).values())
            et += list(dice_per_class(pred, truth, [3]).values())
        return {"whole_tumor_dice": float(np.mean(wt)) if wt else float("nan"), "enhancing_dice": float(np.mean(et)) if et else float("nan")}

    def calibrate(self, model: torch.nn.Module) -> dict[str, Any]:
        return {}

    def evaluate_held_out(self, weights_root: str | None) -> dict[str, Any]:
        from experts.mri_brain_tumor import BrainTumorExpert

        return evaluate_mri(BrainTumorExpert(weights_root), self.recipe.n_test)

    def model_card(self, config: dict[str, Any]) -> str:
        from experts.model_cards import mri_card

        return mri_card(config)


def evaluate_mri(expert, n_cases: int, seed0: int = TEST_SEED) -> dict[str, Any]:
    """Whole-tumour, tumour-core and enhancing Dice (cases whose truth has the region), tumour
    detection accuracy and whole-tumour volume error, through ``expert.run`` on default phantoms."""
    wt, tc, et, detect, vol_err = [], [], [], 0, []
    for i in range(n_cases):
        case = _phantom("mri", seed0 + i)
        res = expert.run(case.volumes)
        pred, truth = res.label_volume.array, case.labels
        wt += list(dice_per_class((pred > 0).astype(int), (truth > 0).astype(int), [1]).values())
        tc += list(dice_per_class(np.isin(pred, [1, 3]).astype(int), np.isin(truth, [1, 3]).astype(int), [1]).values())
        et += list(dice_per_class(pred, truth, [3]).values())
        found = next(f.present for f in res.findings if f.label == "tumor")
        detect += int(found == bool(case.truth["tumor_present"]))
        meas = {(m.structure, m.quantity): m.value for m in res.measurements}
        if case.truth["tumor_present"]:
            vol_err.append(abs(meas[("whole tumor", "volume")] - case.truth["whole_tumor_ml"]) / case.truth["whole_tumor_ml"])
    return {
        "n_cases": n_cases, "seed0": seed0,
        "whole_tumor_dice": round(float(np.mean(wt)), 4) if wt else None,
        "tumor_core_dice": round(float(np.mean(tc)), 4) if tc else None,
        "enhancing_dice": round(float(np.mean(et)), 4) if et else None,
        "tumor_detection_accuracy": round(detect / n_cases, 4),
        "whole_tumor_volume_rel_error": round(float(np.mean(vol_err)), 4) if vol_err else None,
    }


def youden_thresholds(probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Per finding, the probability threshold maximising sensitivity + specificity − 1 on validation data."""
    out = {}
    for k, name in enumerate(names):
        p, y = probs[:, k], labels[:, k].astype(bool)
        if y.all() or (~y).all():
            out[name] = 0.5
            continue
        cands = np.unique(p)
        j = [((p >= t) & y).sum() / y.sum() + ((p < t) & ~y).sum() / (~y).sum() - 1 for t in cands]
        best = int(np.argmax(j))
        lo = cands[best]
        below = cands[best - 1] if best > 0 else lo
        out[name] = round(float((lo + below) / 2), 4)  # midway to the next lower score: less brittle
    return out


class CXRTask:
    """2D DenseNet on 128 px radiographs; BCE; validation AUROC; thresholds by Youden J."""

    name = "cxr_classification"

    def __init__(self) -> None:
        from experts.cxr_classification import CXRConfig

        self.net_cfg = CXRConfig()
        self.recipe = Recipe(steps=600, batch_size=32, lr=3e-3, n_train=800, n_val=150, n_test=200, val_every=150)
        self.seed = 0

    def build_model(self) -> torch.nn.Module:
        from experts.cxr_classification import build_cxr_network

        return build_cxr_network(self.net_cfg)

    def network_config(self) -> dict[str, Any]:
        return self.net_cfg.to_dict()

    def _set(self, seed0: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        from tqdm.auto import tqdm

        from experts.cxr_classification import cxr_tensor

        xs, ys = [], []
        for i in tqdm(range(n), desc="radiographs", leave=False):
            case = _phantom("cxr", seed0 + i, prevalence=0.4)
            xs.append(cxr_tensor(case.volumes["DX"], self.net_cfg))
            ys.append([float(case.truth["findings"][f]) for f in CXR_FINDINGS])
        return torch.stack(xs), torch.tensor(ys)

    def prepare_data(self) -> None:
        r = self.recipe
        self.train_x, self.train_y = self._set(TRAIN_SEED + self.seed * 1000, r.n_train)
        self.val_x, self.val_y = self._set(VAL_SEED, r.n_val)

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.transforms import RandAffine

        idx = rng.integers(len(self.train_x), size=self.recipe.batch_size)
        aug = RandAffine(prob=0.8, rotate_range=0.06, scale_range=0.06, translate_range=(8, 8), padding_mode="border")
        aug.set_random_state(seed=int(rng.integers(2**31)))
        x = torch.stack([torch.as_tensor(aug(self.train_x[i])) for i in idx])
        gain = torch.as_tensor(rng.uniform(0.9, 1.1, (len(idx), 1, 1, 1)), dtype=torch.float32)
        return (x * gain).clamp(0, 1), self.train_y[idx]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y)

    def _probs(self, model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([torch.sigmoid(model(x[i : i + 64])) for i in range(0, len(x), 64)]).numpy()

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        from monai.metrics import compute_roc_auc

        probs = self._probs(model, self.val_x)
        return {"macro_auroc": float(compute_roc_auc(torch.as_tensor(probs), self.val_y, average="macro"))}

    def calibrate(self, model: torch.nn.Module) -> dict[str, Any]:
        return {"thresholds": youden_thresholds(self._probs(model, self.val_x), self.val_y.numpy(), CXR_FINDINGS)}

    def evaluate_held_out(self, weights_root: str | None) -> dict[str, Any]:
        from experts.cxr_classification import CXRClassificationExpert

        return evaluate_cxr(CXRClassificationExpert(weights_root), self.recipe.n_test)

    def model_card(self, config: dict[str, Any]) -> str:
        from experts.model_cards import cxr_card

        return cxr_card(config)


def evaluate_cxr(expert, n_cases: int, seed0: int = TEST_SEED) -> dict[str, Any]:
    """Per-finding and macro AUROC, and accuracy of the calibrated yes/no, through ``expert.run`` on
    default phantoms (prevalence 0.3)."""
    from monai.metrics import compute_roc_auc

    probs, truth, correct = [], [], []
    for i in range(n_cases):
        case = _phantom("cxr", seed0 + i)
        res = expert.run(case.volumes["DX"])
        by = {f.label: f for f in res.findings}
        probs.append([by[f].probability for f in CXR_FINDINGS])
        truth.append([float(case.truth["findings"][f]) for f in CXR_FINDINGS])
        correct.append([by[f].present == bool(case.truth["findings"][f]) for f in CXR_FINDINGS])
    p, y = torch.tensor(probs), torch.tensor(truth)
    per = {f: round(float(compute_roc_auc(p[:, k], y[:, k])), 4) for k, f in enumerate(CXR_FINDINGS)}
    acc = np.mean(np.asarray(correct), axis=0)
    return {
        "n_cases": n_cases, "seed0": seed0,
        "macro_auroc": round(float(np.mean(list(per.values()))), 4),
        "auroc": per,
        "accuracy_at_threshold": {f: round(float(a), 4) for f, a in zip(CXR_FINDINGS, acc)},
        "positives": {f: int(y[:, k].sum()) for k, f in enumerate(CXR_FINDINGS)},
    }

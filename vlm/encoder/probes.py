"""Linear probes that score an encoder's features on held-out data: organ segmentation (a 1×1
convolution on the patch grid, logits upsampled to the label grid; Dice per organ) and multi-label
finding classification (logistic regression; AUROC per finding). The same probe runs on a student's
and on a teacher's features, so the two scores compare directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc

__all__ = ["segmentation_probe", "classification_probe", "dice_per_class"]

IGNORE = -100


def segmentation_probe(
    train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, test_labels: torch.Tensor,
    classes: list[int], steps: int = 300, lr: float = 5e-2, weight_decay: float = 1e-4, seed: int = 0,
) -> dict[str, float]:
    """Fit a linear per-position classifier on ``(N, C, h, w)`` features against ``(N, L, L)`` label maps.

    Label values not in ``classes`` (nor 0, background) are ignored. Returns ``mean_dice`` over the
    classes present in the test labels plus ``dice/<value>`` for each.
    """
    torch.manual_seed(seed)
    mu, sd = _moments(train_feats.float().transpose(0, 1).flatten(1).T)
    norm = lambda f: (f.float() - mu.view(1, -1, 1, 1)) / sd.view(1, -1, 1, 1)  # noqa: E731
    lut = torch.full((int(max(classes)) + 64,), IGNORE, dtype=torch.long)
    lut[0] = 0
    for k, v in enumerate(classes, start=1):
        lut[v] = k
    y_train = lut[train_labels.long().clamp(min=0)]
    probe = torch.nn.Conv2d(train_feats.shape[1], len(classes) + 1, 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    x_train = norm(train_feats)
    size = tuple(min(s, 4 * g) for s, g in zip(train_labels.shape[-2:], train_feats.shape[-2:]))
    if tuple(y_train.shape[-2:]) != size:  # fit at 4× the feature grid (faster); score at full label size
        y_train = F.interpolate(y_train[:, None].float(), size=size, mode="nearest")[:, 0].long()
    for _ in range(steps):
        logits = F.interpolate(probe(x_train), size=size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y_train, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = F.interpolate(probe(norm(test_feats)), size=test_labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    y_test = lut[test_labels.long().clamp(min=0)]
    dice = dice_per_class(pred, y_test, range(1, len(classes) + 1))
    out = {f"dice/{classes[k - 1]}": d for k, d in dice.items()}
    out["mean_dice"] = float(sum(dice.values()) / max(len(dice), 1))
    return out


def classification_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    weight_decay: float | None = None, steps: int = 200, grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0), folds: int = 3,
) -> dict[str, float]:
    """Logistic regression (L-BFGS, L2) on ``(N, D)`` features for ``(N, K)`` binary labels; returns
    ``mean_auroc`` and ``auroc/<k>`` per label column (columns with one class in test are skipped).

    ``weight_decay`` None: the L2 strength is chosen from ``grid`` by ``folds``-fold cross-validation on
    the training set alone (the usual linear-probe protocol), so wide and narrow features are both fairly
    regularised; the chosen value is returned as ``weight_decay``."""
    if weight_decay is None:
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
        parts = order.tensor_split(folds)  # exactly `folds` parts (chunk gives fewer, e.g. 2 for 4 items)
        best = (-1.0, grid[0])
        for wd in grid:
            scores = []
            for k in range(folds):
                held = torch.zeros(len(train_x), dtype=torch.bool)
                held[parts[k]] = True
                scores.append(_fit_score(train_x[~held], train_y[~held], train_x[held], train_y[held], wd, steps)["mean_auroc"])
            best = max(best, (sum(scores) / folds, wd))
        weight_decay = best[1]
    return {**_fit_score(train_x, train_y, test_x, test_y, weight_decay, steps), "weight_decay": weight_decay}


def _fit_score(train_x, train_y, test_x, test_y, weight_decay: float, steps: int) -> dict[str, float]:
    mu, sd = _moments(train_x.float())
    xtr, xte = (train_x.float() - mu) / sd, (test_x.float() - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], train_y.shape[1])
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lin(xtr), train_y.float()) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        scores = torch.sigmoid(lin(xte))
    out: dict[str, float] = {}
    for k in range(test_y.shape[1]):
        if 0 < test_y[:, k].sum() < len(test_y):
            out[f"auroc/{k}"] = float(compute_roc_auc(scores[:, k], test_y[:, k]))
    aucs = [v for v in out.values()]
    out["mean_auroc"] = float(sum(aucs) / max(len(aucs), 1))
    return out


def dice_per_class(pred: torch.Tensor, truth: torch.Tensor, classes) -> dict[int, float]:
    """Dice of each class over all pixels of the set (classes absent from ``truth`` are left out);
    pixels marked ``IGNORE`` in ``truth`` do not count."""
    valid = truth != IGNORE
    out = {}
    for k in classes:
        t = (truth == k) & valid
        if t.sum() == 0:
            continue
        p = (pred == k) & valid
        out[int(k)] = float(2 * (p & t).sum() / (p.sum() + t.sum()))
    return out


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.std(0).clamp(min=1e-6)

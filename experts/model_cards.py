"""``model_card.md`` text of the built-in experts, written from the numbers in ``config.json``."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ct_card", "mri_card", "cxr_card"]

_USE = (
    "## Intended use\n\n"
    "Demonstration of the m3 expert-calling pipeline on **synthetic phantom studies**. Not a medical device, "
    "not validated on patient data, **not for clinical use**. On real scans its outputs are meaningless.\n"
)


def _common(config: dict[str, Any], title: str, data: str, quality: str) -> str:
    tr = config["training"]
    rc = tr["recipe"]
    metrics = json.dumps(config.get("metrics", {}), indent=2)
    return (
        f"# {config['expert']} — {title}\n\n"
        f"Version `{config['version']}`. Weights: `model.safetensors` (float32); settings: `config.json`.\n\n"
        f"{_USE}\n"
        "## Training data\n\n"
        f"{data} Generated in memory by `data.phantoms.generate` with seeds {10_000 + 1000 * tr['seed']}…"
        f"{10_000 + 1000 * tr['seed'] + rc['n_train'] - 1} ({rc['n_train']} studies); validation seeds 20000…"
        f"{20_000 + rc['n_val'] - 1}; held-out test seeds 30000…{30_000 + rc['n_test'] - 1}.\n\n"
        "## Training\n\n"
        f"`m3 experts train {config['expert']} --steps {rc['steps']} --batch-size {rc['batch_size']} --lr {rc['lr']} --n-train {rc['n_train']}"
        f" --n-val {rc['n_val']} --n-test {rc['n_test']} --val-every {rc['val_every']}"
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in (tr.get("settings") or {}).items() if k in ("threads", "run_dir", "weights_root"))
        + ({True: " --bf16 on", False: " --bf16 off"}.get((tr.get("settings") or {}).get("bf16"), ""))
        + (f" --seed {tr['seed']}" if tr["seed"] else "")
        + "".join(f" --set '{k}={v}'" for k, v in (tr.get("overrides") or {}).items()) +
        f"{' --init-from <the previous weights folder>' if tr.get('init_from') else ''}` — {rc['steps']} steps, batch {rc['batch_size']}, AdamW with "
        f"one-cycle lr {rc['lr']}, seed {tr['seed']}, {tr['seconds']:.0f} s on CPU. Loss curve: `loss_curve.png`. "
        f"Last validation: {json.dumps(tr.get('final_validation', {}))}.\n\n"
        + (f"Continued (`--init-from`) from `{tr['init_from'].get('version')}`, itself trained with "
           f"{tr['init_from'].get('training', {}).get('recipe', {}).get('steps')} steps (its recipe: `training.init_from` in config.json).\n\n" if tr.get("init_from") else "")
        +
        "## Held-out metrics (measured by the training command, on the input grid)\n\n"
        f"{quality}\n\n```json\n{metrics}\n```\n"
    )


def ct_card(config: dict[str, Any]) -> str:
    net = config["network"]
    m = config.get("metrics", {})
    return _common(
        config,
        "CT organ and lesion segmentation",
        "Synthetic chest/abdomen CT phantoms in HU (128×128×64 voxels, ~3 mm, three contrast phases, noise "
        f"6–22 HU) with 9 organs and liver tumours, lung nodules, kidney cysts (lesion rate {config['training']['recipe'].get('lesion_rate', 0.9)} "
        "per type in the training phantoms).",
        f"Model: MONAI 3D UNet, channels {net['channels']}, inputs: wide and soft-tissue HU windows + left-right position, on a "
        f"{net['spacing_mm']} mm RAS grid, "
        f"sliding window {net['roi_size']}. Mean organ Dice **{m.get('mean_organ_dice')}** (bar 0.90), "
        f"mean lesion Dice **{m.get('mean_lesion_dice')}** (bar 0.75).",
    )


def mri_card(config: dict[str, Any]) -> str:
    net = config["network"]
    m = config.get("metrics", {})
    return _common(
        config,
        "brain tumour sub-region segmentation (BraTS roles)",
        "Synthetic brain MRI phantoms with four co-registered sequences (T1, T1c, T2, FLAIR) and a tumour "
        "with necrotic core, oedema and enhancing rim (128×128×64 voxels, ~1.8×1.8×2.7 mm; tumour in 80 % of cases).",
        f"Model: MONAI 3D UNet, 4 input sequences, channels {net['channels']}, on a {net['spacing_mm']} mm "
        f"RAS grid. Whole-tumour Dice **{m.get('whole_tumor_dice')}** (bar 0.85).",
    )


def cxr_card(config: dict[str, Any]) -> str:
    m = config.get("metrics", {})
    th = json.dumps(config.get("thresholds", {}))
    return _common(
        config,
        "chest radiograph multi-label classification",
        "Synthetic frontal chest radiographs (256×256 px) with cardiomegaly (cardiothoracic ratio > 0.5), pleural "
        "effusion, nodule, pneumothorax and consolidation, each drawn with probability 0.4; light random affine and "
        "gain augmentation.",
        f"Model: MONAI DenseNet (2D), {config['network'].get('image_size')} px input. Macro AUROC "
        f"**{m.get('macro_auroc')}** (bar 0.95) on held-out phantoms with prevalence 0.3. Yes/no thresholds (maximum Youden J on the validation "
        f"phantoms): `{th}`.",
    )

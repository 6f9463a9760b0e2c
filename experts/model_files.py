"""The on-disk layout of an expert's weights: ``experts/weights/<name>/`` holding ``model.safetensors``,
``config.json`` (network and preprocessing settings, calibrated thresholds, measured metrics), ``model_card.md``
and ``manifest.json`` (``experts.manifest``: checked at load when present)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from experts.base import ExpertError
from experts.manifest import MANIFEST_FILENAME, ManifestError, verify_manifest, write_manifest

__all__ = ["WEIGHTS_DIR", "weights_dir", "load_expert_files", "save_expert_files"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def weights_dir(name: str, root: str | Path | None = None) -> Path:
    """The folder of expert ``name`` (under ``root``, default the embedded bundle)."""
    return Path(root) / name if root is not None else WEIGHTS_DIR / name


def load_expert_files(name: str, root: str | Path | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of expert ``name``; ``ExpertError`` naming the expected path if missing."""
    from safetensors.torch import load_file

    folder = weights_dir(name, root)
    cfg_path, st_path = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, st_path):
        if not p.is_file():
            raise ExpertError(
                f"{name}: weights not found — expected {p}; train them with `m3 experts train {name}` "
                "or point the model folder at a copy of the bundle."
            )
    if (folder / MANIFEST_FILENAME).is_file():
        try:
            verify_manifest(folder)
        except ManifestError as exc:
            raise ExpertError(f"{name}: refused — {exc}") from None
    return json.loads(cfg_path.read_text()), load_file(str(st_path))


def save_expert_files(
    name: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor], card: str, root: str | Path | None = None,
    extras: dict[str, Path] | None = None,
) -> Path:
    """Write the files of expert ``name`` (plus ``extras``: file name → a file to copy in, e.g. the loss curve),
    then its manifest; returns the folder."""
    import shutil

    from safetensors.torch import save_file

    folder = weights_dir(name, root)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"), metadata={"expert": name})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "model_card.md").write_text(card)
    for filename, source in (extras or {}).items():
        shutil.copyfile(source, folder / filename)
    write_manifest(folder)
    return folder

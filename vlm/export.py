"""On-prem builds: ``m3 export`` turns a VILA-layout model folder into a checked, documented build folder.

A build holds ``config.json``, ``llm/`` (weights, tokenizer; optionally 2:4-masked weights plus the packed
masks, or int8 weight-only weights through torchao), ``vision_tower/``, ``mm_projector/``, optional
``experts/``, ``model_card.md`` (the build's own measured figures: parameters, bytes and a memory / hardware table;
the source model's card and an optional ``--model-card`` table follow, each labelled with where its figures come from),
``build.json`` (the options) and ``manifest.json`` (SHA-256 and size of every file). The server calls
:func:`verify_manifest` before loading a build.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from data.errors import M3Error
from experts.manifest import MANIFEST_FILENAME, ManifestError, write_manifest, verify_manifest  # noqa: F401 (re-exported)
from vlm.compress.build_files import finish_model_folder
from vlm.compress.depth import RECIPE_FILENAME, load_pruned_lm, save_pruned_lm
from vlm.compress.masks_io import MASKS_FILENAME, load_masks, save_masks
from vlm.compress.targets import apply_masks, prunable_linears

__all__ = ["ExportConfig", "ExportError", "ManifestError", "export_build", "write_manifest", "verify_manifest",
           "to_semi_structured", "int8_available", "MANIFEST_FILENAME"]

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REPO = Path(__file__).resolve().parents[1]


class ExportError(M3Error):
    """A source folder or an option that cannot make a build (message: what was expected, what was found, what to do)."""


@dataclass
class ExportConfig:
    """Options of ``m3 export``; saved in the build as ``build.json``."""

    masks: str | None = None  # a 2:4 mask file (m3 compress maskllm|oneshot) to apply to the LM weights
    dtype: str = "bfloat16"  # float32 | float16 | bfloat16 for the stored LM weights
    int8: bool = False  # int8 weight-only LM weights through torchao (the `m3[gpu]` extra); refused when it is absent
    model_card: str | None = None  # Markdown to include, labelled as measured elsewhere (e.g. benchmarks/results/compress.md)
    experts_dir: str | None = None  # a folder of expert bundles to ship with the build
    measure_memory: bool = True  # load the LM in a subprocess and record its peak resident memory
    context_tokens: int = 4096  # for the expected KV-cache size in the GPU table


def int8_available() -> tuple[bool, str]:
    """(True, "") when torchao int8 weight-only quantisation can run here, else (False, why)."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig  # noqa: F401
    except ImportError as exc:
        return False, (f"torchao is not installed ({exc}); install the GPU extra (pip install 'm3[gpu]', or pip install torchao) "
                       "to export int8 weight-only builds, or export without --int8")
    return True, ""


def export_build(src: str | Path, out: str | Path, config: ExportConfig | None = None) -> Path:
    """Write an on-prem build of the VILA-layout model folder ``src`` into ``out`` (created; must be empty)."""
    config = config or ExportConfig()
    src, out = Path(src), Path(out)
    _check_layout(src)
    if config.dtype not in _DTYPES:
        raise ExportError(f"Export dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}.")
    if config.model_card and not Path(config.model_card).is_file():
        raise ExportError(f"--model-card must be a Markdown file to include in the card, got {config.model_card}, which does not exist.")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"Build folder {out} is not empty; choose a new folder so no stale file ends up in the build.")
    if config.int8:  # refused before anything is written: a build without the int8 it was asked for is no build
        ok, why = int8_available()
        if not ok:
            raise ExportError(f"int8 export of {src} needs torchao: {why}.")
        if (src / "llm" / RECIPE_FILENAME).is_file():
            raise ExportError("int8 export of a depth-pruned LM is not supported; export it without --int8.")
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    shutil.copy2(src / "config.json", out / "config.json")
    for part in ("vision_tower", "mm_projector"):
        shutil.copytree(src / part, out / part)
    if config.experts_dir:
        shutil.copytree(config.experts_dir, out / "experts")
    lm = load_pruned_lm(src / "llm", dtype=torch.float32)
    params_dense = sum(p.numel() for p in lm.parameters())
    masks = None
    if config.masks:
        masks = load_masks(config.masks)
        apply_masks(lm, masks)
        notes.append(f"2:4 masks applied to {len(masks)} LM linear layers; stored packed in llm/{MASKS_FILENAME}")
    lm.to(_DTYPES[config.dtype])
    save_pruned_lm(lm, out / "llm")
    for item in (src / "llm").iterdir():  # tokenizer, chat template, generation config …
        if item.is_file() and not _is_weight_file(item) and not (out / "llm" / item.name).exists():
            shutil.copy2(item, out / "llm" / item.name)
    if masks is not None:
        save_masks(masks, out / "llm" / MASKS_FILENAME, method="export")
    int8_done = False
    if config.int8:
        _quantize_int8(out / "llm")
        int8_done = True
        notes.append("LM linear weights stored int8 weight-only (torchao Int8WeightOnlyConfig, per-row scales)")
    (out / "build.json").write_text(json.dumps({"export": asdict(config), "int8_applied": int8_done, "notes": notes}, indent=2))
    memory = _memory_table(out, lm, params_dense, masks, config)
    (out / "model_card.md").write_text(_model_card(src, config, notes, memory))
    finish_model_folder(out)  # files 0644 and manifest.json, last
    return out


def to_semi_structured(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> list[str]:
    """On a CUDA GPU, swap each masked LM linear's weight for ``torch.sparse.to_sparse_semi_structured``.

    Returns the names converted; layers the kernels cannot take (shape) stay dense. Needs CUDA.
    """
    layers = prunable_linears(model)
    if not torch.cuda.is_available() or layers[next(iter(masks))].weight.device.type != "cuda":
        raise ExportError("2:4 semi-structured kernels need the model on a CUDA GPU; move it with .cuda() first, "
                          "or serve the dense (masked) weights on CPU.")
    from torch.sparse import to_sparse_semi_structured

    converted = []
    for name in masks:
        linear = layers[name]
        rows, cols = linear.weight.shape
        if rows % 64 or cols % 128:  # the cuSPARSELt / CUTLASS minimum tile
            continue
        linear.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
        converted.append(name)
    return converted


def _check_layout(src: Path) -> None:
    missing = [p for p in ("config.json", "llm", "vision_tower", "mm_projector") if not (src / p).exists()]
    if missing:
        raise ExportError(f"{src} is not a VILA-layout model folder: missing {', '.join(missing)}. "
                          "Expected config.json, llm/, vision_tower/ and mm_projector/; point `m3 export` at a model folder.")
    if not (src / "llm" / "config.json").is_file():
        raise ExportError(f"{src / 'llm'} holds no config.json; expected a Hugging Face causal LM saved with save_pretrained.")


def _is_weight_file(path: Path) -> bool:
    return path.suffix in (".safetensors", ".bin") or path.name.endswith(".index.json") or path.name in ("config.json", RECIPE_FILENAME)


def _quantize_int8(llm_dir: Path) -> None:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    lm = AutoModelForCausalLM.from_pretrained(llm_dir, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    for weights in llm_dir.glob("model*.safetensors"):
        weights.unlink()
    lm.save_pretrained(llm_dir)


def _count_params(folder: Path) -> int:
    total = 0
    for file in folder.rglob("*.safetensors"):
        if file.name == MASKS_FILENAME:
            continue
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


_PROBE = """
import resource, sys, torch
from vlm.compress.depth import load_pruned_lm
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lm = load_pruned_lm(sys.argv[1]).eval()
with torch.no_grad():
    lm(input_ids=torch.zeros(1, 32, dtype=torch.long))
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _measure_peak_kib(llm_dir: Path) -> tuple[int, int] | None:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(llm_dir)], capture_output=True, text=True, timeout=300,
                          cwd=_REPO, env={"PYTHONPATH": str(_REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        log.warning("peak memory probe failed: %s", proc.stderr.strip().splitlines()[-1:] or proc.returncode)
        return None
    base, peak = proc.stdout.split()[-2:]
    return int(base), int(peak)


def _memory_table(out: Path, lm, params_llm: int, masks, config: ExportConfig) -> str:
    params_vision = _count_params(out / "vision_tower")
    params_proj = _count_params(out / "mm_projector")
    size = {part: sum(p.stat().st_size for p in (out / part).rglob("*") if p.is_file()) for part in ("llm", "vision_tower", "mm_projector")}
    cfg = lm.config
    layers, kv_heads = cfg.num_hidden_layers, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * layers * kv_heads * head_dim * config.context_tokens * 2  # K and V, bf16, batch 1
    linear = sum(m.weight.numel() for m in prunable_linears(lm).values())
    other = params_llm - linear + params_vision + params_proj
    rows = [("float32", 4 * (params_llm + params_vision + params_proj)), ("bfloat16 / float16", 2 * (params_llm + params_vision + params_proj)),
            ("int8 weight-only LM linears", linear * 1 + 4 * sum(m.weight.shape[0] for m in prunable_linears(lm).values()) + 2 * other),
            ("2:4 sparse float16 LM linears", int(linear * 2 * 0.5 * 1.125) + 2 * other)]
    lines = ["## Memory and hardware", "",
             f"Parameters: LM {params_llm:,}, vision tower {params_vision:,}, projector {params_proj:,}.",
             f"Bytes on disk: llm/ {size['llm']:,}, vision_tower/ {size['vision_tower']:,}, mm_projector/ {size['mm_projector']:,}.", ""]
    if config.measure_memory and (measured := _measure_peak_kib(out / "llm")):
        base, peak = measured
        lines.append(f"Measured peak CPU memory loading llm/ and running a 32-token forward: {peak / 1024:.0f} MiB resident "
                     f"({(peak - base) / 1024:.0f} MiB above the Python + torch baseline of {base / 1024:.0f} MiB).")
        lines.append("")
    lines += [f"| precision | expected GPU memory (weights + {config.context_tokens}-token bf16 KV cache + 20 % overhead) |", "|---|---|"]
    for name, weight_bytes in rows:
        lines.append(f"| {name} | {(weight_bytes + kv_bytes) * 1.2 / 2**20:.1f} MiB |")
    lines.append("")
    return "\n".join(lines)


def _model_card(src: Path, config: ExportConfig, notes: list[str], memory: str) -> str:
    """The build's card: its own measured figures first; figures measured on other runs (the source model's card,
    a ``--model-card`` file) only under a heading that names where they were measured."""
    card = ["# m3 on-prem build", "", "Built by `m3 export` from a VILA-layout model folder. The server verifies "
            "`manifest.json` (SHA-256 of every file) before loading.", "", memory,
            "## Build options", "", *(f"- {k}: {v}" for k, v in asdict(config).items() if k != "experts_dir"), *(f"- {n}" for n in notes), ""]
    source_card = next((c for c in (src / "model_card.md", src / "README.md") if c.is_file()), None)
    if source_card:
        card += [f"## Source model `{src.resolve()}` (measured there, not on this build)", "",
                 f"> Its card as written ({source_card.name}); any figure below was measured on that model, before this "
                 "build's options (masks, precision) were applied.", "", _demote(source_card.read_text().strip()), ""]
    if config.model_card:
        table = Path(config.model_card)
        card += [f"## Included from `{table}` (measured by that run, not on this build)", "", _demote(table.read_text().strip()), ""]
    return "\n".join(card)


def _demote(markdown: str) -> str:
    """Headings two levels down (``#`` → ``###``), so an included card stays inside its ``##`` section."""
    return re.sub(r"^(#{1,4}) ", r"##\1 ", markdown, flags=re.M)

"""What the stages start from: the phantom data of a recipe, the BPE tokenizer trained on its corpus, and
the freshly assembled VLM (RADIO-style tower + projector + a Llama-architecture LM from config).

The tokenizer's chat template is the project's template with tools rendered compactly (one line per
expert: its name and argument names): small models have short contexts, and the expert descriptions
cost hundreds of tokens a sample while telling a model trained on the expert conversations nothing new.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from data.errors import M3Error
from vlm.tokenizer import CHAT_TEMPLATE, TokenizerConfig
from vlm.train.recipes import ModelSpec, Recipe

__all__ = ["COMPACT_CHAT_TEMPLATE", "build_data", "build_tokenizer", "build_model", "expert_tool_schemas", "data_files", "TrainError",
           "ResumeConflict", "add_organ_conversations"]

log = logging.getLogger(__name__)

_TOOLS_FULL = CHAT_TEMPLATE[CHAT_TEMPLATE.index("{%- if tools -%}"):CHAT_TEMPLATE.index("{{- '<|end|>\\n' -}}")]
_TOOLS_COMPACT = r"""{%- if tools -%}
  {{- '\n\n# Experts (call: <tool_call>{"name": NAME, "arguments": {...}}</tool_call>)' -}}
  {%- for tool in tools -%}
    {%- set f = tool['function'] if tool['function'] is defined else tool -%}
    {%- set props = (f['parameters']['properties'] if f['parameters'] is defined and f['parameters']['properties'] is defined else {}) -%}
    {{- '\n' + f['name'] + '(' + (props | list | join(', ')) + ')' -}}
  {%- endfor -%}
{%- endif -%}
"""
COMPACT_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(_TOOLS_FULL, _TOOLS_COMPACT)


class TrainError(M3Error, RuntimeError):
    """A training run that cannot go on as asked (missing data or model, a stage out of order)."""


class ResumeConflict(TrainError):
    """A flag or recipe that disagrees with what a run folder (or one of its stages) was started or finished with."""


def data_files(data_dir: str | Path) -> dict[str, Path]:
    """``{"align_train": path, "ift_test": path, ...}`` of the LLaVA JSON files in ``data_dir``."""
    return {p.stem: p for p in sorted(Path(data_dir).glob("*_*.json"))}


def build_data(recipe: Recipe, data_dir: str | Path, *, progress: bool = True) -> Path:
    """Write the recipe's train and test data (``data.instructions.build_datasets``) unless a previous
    run wrote the same (``data_spec.json`` records what is there)."""
    from dataclasses import asdict

    from data.instructions import build_datasets

    data_dir = Path(data_dir)
    spec = json.dumps(asdict(recipe.data), sort_keys=True)
    marker = data_dir / "data_spec.json"
    if marker.is_file() and marker.read_text() == spec:
        return data_dir
    d = recipe.data
    for split, counts in (("train", d.train_cases), ("test", d.test_cases)):
        build_datasets(counts, data_dir, d.seed, split=split, questions_per_case=d.questions_per_case,
                       phantom_options=d.phantom_options, progress=progress)
    if d.organ_question_cases:
        add_organ_conversations(data_dir, d.organ_question_cases, d.seed, phantom_options=d.phantom_options)
    marker.write_text(spec)
    return data_dir


ORGAN_SEED_OFFSET = 3  # the extra organ conversations' phantoms come from a seed block of their own


def add_organ_conversations(data_dir: str | Path, n_cases: int, seed: int = 0, *, phantom_options: dict | None = None) -> int:
    """Append to ``medical-ift_train.json`` the expert conversations of ``n_cases`` more CT phantoms (seed
    block ``seed + ORGAN_SEED_OFFSET``) that ask about a single organ; returns how many were added.

    A CT case gets one expert conversation, and a quarter of those ask about one of nine organs: too few
    for a small model to copy the organ, and its side, from the question into the call and the answer."""
    import shutil

    from data.instructions import ClinicianMix, build_datasets
    from data.phantoms.labels import CT_LABELS, CT_ORGANS

    data_dir = Path(data_dir)
    target = data_dir / "medical-ift_train.json"
    if not target.is_file():
        raise TrainError(f"no {target}: build the recipe's data first.")
    tmp = data_dir / ".organ_conversations"
    shutil.rmtree(tmp, ignore_errors=True)
    # template organ questions only: the clinician mix has its own organ questions in the recipe's data already
    path = build_datasets({"ct": n_cases}, tmp, seed + ORGAN_SEED_OFFSET, stages=("medical-ift",), split="train",
                          phantom_options=phantom_options, clinician=ClinicianMix(per_case=0))["medical-ift"]
    organs = {CT_LABELS[v] for v in CT_ORGANS}
    keep = [r for r in json.loads(path.read_text())
            if any(c["name"] == "ct_segmentation" and c["arguments"].get("targets") in organs for c in r["meta"]["tool_calls"])]
    for r in keep:
        for image in [r["image"]] if "image" in r else r["images"]:
            if not (data_dir / image).exists():
                shutil.move(str(tmp / image), str(data_dir / image))
    records = json.loads(target.read_text()) + keep
    part = target.with_suffix(".json.tmp")
    part.write_text(json.dumps(records, ensure_ascii=False))
    part.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return len(keep)


def expert_tool_schemas() -> list[dict[str, Any]]:
    """Tool definitions of the built-in experts, read from their classes (no weights are loaded), in
    registry order: what the agent passes as ``tools=`` (``vlm.agent_context``)."""
    from vlm.agent_context import agent_context

    return agent_context().tools


def build_tokenizer(recipe: Recipe, data_dir: str | Path, out_dir: str | Path | None = None) -> Any:
    """Train the byte-level BPE tokenizer on the train split's text plus the prompt scaffolding."""
    from vlm.agent_context import agent_context
    from vlm.tokenizer import train_tokenizer

    texts = list(_corpus(data_dir))
    context = agent_context()
    scaffold = [context.system_prompt, json.dumps(context.tools)]
    cfg = TokenizerConfig(vocab_size=recipe.model.vocab_size, chat_template=COMPACT_CHAT_TEMPLATE, split_digits=recipe.model.split_digits)
    return train_tokenizer(scaffold * 50 + texts, out_dir, cfg)


def build_model(recipe: Recipe, tokenizer: Any) -> Any:
    """A fresh ``M3Model`` for ``recipe.model`` (the tower from ``encoder_path`` when that folder exists)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlm.agent_context import AGENT_SYSTEM_PROMPT
    from vlm.model import M3Config, M3Model
    from vlm.projector import build_projector
    from vlm.vision_tower import VisionTower

    m = recipe.model
    torch.manual_seed(recipe.seed)
    encoder = _encoder(m)
    tower = VisionTower(encoder, kind="m3_radio", image_size=m.image_size, hidden_size=encoder.config.hidden_size,
                        image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), select_feature="cls_patch")
    llm_cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=m.llm_hidden, intermediate_size=m.llm_intermediate,
        num_hidden_layers=m.llm_layers, num_attention_heads=m.llm_heads, num_key_value_heads=m.llm_kv_heads,
        max_position_embeddings=max(1024, 2 * m.max_length), tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    llm = LlamaForCausalLM(llm_cfg)
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    projector = build_projector(m.projector_type, encoder.config.hidden_size, m.llm_hidden, **m.projector_options)
    config = M3Config(projector_type=m.projector_type, projector_options=dict(m.projector_options), chat_format="m3",
                      system_prompt=AGENT_SYSTEM_PROMPT, version=f"{recipe.name}")
    return M3Model(config, tower, projector, llm, tokenizer)


def _encoder(m: ModelSpec) -> Any:
    from vlm.encoder import RadioConfig, RadioEncoder

    path = Path(m.encoder_path) if m.encoder_path else None
    if path is not None and not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path
    if path is not None and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        enc = RadioEncoder.from_pretrained(path)
        log.info("vision tower: trained encoder from %s (%d px input)", path, m.image_size)
        return enc
    log.info("vision tower: no trained encoder at %s; a fresh one trains with the VLM", m.encoder_path or "(none)")
    cfg = RadioConfig(patch_size=m.patch_size, hidden_size=m.vision_hidden, depth=m.vision_depth, num_heads=m.vision_heads,
                      num_registers=2, max_resolution=max(2 * m.image_size, 128), image_size=m.image_size, teachers=[])
    return RadioEncoder(cfg)


def _corpus(data_dir: str | Path) -> Iterable[str]:
    for name, path in data_files(data_dir).items():
        if not name.endswith("_train"):
            continue
        for rec in json.loads(path.read_text()):
            for turn in rec["conversations"]:
                yield turn["value"].replace("<image>\n", "")

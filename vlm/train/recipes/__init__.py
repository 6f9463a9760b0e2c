"""Training recipes: one dataclass per recipe (``micro``, ``tiny``, ``base``), each in its own file, or a
JSON / TOML file of the same fields.

A ``Recipe`` says what data to build, which model to assemble, and how each stage trains. It is saved
as ``recipe.json`` in the run folder and next to every checkpoint, so a checkpoint always says how it was
made, and that file trains again: ``m3 train all --recipe runs/x/recipe.json``.
"""

from __future__ import annotations

import importlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from data.errors import M3Error

__all__ = ["Recipe", "DataSpec", "ModelSpec", "StageSpec", "LoraSpec", "RECIPES", "get_recipe", "load_recipe", "recipe_from_dict",
           "RecipeError"]

RECIPES = ("micro", "tiny", "base")


class RecipeError(M3Error, ValueError):
    """A recipe name or field the pipeline cannot use."""


@dataclass
class DataSpec:
    """Phantom cases per kind for each split; ``questions_per_case`` VQA records per case (ift);
    ``organ_question_cases`` more CT cases whose expert conversation asks about one organ are added to
    the medical-ift training data (``vlm.train.build.add_organ_conversations``)."""

    train_cases: dict[str, int] = field(default_factory=lambda: {"ct": 8, "mri": 8, "cxr": 8})
    test_cases: dict[str, int] = field(default_factory=lambda: {"ct": 3, "mri": 3, "cxr": 3})
    questions_per_case: int = 4
    seed: int = 0
    phantom_options: dict[str, dict] = field(default_factory=dict)
    overlay_stand_in: bool = True  # tool turns of mask experts carry a picture, as the agent's overlay does
    organ_question_cases: int = 0


@dataclass
class ModelSpec:
    """The VLM to assemble: RADIO-style tower + projector + a Llama-architecture LM from config.

    image_size: tower input side in px (a multiple of 2 × patch_size keeps the 2×2 merge exact);
    encoder_path: a trained ``vlm.encoder`` folder to start the tower from ("" or missing: fresh);
    projector_options: e.g. ``{"budget": 16}`` for ``token_merge``.
    """

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    encoder_path: str = "vlm/encoder/weights"
    projector_type: str = "mlp_downsample"
    projector_options: dict[str, Any] = field(default_factory=dict)
    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 2
    llm_kv_heads: int = 2
    llm_intermediate: int = 128
    vocab_size: int = 1024
    max_length: int = 384  # tokens per training sample (longer samples are cut)
    split_digits: bool = False  # tokenizer: one token per digit
    weights_dtype: str = "float16"  # dtype of the written checkpoint (training runs in float32)


@dataclass
class LoraSpec:
    """peft LoRA on the LM's attention and MLP projections (merged into the weights at stage end)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class StageSpec:
    """How one stage (or one phase of a stage) trains.

    train: parts that learn, among "projector", "llm", "tower"; lora: LoRA on the LM instead of full
    fine-tuning (only when "llm" is in ``train``); mix: data file stem → sampling weight
    (``align``, ``ift``, ``medical-ift``); steps of ``batch_size`` samples.
    """

    steps: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    train: tuple[str, ...] = ("projector", "llm")
    lora: LoraSpec | None = None
    mix: dict[str, float] = field(default_factory=lambda: {"align": 1.0})
    checkpoint_every: int = 10
    log_every: int = 5
    grad_clip: float = 1.0
    max_chunks: int = 3  # a batch runs as up to this many length-sorted pieces (less padding; same gradient)
    measurement_copies: int = 0  # extra copies of each expert conversation with re-drawn mL / mm values (read, not recall)
    leave_out: dict[str, tuple[str, ...]] = field(default_factory=dict)  # mix source → image kinds not sampled from it here


@dataclass
class Recipe:
    """A whole training run. ``stages`` keys: ``align_projector``, ``align``, ``ift``, ``medical-ift``."""

    name: str = "custom"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    stages: dict[str, StageSpec] = field(default_factory=dict)
    vision_stage: bool = False  # train stage 1 in the run (`<out>/vision`); False: the tower starts from model.encoder_path
    vision: dict[str, Any] = field(default_factory=dict)  # stage-1 settings: VisionStageConfig fields (steps, n_ct_cases, ...)
    mixed_precision: str = "bf16"  # accelerate mixed precision: "no" | "bf16" | "fp16"
    threads: int = 2
    seed: int = 0
    eval_limit: int = 0  # examples per eval task after training (0: all of the test split)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=list) + "\n"

    def save(self, folder: str | Path) -> Path:
        """Write ``recipe.json`` into ``folder``."""
        path = Path(folder) / "recipe.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (a module of this package defining ``RECIPE``)."""
    if name not in RECIPES:
        raise RecipeError(f"recipe must be one of {RECIPES}, got {name!r}; add vlm/train/recipes/{name}.py to define a new one.")
    return importlib.import_module(f"vlm.train.recipes.{name}").RECIPE()


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name (``micro``, ``tiny``, ``base``) or a recipe file: JSON (e.g. a run's saved
    ``recipe.json``) or TOML with the fields of :class:`Recipe` (missing fields keep their defaults). A file with
    ``extends = "micro"`` (a name or a file path) changes only the fields it names, nested tables field by field."""
    text = str(name_or_path)
    if text in RECIPES:
        return get_recipe(text)
    path = Path(text)
    if not path.is_file():
        raise RecipeError(f"--recipe must be a built-in recipe {RECIPES} or a recipe file (.json or .toml), got {text!r}, "
                          "which is neither; pass a name, or the path of a file such as a run's recipe.json.")
    try:
        data = tomllib.loads(path.read_text()) if path.suffix.lower() == ".toml" else json.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise RecipeError(f"recipe file {path} must be valid {kind}; reading it failed: {exc}. Fix the file or start from a "
                          "run's saved recipe.json.") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold an object of recipe fields, got {type(data).__name__}.")
    base = data.pop("extends", None)
    if base is not None:  # a recipe (name or file) whose fields this file changes, nested tables field by field
        parent = str(path.parent / base) if str(base) not in RECIPES and not Path(base).is_absolute() else str(base)
        data = _merge(json.loads(load_recipe(parent).to_json()), data)
    return recipe_from_dict(data, source=str(path))


def _merge(base: dict[str, Any], changes: dict[str, Any], depth: int = 0, where: str = "") -> dict[str, Any]:
    """``base`` with ``changes``: the sections (data, model, vision, stages, each stage, its lora) field by field;
    a value that is itself a table (a mix, case counts) is replaced whole."""
    out = dict(base)
    for key, value in changes.items():
        section = depth == 0 or (where == "stages" and depth == 1) or (where.startswith("stages.") and key == "lora")
        if section and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, depth + 1, f"{where}.{key}" if where else key)
        else:
            out[key] = value
    return out


def recipe_from_dict(data: dict[str, Any], *, source: str = "recipe") -> Recipe:
    """Rebuild a ``Recipe`` from its JSON form (``recipe.json``); an unknown field is an error (a typo would
    otherwise train with the default silently)."""
    return _build(Recipe, data, source)


def _build(cls: Any, data: dict[str, Any], source: str = "recipe") -> Any:
    nested = {"data": DataSpec, "model": ModelSpec, "lora": LoraSpec}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(f"{source}: {cls.__name__} fields must be among {sorted(known)}, got unknown {unknown}; "
                          "fix the spelling or remove them.")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "stages":
            value = {k: _build(StageSpec, v, f"{source} stages.{k}") for k, v in value.items()}
        elif f.name in nested and value is not None:
            value = _build(nested[f.name], value, f"{source} {f.name}")
        elif f.name in ("train", "target_modules"):
            value = tuple(value)
        elif f.name == "leave_out":
            value = {k: tuple(v) for k, v in value.items()}
        kwargs[f.name] = value
    return cls(**kwargs)

"""A training run's folder: the recipe it trains (``<out>/recipe.json``), the commands that worked on it
(``<out>/invocations.json``), the data and fresh model it starts from (``prepare``), and where each stage's
finished model lies (``stage_final``, ``previous_model``). The stages and the whole pipeline
(``vlm.train.pipeline``) both read it, so neither imports the other's module.

Resume and rerun rules (one convention for every stage, stage 1 included):

* a stage with a checkpoint of an earlier, unfinished invocation continues only with ``--resume``;
* ``--resume`` reads the run's saved ``recipe.json`` (no need to repeat ``--recipe`` or ``--steps``); a flag that
  disagrees with what a stage was started or finished with is refused (``ResumeConflict``), never applied silently;
* a finished stage is skipped when asked again with the same settings; ``--force`` trains it again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from vlm.train.build import ResumeConflict, TrainError, build_data, build_model, build_tokenizer
from vlm.train.recipes import Recipe, recipe_from_dict
from vlm.train.stages import STAGE_PHASES

__all__ = ["prepare", "stage_final", "previous_model", "open_run", "save_run_recipe", "ResumeConflict", "record_invocation",
           "invocations", "command_line", "vision_result", "RUN_RECIPE"]

RUN_RECIPE = "recipe.json"
_INVOCATIONS = "invocations.json"
_PREVIOUS = {"ift": "align", "medical-ift": "ift"}
# Recipe parts a run is tied to once it has started: changing them mid-run mixes two experiments.
_RUN_FIELDS = ("data", "model", "seed", "mixed_precision")


def prepare(recipe: Recipe, out: str | Path, *, encoder: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Build the recipe's data (``<out>/data``) and its freshly assembled model (``<out>/init``: trained
    tokenizer, tower, projector, LM from config); returns the model folder.

    The tower starts from ``encoder`` when given, else from the stage-1 result in ``<out>/vision`` when there is
    one, else from ``recipe.model.encoder_path`` ("" : a fresh tower). A recipe with ``vision_stage`` needs one
    of the first two. ``recipe.model.encoder_path`` is set to the encoder used (so saved recipes say it)."""
    out = Path(out)
    build_data(recipe, out / "data", progress=progress)
    chosen = _choose_encoder(recipe, out, encoder)
    recipe.model.encoder_path = chosen
    init = out / "init"
    marker = init / "encoder.json"  # which encoder the tower started from, by content (a run folder may move)
    wanted = {"path": chosen, "sha256": _fingerprint(chosen)}
    if (init / "config.json").is_file() and force:
        shutil.rmtree(init)
    if (init / "config.json").is_file():
        built = json.loads(marker.read_text()) if marker.is_file() else wanted
        if built["sha256"] == wanted["sha256"]:
            return init
        raise ResumeConflict(f"{init} was assembled with the encoder {built['path'] or '(fresh tower)'}; this run asks for "
                             f"{chosen or '(fresh tower)'}, whose weights differ. Add --force to assemble it again and retrain "
                             "align (and the stages after it), or choose another --out.")
    tmp = out / "init.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = build_tokenizer(recipe, out / "data")
    model = build_model(recipe, tokenizer)
    model.save_pretrained(tmp)
    recipe.save(tmp)
    (tmp / "encoder.json").write_text(json.dumps(wanted) + "\n")
    os.replace(tmp, init)
    return init


def _fingerprint(encoder_path: str) -> str:
    """sha256 of an encoder folder's weights ("" for none: a fresh tower)."""
    import hashlib

    if not encoder_path:
        return ""
    path = Path(encoder_path)
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path
    weights = path / "model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else ""


def vision_result(out: str | Path) -> Path | None:
    """The finished stage-1 encoder of run folder ``out`` (None when stage 1 has not finished there)."""
    vision = Path(out) / "vision"
    enc = vision / "encoder"
    return enc if (vision / "done.json").is_file() and (enc / "model.safetensors").is_file() else None


def stage_final(out: str | Path, stage: str) -> Path | None:
    """The finished model of ``stage`` in run folder ``out`` (None when it has not finished)."""
    phase_dir = Path(out) / stage / STAGE_PHASES[stage][-1]
    final = phase_dir / "final"
    return final if (phase_dir / "done.json").is_file() and (final / "config.json").is_file() else None


def previous_model(out: str | Path, stage: str) -> Path:
    """The model ``stage`` starts from: the previous stage's result in ``out``."""
    prev = _PREVIOUS[stage]
    found = stage_final(out, prev)
    if found is None:
        raise TrainError(f"`m3 train {stage}` starts from the {prev} result in {out}, which is not there; "
                         f"run `m3 train {prev}` with the same --out first, or pass --init MODEL_DIR.")
    return found


def open_run(out: str | Path, recipe: Recipe | None, *, resume: bool) -> Recipe:
    """The recipe an invocation trains in run folder ``out``.

    ``resume``: the run's saved ``recipe.json`` (``recipe``, when given, must agree with it on data, model, seed
    and precision). Otherwise ``recipe``, which must agree in the same way with a run already in ``out``.
    Raises ``ResumeConflict`` / ``TrainError`` with what to do."""
    out = Path(out)
    saved_path = out / RUN_RECIPE
    saved = recipe_from_dict(json.loads(saved_path.read_text()), source=str(saved_path)) if saved_path.is_file() else None
    if resume and saved is None and recipe is None:
        raise TrainError(f"--resume continues the run in {out}, but {saved_path} is not there; start the run without --resume "
                         "(with --recipe NAME|FILE) or point --out at an existing run folder.")
    if saved is not None and recipe is not None:
        differ = _differences(asdict(saved), asdict(recipe), _RUN_FIELDS, ignore=("model.encoder_path",))
        if differ:
            raise ResumeConflict(f"{out} holds a run of recipe {saved.name!r} (its {saved_path}); the recipe given here differs in "
                                 f"{'; '.join(differ[:6])}. Drop --recipe to train with the run's own (and --resume to continue a "
                                 "killed stage), or choose another --out.")
    if resume and saved is not None:
        if recipe is not None:
            saved.threads = recipe.threads  # a runtime setting: the machine may differ after a restart
        return saved
    return recipe if recipe is not None else saved  # type: ignore[return-value]


def save_run_recipe(out: str | Path, recipe: Recipe, stages: tuple[str, ...] | None = None) -> Path:
    """Write ``<out>/recipe.json``: ``recipe`` whole, or (``stages``) only those stages' settings updated in the
    saved one, so a stage run alone does not rewrite what the others trained with."""
    out = Path(out)
    path = out / RUN_RECIPE
    if stages is not None and path.is_file():
        merged = recipe_from_dict(json.loads(path.read_text()), source=str(path))
        for stage in stages:
            if stage == "vision":
                merged.vision, merged.vision_stage = dict(recipe.vision), recipe.vision_stage
            for phase in STAGE_PHASES.get(stage, ()):
                merged.stages[phase] = recipe.stages[phase]
        merged.model.encoder_path = recipe.model.encoder_path or merged.model.encoder_path
        merged.threads = recipe.threads
        recipe = merged
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (RUN_RECIPE + ".tmp")
    tmp.write_text(recipe.to_json())
    os.replace(tmp, path)
    return path


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as typed: ``m3 train all --recipe micro --out runs/m`` (quoted where needed)."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    prog = "m3" if Path(argv[0]).name in ("m3", "main.py", "__main__.py") or argv[0].endswith("app/main.py") else Path(argv[0]).name
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]])


@contextmanager
def record_invocation(out: str | Path, command: str) -> Iterator[dict[str, Any]]:
    """Append ``command`` to ``<out>/invocations.json`` before the work starts (so a killed invocation is on
    record) and its wall time and outcome after; yields the entry."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = invocations(out)
    entry = {"command": command, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": None,
             "outcome": "running"}
    entries.append(entry)
    _write_invocations(out, entries)
    t0 = time.perf_counter()
    try:
        yield entry
    except BaseException as exc:
        entry["outcome"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {type(exc).__name__}"
        raise
    else:
        entry["outcome"] = "finished"
    finally:
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        _write_invocations(out, entries)


def invocations(out: str | Path) -> list[dict[str, Any]]:
    """Every command recorded for run folder ``out``, oldest first; one still marked ``running`` that is not the
    current process's was killed (its outcome reads ``killed or lost``)."""
    path = Path(out) / _INVOCATIONS
    if not path.is_file():
        return []
    entries = json.loads(path.read_text())
    for e in entries:
        if e.get("outcome") == "running" and e.get("pid") not in (None, os.getpid()):
            e["outcome"] = "killed or lost (no end recorded)"
    return entries


def _write_invocations(out: Path, entries: list[dict[str, Any]]) -> None:
    for e in entries:
        if e.get("outcome") == "running":
            e.setdefault("pid", os.getpid())
    tmp = out / (_INVOCATIONS + ".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, out / _INVOCATIONS)


def _differences(saved: dict[str, Any], given: dict[str, Any], keys: tuple[str, ...], ignore: tuple[str, ...] = ()) -> list[str]:
    """``["model.llm_hidden 64 → 128", ...]`` for the fields under ``keys`` that differ."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if where in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        elif _plain(a) != _plain(b):
            out.append(f"{where} {a!r} (saved) vs {b!r} (given)")

    for key in keys:
        walk(saved.get(key), given.get(key), key)
    return out


def _plain(value: Any) -> Any:
    """JSON form, so a tuple and the list it was saved as compare equal."""
    return json.loads(json.dumps(value, default=list))


def _choose_encoder(recipe: Recipe, out: Path, encoder: str | Path | None) -> str:
    if encoder:
        path = Path(encoder)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise TrainError(f"--encoder must be a trained encoder folder (config.json + model.safetensors, as "
                             f"`m3 train vision` writes to <out>/vision/encoder), got {path}, which lacks them.")
        return str(path.resolve())
    found = vision_result(out)
    if found is not None:
        return str(found.resolve())
    if recipe.vision_stage:
        raise TrainError(f"recipe {recipe.name!r} trains stage 1 (vision) first and {out / 'vision'} holds no finished encoder; "
                         f"run `m3 train vision --recipe {recipe.name} --out {out}` (or `m3 train all`), or pass --encoder PATH "
                         "to start from a trained one.")
    return recipe.model.encoder_path

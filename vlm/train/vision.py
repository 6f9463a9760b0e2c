"""Stage 1 — ``m3 train vision``: multi-teacher distillation of the RADIO-style encoder.

Teachers (see :mod:`vlm.train.teachers`): the CT segmentation expert (``seg``), the CXR classifier
(``cxr``) and a contrastive image–caption model trained here (``clip``); a teacher whose expert weights
are absent is left out with a warning. Targets are computed once on phantom images and cached;
feature targets are PHI-S standardised per teacher (``normalisation="plain"`` for the baseline).
Losses: cosine distance on summaries; MSE on standardised features (or AM-RADIO's 0.9·cos + 0.1·
smooth-L1). Multi-resolution (each step at every resolution in ``resolutions``) and 2×2 mosaic
options. ``m3 train vision --recipe NAME|FILE --out RUN`` writes ``RUN/vision/`` (``encoder/``, ``checkpoint.pt``,
``config.json``, ``metrics.json``, ``model_card.md``); ``--resume`` continues from the last (atomic) checkpoint
with the same settings, ``--force`` trains a finished stage again (the resume rules of ``vlm.train.run_folder``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlm.encoder import RadioConfig, RadioEncoder, TeacherSpec
from vlm.phis import FeatureMoments, PHISStandardizer, PlainStandardizer
from vlm.train.build import ResumeConflict, TrainError
from vlm.train.console import console
from vlm.train.teachers import TeacherTargets

__all__ = ["VisionStageConfig", "run_vision_stage", "vision_config", "check_vision_settings", "add_config_flags", "vision_flag_values",
           "distillation_loss", "FIELD_HELP"]

log = logging.getLogger(__name__)


@dataclass
class VisionStageConfig:
    """Everything stage 1 needs; saved as ``config.json`` in ``output_dir``. CLI flags map onto fields."""

    output_dir: str = "runs/vision"
    data_dir: str = ""  # cached phantom images + teacher targets (default: <output_dir>/data)
    teachers: tuple[str, ...] = ("seg", "cxr", "clip")
    teacher_weights: dict[str, float] = field(default_factory=lambda: {"seg": 1.0, "cxr": 1.0, "clip": 1.0})
    n_ct_cases: int = 60
    n_cxr_cases: int = 500
    slices_per_ct: int = 12
    held_out_fraction: float = 0.2
    clip_steps: int = 300
    image_size: int = 224  # phantom images and cached teacher targets (grid = image_size / patch_size)
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    num_registers: int = 4
    patch_size: int = 16
    resolutions: tuple[int, ...] = (224,)  # several → multi-resolution training against all teachers
    mosaic: float = 0.0  # probability that a batch is 2×2 mosaics of four images
    normalisation: str = "phis"  # phis | plain
    feature_loss: str = "mse"  # mse | cos_smoothl1 (AM-RADIO)
    summary_weight: float = 1.0
    feature_weight: float = 1.0
    steps: int = 1200
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    checkpoint_every: int = 100
    threads: int = 1  # one thread: on a shared CPU, more threads spin-wait on each other
    seed: int = 0
    save_encoder_to: str = ""  # also write the final encoder folder here (e.g. vlm/encoder/weights)
    evaluate: bool = True
    featsharp_steps: int = 0  # > 0: train and evaluate the FeatSharp upsampler after distillation
    compare_plain: bool = False  # also train with plain normalisation on the same budget (model card table)

    def __post_init__(self) -> None:
        self.teachers, self.resolutions = tuple(self.teachers), tuple(self.resolutions)  # a recipe file gives lists
        if self.normalisation not in ("phis", "plain"):
            raise ValueError(f"normalisation must be 'phis' or 'plain', got {self.normalisation!r}.")
        if self.feature_loss not in ("mse", "cos_smoothl1"):
            raise ValueError(f"feature_loss must be 'mse' or 'cos_smoothl1', got {self.feature_loss!r}.")
        if not 0 <= self.mosaic <= 1:
            raise ValueError(f"mosaic must be a probability in [0, 1], got {self.mosaic}.")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size must be a multiple of patch_size {self.patch_size}, got {self.image_size}.")
        for r in self.resolutions:
            if r % (2 * self.patch_size):
                raise ValueError(f"every resolution must be a multiple of 2 × patch_size = {2 * self.patch_size}, got {r}.")


FIELD_HELP = {
    "output_dir": "stage folder (with m3 train vision: <out>/vision)",
    "data_dir": "cached phantom images and teacher targets (empty: <stage folder>/data)",
    "teachers": "teachers to distil from: seg (CT expert), cxr (radiograph expert), clip (contrastive model trained here)",
    "teacher_weights": "loss weight per teacher, e.g. seg=1,cxr=1,clip=0.5",
    "n_ct_cases": "CT phantoms (each gives slices_per_ct axial slices)",
    "n_cxr_cases": "radiograph phantoms",
    "slices_per_ct": "axial slices taken from each CT phantom",
    "held_out_fraction": "share of cases kept out of training for the end-of-run probes",
    "clip_steps": "training steps of the contrastive (clip) teacher",
    "image_size": "side in px of the phantom images and cached teacher targets (a multiple of patch_size)",
    "hidden_size": "encoder width",
    "depth": "encoder blocks",
    "num_heads": "attention heads",
    "num_registers": "register tokens",
    "patch_size": "patch side in px",
    "resolutions": "training resolutions in px; several: each step at every one (multiples of 2 x patch_size)",
    "mosaic": "probability that a batch is 2x2 mosaics of four images",
    "normalisation": "teacher feature standardisation: phis (PHI-S) | plain",
    "feature_loss": "mse | cos_smoothl1 (AM-RADIO)",
    "summary_weight": "weight of the summary (cosine) loss",
    "feature_weight": "weight of the feature loss",
    "steps": "distillation steps",
    "batch_size": "images per step",
    "lr": "peak learning rate (AdamW, cosine schedule)",
    "weight_decay": "AdamW weight decay",
    "warmup_fraction": "share of steps spent warming up",
    "checkpoint_every": "steps between checkpoints",
    "threads": "CPU threads",
    "seed": "seed of data, initialisation and batches",
    "save_encoder_to": "also write the final encoder (float16) here, e.g. vlm/encoder/weights (empty: only in the stage folder)",
    "evaluate": "score linear probes and teacher fidelity on held-out phantoms after training",
    "featsharp_steps": "> 0: train and score the FeatSharp upsampler after distillation",
    "compare_plain": "also train with plain normalisation on the same budget (model card table)",
}
# Settings a recipe gives stage 1 from its model and run settings unless its `vision` entry names them.
_FROM_RECIPE = {"hidden_size": "model.vision_hidden", "depth": "model.vision_depth", "num_heads": "model.vision_heads",
                "patch_size": "model.patch_size", "seed": "seed"}
# Fields that do not change the trained encoder: free to differ when a stage resumes or is asked again.
_RUNTIME_FIELDS = ("output_dir", "data_dir", "threads", "checkpoint_every", "save_encoder_to", "evaluate", "featsharp_steps", "compare_plain")


def vision_config(recipe, out: str | Path, **overrides) -> VisionStageConfig:
    """Stage 1's config for ``recipe`` in run folder ``out`` (``<out>/vision``): the encoder size from
    ``recipe.model``, then ``recipe.vision``, then ``overrides`` (None values ignored)."""
    fields_ = {f.name for f in fields(VisionStageConfig)}
    settings = {**recipe.vision, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(settings) - fields_)
    if unknown:
        raise TrainError(f"recipe {recipe.name!r} `vision` settings must be VisionStageConfig fields ({sorted(fields_)}), got {unknown}.")
    base = {name: _recipe_value(recipe, path) for name, path in _FROM_RECIPE.items()}
    base["threads"] = recipe.threads or 1
    return VisionStageConfig(**{**base, **settings, "output_dir": str(Path(out) / "vision")})


def _recipe_value(recipe, path: str):
    """``recipe.model.vision_hidden`` for ``"model.vision_hidden"``."""
    value = recipe
    for part in path.split("."):
        value = getattr(value, part)
    return value


def run_vision_stage(config: VisionStageConfig, *, resume: bool = False, force: bool = False, commands: list[dict] | None = None) -> Path:
    """Run stage 1 end to end (data → teachers → distillation → probes → model card); returns the
    folder of the trained encoder (``<output_dir>/encoder``).

    A stage folder holding a checkpoint continues only with ``resume`` and the same training settings; a
    finished one is returned as it is (same settings) or refused (others), unless ``force`` trains it again.
    ``commands``: the run's invocations, listed in the model card."""
    from accelerate import Accelerator

    from vlm.encoder.evaluate import evaluate_stage, write_outputs
    from vlm.train.teachers import load_or_build_targets

    torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    done = _check_vision_state(config, out, resume=resume, force=force)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    ckpt = out / "checkpoint.pt"
    resumed_at = int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"]) if ckpt.is_file() else 0
    data, targets = load_or_build_targets(config)
    encoder, history = train_student(config, data, targets, accelerator, out)
    enc_dir = encoder.save_pretrained(out / "encoder")
    if config.save_encoder_to:  # the shipped copy in float16 (loads back into float32)
        encoder.save_pretrained(config.save_encoder_to, dtype=torch.float16)
    metrics = evaluate_stage(config, encoder, data, targets) if config.evaluate else {}
    if config.compare_plain and config.normalisation == "phis":
        plain_cfg = VisionStageConfig(**{**asdict(config), "output_dir": str(out / "plain"), "normalisation": "plain",
                                         "compare_plain": False, "featsharp_steps": 0, "save_encoder_to": "",
                                         "data_dir": config.data_dir or str(out / "data")})
        plain_encoder, _ = train_student(plain_cfg, data, targets, accelerator, out / "plain")
        metrics["plain"] = evaluate_stage(plain_cfg, plain_encoder, data, targets, probes_only=True)
    write_outputs(config, out, history, metrics, encoder_dirs=[enc_dir] + ([Path(config.save_encoder_to)] if config.save_encoder_to else []),
                  commands=commands)
    (out / "done.json").write_text(json.dumps({"steps": config.steps, "loss_first": _loss(history[:1]), "loss_last": _loss(history[-1:]),
                                               "seconds_total": round(sum(h.get("seconds", 0.0) for h in history), 1),
                                               "status": f"resumed at step {resumed_at}" if resumed_at else "trained"}) + "\n")
    return enc_dir


def _loss(rows: list[dict]) -> float | None:
    key = next((k for k in (rows[0] if rows else {}) if k.startswith("loss@")), None)
    return float(rows[0][key]) if key else None


def _check_vision_state(config: VisionStageConfig, out: Path, *, resume: bool, force: bool) -> Path | None:
    """Apply the resume rules to stage folder ``out``; returns the finished encoder to reuse, or None to train."""
    import shutil

    saved_cfg = out / "config.json"
    has_ckpt, finished = (out / "checkpoint.pt").is_file(), (out / "done.json").is_file() and (out / "encoder" / "model.safetensors").is_file()
    if force and out.exists():
        if has_ckpt or finished:
            console.info("   --force: discarding %s (checkpoint and encoder) and training stage 1 again", out)
        keep_data = saved_cfg.is_file() and _same_data(json.loads(saved_cfg.read_text()), asdict(config))
        for child in out.iterdir():
            if child.name == "data" and keep_data:
                continue  # the phantoms and teacher targets of the same data settings are reused
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return None
    if not (has_ckpt or finished):
        return None
    check_vision_settings(config, out)
    if finished:
        console.info("   vision: already finished with these settings (%s); skipping. Add --force to train it again.", out / "encoder")
        done = json.loads((out / "done.json").read_text())
        (out / "done.json").write_text(json.dumps({**done, "status": "already finished (skipped)"}) + "\n")
        return out / "encoder"
    if not resume:
        raise TrainError(f"{out} already holds a stage-1 checkpoint of an earlier, unfinished run; pass --resume to continue it, "
                         "--force to discard it and start again, or choose another --out folder.")
    return None


def check_vision_settings(config: VisionStageConfig, out: str | Path) -> None:
    """Refuse (``ResumeConflict``) when stage folder ``out`` holds a checkpoint or a finished encoder made with
    training settings other than ``config``'s (how often it saves, threads, evaluation may differ)."""
    out = Path(out)
    saved_cfg = out / "config.json"
    finished = (out / "done.json").is_file()
    if not saved_cfg.is_file() or not (finished or (out / "checkpoint.pt").is_file()):
        return
    differ = _differences(json.loads(saved_cfg.read_text()), asdict(config))
    if differ:
        named = ", ".join(sorted("--" + d.split()[0].replace("_", "-") for d in differ))
        raise ResumeConflict(f"vision: its {'finished encoder' if finished else 'checkpoint'} in {out} was made with other settings "
                             f"than this invocation asks: {'; '.join(differ)}. To continue or keep it, drop {named} (a resume reads "
                             "the run's recipe.json); to train stage 1 again with the new settings, add --force; or choose another --out.")


def _differences(saved: dict, given: dict) -> list[str]:
    plain = lambda v: json.loads(json.dumps(v, default=list))  # noqa: E731  (a tuple and its saved list compare equal)
    return [f"{k} {saved[k]!r} → {plain(v)!r}" for k, v in given.items()
            if k in saved and k not in _RUNTIME_FIELDS and plain(saved[k]) != plain(v)]


def _same_data(saved: dict, given: dict) -> bool:
    keys = ("n_ct_cases", "n_cxr_cases", "slices_per_ct", "held_out_fraction", "clip_steps", "image_size", "patch_size", "seed", "teachers")
    return all(json.dumps(saved.get(k), default=list) == json.dumps(given.get(k), default=list) for k in keys)


def build_standardizers(targets: dict[str, TeacherTargets], train_mask: torch.Tensor, kind: str) -> dict[str, PHISStandardizer]:
    """Per teacher, PHI-S (or plain) fitted on its training-image patch features (streamed moments)."""
    out = {}
    cls = PHISStandardizer if kind == "phis" else PlainStandardizer
    for name, t in targets.items():
        idx = torch.nonzero(t.mask & train_mask).flatten()
        moments = FeatureMoments.empty(t.feature_dim)
        for start in range(0, len(idx), 256):
            moments.update(t.features[idx[start:start + 256]].float().permute(0, 2, 3, 1))
        out[name] = cls.fit(moments)
    return out


def distillation_loss(
    out, targets: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], weights: dict[str, float],
    feature_loss: str = "mse", summary_weight: float = 1.0, feature_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over teachers of ``w_t · (summary cosine + feature loss)`` on the images each teacher covers.

    out: the student's :class:`RadioOutput` with those adaptors; targets: name → (summary ``(B, S)``,
    standardised features ``(B, N, F)``, mask ``(B,)``).
    """
    total = out.summary.new_zeros(())
    parts: dict[str, float] = {}
    for name, (s_t, f_t, m) in targets.items():
        if not bool(m.any()):
            continue
        s_s, f_s = out.adaptors[name]
        l_sum = (1 - F.cosine_similarity(s_s[m], s_t[m], dim=-1)).mean()
        if feature_loss == "mse":
            l_feat = F.mse_loss(f_s[m], f_t[m])
        else:
            l_feat = 0.9 * (1 - F.cosine_similarity(f_s[m], f_t[m], dim=-1)).mean() + 0.1 * F.smooth_l1_loss(f_s[m], f_t[m])
        total = total + weights.get(name, 1.0) * (summary_weight * l_sum + feature_weight * l_feat)
        parts[f"{name}/summary"], parts[f"{name}/features"] = float(l_sum.detach()), float(l_feat.detach())
    return total, parts


def train_student(config: VisionStageConfig, data, targets: dict[str, TeacherTargets], accelerator, out: Path) -> tuple[RadioEncoder, list[dict]]:
    """Distil a fresh encoder (or resume ``out/checkpoint.pt``); returns it (eval mode) and the loss log."""
    torch.manual_seed(config.seed)
    train_mask = ~data.held_out
    names = [n for n in config.teachers if n in targets]
    norms = build_standardizers({n: targets[n] for n in names}, train_mask, config.normalisation)
    enc_cfg = RadioConfig(
        patch_size=config.patch_size, hidden_size=config.hidden_size, depth=config.depth, num_heads=config.num_heads,
        num_registers=config.num_registers, image_size=max(config.resolutions), adaptor_hidden=config.hidden_size,
        teachers=[TeacherSpec(n, targets[n].summary_dim, targets[n].feature_dim) for n in names],
    )
    model = RadioEncoder(enc_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(config.warmup_fraction * config.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    step, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        accelerator.unwrap_model(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, history = state["step"], state["history"]
        if "torch_rng" in state:  # the encoder's train-mode position-embedding crops continue the same stream
            torch.set_rng_state(state["torch_rng"])
        console.info("   vision: resuming from step %d of %d", step, config.steps)
    train_idx = torch.nonzero(train_mask).flatten()
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc="vision", unit="step", disable=not accelerator.is_main_process)
    while step < config.steps:
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 97 + accelerator.process_index)
        idx = train_idx[torch.randint(0, len(train_idx), (config.batch_size,), generator=gen)]
        use_mosaic = config.mosaic > 0 and float(torch.rand((), generator=gen)) < config.mosaic
        t_step = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        row: dict[str, float] = {"step": step + 1}
        for res in config.resolutions:  # every resolution against all teachers
            pixels, tgt = _batch(data, targets, norms, names, idx, res, config.patch_size, use_mosaic)
            pixels = pixels.to(accelerator.device)
            tgt = {n: tuple(t.to(accelerator.device) for t in v) for n, v in tgt.items()}
            o = model(pixels, adaptors=names)
            loss, parts = distillation_loss(o, tgt, config.teacher_weights, config.feature_loss, config.summary_weight, config.feature_weight)
            accelerator.backward(loss / len(config.resolutions))
            row[f"loss@{res}"] = float(loss.detach())
            row.update({f"{k}@{res}": v for k, v in parts.items()})
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        row["seconds"] = round(time.perf_counter() - t_step, 4)
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row[f'loss@{config.resolutions[-1]}']:.3f}")
        if accelerator.is_main_process and (step % config.checkpoint_every == 0 or step == config.steps):
            _atomic_save({"model": accelerator.unwrap_model(model).state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "step": step, "history": history, "torch_rng": torch.get_rng_state()}, ckpt)
    bar.close()
    encoder = accelerator.unwrap_model(model).eval()
    encoder.standardizers = norms  # kept for evaluation in teacher space
    return encoder, history


def _batch(data, targets, norms, names, idx, res, patch, mosaic):
    """Pixels ``(B, 1, res, res)`` and per-teacher (summary, standardised features ``(B, N, F)``, mask)."""
    g = res // patch
    pixels = data.pixels(idx)
    feats = {n: targets[n].features[idx].float() for n in names}
    if mosaic:  # 2×2 mosaics: four images, each at half size, teacher maps stitched the same way
        b = len(idx) // 4 * 4
        pixels = _mosaic(F.interpolate(pixels[:b], size=(res // 2, res // 2), mode="area"))
        out = {}
        for n in names:
            f = _mosaic(F.interpolate(feats[n][:b], size=(g // 2, g // 2), mode="area"))
            s = targets[n].summary[idx[:b]].float().view(b // 4, 4, -1).mean(1)
            m = targets[n].mask[idx[:b]].view(b // 4, 4).all(1)
            out[n] = (s, norms[n](f.flatten(2).transpose(1, 2)).float(), m)
        return pixels, out
    if pixels.shape[-1] != res:
        pixels = F.interpolate(pixels, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
    out = {}
    for n in names:
        f = feats[n] if feats[n].shape[-1] == g else F.interpolate(feats[n], size=(g, g), mode="bilinear", align_corners=False)
        out[n] = (targets[n].summary[idx].float(), norms[n](f.flatten(2).transpose(1, 2)).float(), targets[n].mask[idx])
    return pixels, out


def _mosaic(x: torch.Tensor) -> torch.Tensor:
    """``(4k, C, h, w)`` → ``(k, C, 2h, 2w)``: each group of four tiled 2×2."""
    k = x.shape[0] // 4
    x = x.view(k, 2, 2, *x.shape[1:])  # (k, row, col, C, h, w)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(k, x.shape[3], 2 * x.shape[4], 2 * x.shape[5])


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


def add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per :class:`VisionStageConfig` field (``--n-ct-cases`` ...), default None: a flag given overrides
    the recipe's ``vision`` settings, which override the field's default (shown in the help)."""
    group = p.add_argument_group("stage-1 settings (override the recipe's `vision` settings)")
    for f in fields(VisionStageConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        value = f.default_factory() if callable(f.default_factory) else f.default
        shown = ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else (" ".join(map(str, value)) if isinstance(value, tuple) else value)
        otherwise = f"its {_FROM_RECIPE[f.name]}" if f.name in _FROM_RECIPE else (shown if shown != "" else "empty")
        help_ = f"{FIELD_HELP.get(f.name, f.name)} (default: the recipe's, else {otherwise})"
        if isinstance(value, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif isinstance(value, tuple):
            group.add_argument(flag, nargs="+", type=type(value[0]) if value else str, default=None, help=help_)
        elif isinstance(value, dict):
            group.add_argument(flag, type=_parse_weights, default=None, help=help_)
        else:
            group.add_argument(flag, type=type(value), default=None, help=help_)


def vision_flag_values(args: argparse.Namespace) -> dict:
    """The stage-1 settings given on the command line (``add_config_flags``), as VisionStageConfig fields."""
    out = {}
    for f in fields(VisionStageConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def _parse_weights(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"teacher weights must look like seg=1,cxr=1,clip=0.5, got {text!r}.") from None

"""Stage 1 — ``m3 train vision``: multi-teacher distillation of the RADIO-style encoder.

Teachers (see :mod:`vlm.train.teachers`): the CT segmentation expert (``seg``), the CXR classifier
(``cxr``) and a contrastive image–caption model trained here (``clip``); a teacher whose expert weights
are absent is left out with a warning. Targets are computed once on phantom images and cached;
feature targets are PHI-S standardised per teacher (``normalisation="plain"`` for the baseline).
Losses: cosine distance on summaries; MSE on standardised features (or AM-RADIO's 0.9·cos + 0.1·
smooth-L1). Multi-resolution (each step at every resolution in ``resolutions``) and 2×2 mosaic
options. Launch with ``accelerate launch -m vlm.train.vision ...`` or plain ``python -m vlm.train.vision``;
re-running the same command resumes from the last (atomic) checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlm.encoder import RadioConfig, RadioEncoder, TeacherSpec
from vlm.phis import FeatureMoments, PHISStandardizer, PlainStandardizer
from vlm.train.teachers import TeacherTargets

__all__ = ["VisionStageConfig", "run_vision_stage", "add_vision_parser", "distillation_loss"]

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


def run_vision_stage(config: VisionStageConfig) -> Path:
    """Run stage 1 end to end (data → teachers → distillation → probes → model card); returns the
    folder of the trained encoder (``<output_dir>/encoder``)."""
    from accelerate import Accelerator

    from vlm.encoder.evaluate import evaluate_stage, write_outputs
    from vlm.train.teachers import load_or_build_targets

    torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
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
    write_outputs(config, out, history, metrics, encoder_dirs=[enc_dir] + ([Path(config.save_encoder_to)] if config.save_encoder_to else []))
    return enc_dir


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
        log.info("resuming stage 1 from step %d of %d", step, config.steps)
    train_idx = torch.nonzero(train_mask).flatten()
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc="stage 1 distillation", disable=not accelerator.is_main_process)
    while step < config.steps:
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 97 + accelerator.process_index)
        idx = train_idx[torch.randint(0, len(train_idx), (config.batch_size,), generator=gen)]
        use_mosaic = config.mosaic > 0 and float(torch.rand((), generator=gen)) < config.mosaic
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
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row[f'loss@{config.resolutions[-1]}']:.3f}")
        if accelerator.is_main_process and (step % config.checkpoint_every == 0 or step == config.steps):
            _atomic_save({"model": accelerator.unwrap_model(model).state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "step": step, "history": history}, ckpt)
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


def add_vision_parser(train_subparsers) -> argparse.ArgumentParser:
    """Register ``vision`` under ``m3 train`` (flags map 1:1 onto :class:`VisionStageConfig`)."""
    p = train_subparsers.add_parser("vision", help="stage 1: distil the RADIO-style encoder from its teachers",
                                    description=__doc__.split("\n\n")[0])
    _add_config_flags(p)
    p.set_defaults(func=_run_from_args)
    return p


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    for f in fields(VisionStageConfig):
        flag = "--" + f.name.replace("_", "-")
        value = f.default_factory() if callable(f.default_factory) else f.default
        if isinstance(value, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, tuple):
            p.add_argument(flag, nargs="+", type=type(value[0]) if value else str, default=value)
        elif isinstance(value, dict):
            p.add_argument(flag, type=_parse_weights, default=value, help="e.g. seg=1,cxr=1,clip=0.5")
        else:
            p.add_argument(flag, type=type(value), default=value)


def _parse_weights(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"teacher weights must look like seg=1,cxr=1,clip=0.5, got {text!r}.") from None


def _run_from_args(args: argparse.Namespace) -> int:
    cfg = VisionStageConfig(**{f.name: (tuple(v) if isinstance(v := getattr(args, f.name), list) else v) for f in fields(VisionStageConfig)})
    path = run_vision_stage(cfg)
    print(f"encoder saved to {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m vlm.train.vision", description=__doc__.split("\n\n")[0])
    _add_config_flags(parser)
    raise SystemExit(_run_from_args(parser.parse_args()))

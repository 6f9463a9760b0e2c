"""Evaluation of a distilled encoder on held-out phantoms, and the stage-1 outputs: linear probes of
student vs teachers, fidelity in each teacher's space, the FeatSharp comparison, loss curves,
``metrics.json`` and the model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from data.phantoms.labels import CT_ORGANS, CXR_FINDINGS
from vlm.encoder.probes import classification_probe, segmentation_probe
from vlm.encoder.radio import RadioEncoder

__all__ = ["encode_all", "evaluate_stage", "write_outputs", "probe_skip_reason"]

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_all(encoder: RadioEncoder, pixels_fn, n: int, names: list[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Student outputs for images ``0..n-1`` (``pixels_fn(slice)`` gives ``(b, 1, S, S)``):
    ``features`` ``(n, C, h, w)``, ``cls`` ``(n, T, C)``, and per teacher ``<name>/summary``, ``<name>/features``."""
    encoder.eval()
    out: dict[str, list[torch.Tensor]] = {}
    t = encoder.config.num_summary_tokens
    for start in range(0, n, batch_size):
        o = encoder(pixels_fn(slice(start, min(n, start + batch_size))), adaptors=names, spatial=True)
        out.setdefault("features", []).append(o.features)
        out.setdefault("cls", []).append(o.summary.view(o.summary.shape[0], t, -1))
        for name, (s, f) in o.adaptors.items():
            out.setdefault(f"{name}/summary", []).append(s)
            out.setdefault(f"{name}/features", []).append(f)
    return {k: torch.cat(v) for k, v in out.items()}


def evaluate_stage(config, encoder: RadioEncoder, data, targets: dict, probes_only: bool = False) -> dict:
    """Probe scores (student and each teacher on that teacher's task), teacher-space fidelity and,
    when ``config.featsharp_steps > 0``, the FeatSharp vs bilinear segmentation probe."""
    names = [s.name for s in encoder.config.teachers]
    enc = encode_all(encoder, data.pixels, len(data.kinds), names)
    test, train = data.held_out, ~data.held_out
    ct, cxr = data.kind_mask(("ct",)), data.kind_mask(("cxr",))
    metrics: dict = {"probes": {}, "fidelity": {}}
    seg_lab = data.seg
    seg_metric = "mean Dice over 9 organs, linear 1x1 probe on the patch grid, held-out CT slices"
    cls_metric = f"mean AUROC over {len(CXR_FINDINGS)} findings, logistic regression on pooled features, held-out radiographs"
    seg_skip = probe_skip_reason("organ_segmentation", seg_lab[ct & train], seg_lab[ct & test]) if ct.any() else None
    cls_skip = probe_skip_reason("finding_classification", data.findings[cxr & train], data.findings[cxr & test]) if cxr.any() else None
    for task, reason, metric in (("organ_segmentation", seg_skip, seg_metric), ("finding_classification", cls_skip, cls_metric)):
        if reason:
            log.warning("stage 1 evaluation: %s probe not computed: %s", task, reason)
            metrics["probes"][task] = {"skipped": reason, "metric": metric}
    if ct.any() and not seg_skip:
        tr, te = ct & train, ct & test
        metrics["probes"]["organ_segmentation"] = {
            "student": segmentation_probe(enc["features"][tr], seg_lab[tr], enc["features"][te], seg_lab[te], CT_ORGANS)["mean_dice"],
            **({"student:seg_adaptor": segmentation_probe(enc["seg/features"][tr], seg_lab[tr], enc["seg/features"][te], seg_lab[te], CT_ORGANS)["mean_dice"]}
               if "seg" in names else {}),
            **{f"teacher:{n}": segmentation_probe(targets[n].features[tr].float(), seg_lab[tr], targets[n].features[te].float(), seg_lab[te], CT_ORGANS)["mean_dice"]
               for n in names if bool(targets[n].mask[ct].all())},
            "metric": seg_metric,
        }
    if cxr.any() and not cls_skip:
        tr, te = cxr & train, cxr & test
        idx = names.index("cxr") if "cxr" in names else 0
        student_x = torch.cat([enc["cls"][:, idx], enc["features"].mean((2, 3))], dim=1)
        y = data.findings
        metrics["probes"]["finding_classification"] = {
            "student": classification_probe(student_x[tr], y[tr], student_x[te], y[te])["mean_auroc"],
            **({"student:cxr_adaptor": classification_probe(enc["cxr/summary"][tr], y[tr], enc["cxr/summary"][te], y[te])["mean_auroc"]}
               if "cxr" in names else {}),
            **{f"teacher:{n}": classification_probe(targets[n].summary[tr].float(), y[tr], targets[n].summary[te].float(), y[te])["mean_auroc"]
               for n in names if bool(targets[n].mask[cxr].all())},
            "metric": cls_metric,
        }
    for n in names:
        m = targets[n].mask & test
        if not bool(m.any()):
            metrics["fidelity"][n] = {"skipped": f"no held-out image is covered by teacher {n!r}"}
            continue
        std = encoder.standardizers[n]
        pred = enc[f"{n}/features"][m].permute(0, 2, 3, 1)  # standardised space → teacher space
        pred = std.inverse(pred.double()).float()
        true = targets[n].features[m].float().permute(0, 2, 3, 1)
        metrics["fidelity"][n] = {
            "feature_cosine": float(F.cosine_similarity(pred, true, dim=-1).mean()),
            "feature_r2": float(1 - (pred - true).pow(2).sum() / (true - true.mean((0, 1, 2))).pow(2).sum()),
            "summary_cosine": float(F.cosine_similarity(enc[f"{n}/summary"][m], targets[n].summary[m].float(), dim=-1).mean()),
        }
    for task in metrics["probes"].values():
        teachers = [v for k, v in task.items() if k.startswith("teacher:")]
        if teachers and max(teachers) > 0:  # a teacher scoring 0 on a tiny held-out set gives no ratio
            task["student_vs_best_teacher"] = task["student"] / max(teachers)
            adaptor = [v for k, v in task.items() if k.startswith("student:")]
            if adaptor:  # the student's features in the teacher's space (its adaptor head), as a task would use them
                task["student_adaptor_vs_best_teacher"] = max(adaptor) / max(teachers)
    if config.featsharp_steps > 0 and not probes_only and ct.any() and not seg_skip:
        metrics["featsharp"] = _featsharp_eval(config, encoder, data)
    return metrics


def probe_skip_reason(task: str, train_labels: torch.Tensor, test_labels: torch.Tensor, folds: int = 3) -> str | None:
    """Why a linear probe cannot be scored on these labels (None when it can): too few images, or no class
    that both splits show. ``organ_segmentation``: ``(N, L, L)`` label maps; ``finding_classification``:
    ``(N, K)`` binary findings (the probe picks its L2 strength by ``folds``-fold cross-validation)."""
    n_tr, n_te = len(train_labels), len(test_labels)
    if n_tr == 0 or n_te == 0:
        return (f"{n_tr} training and {n_te} held-out images of this kind; the probe needs both. "
                "Raise the case counts (n_ct_cases / n_cxr_cases) or held_out_fraction.")
    if task == "organ_segmentation":
        present = [int(v) for v in CT_ORGANS if bool((test_labels == v).any()) and bool((train_labels == v).any())]
        if not present:
            return "no organ appears in both the training and the held-out slices; raise n_ct_cases or slices_per_ct."
        return None
    if n_tr < folds:
        return f"{n_tr} training radiographs, fewer than the {folds} cross-validation folds; raise n_cxr_cases."
    both = lambda y: (y.sum(0) > 0) & (y.sum(0) < len(y))  # noqa: E731  (a finding with positives and negatives)
    if not bool((both(train_labels) & both(test_labels)).any()):
        return ("no finding is both present and absent in the training and the held-out radiographs, so AUROC is "
                "undefined; raise n_cxr_cases.")
    return None


def _featsharp_eval(config, encoder: RadioEncoder, data) -> dict:
    from vlm.featsharp import FeatSharpUpsampler, fit_featsharp

    up = FeatSharpUpsampler(encoder)
    train_imgs = data.pixels(torch.nonzero(~data.held_out).flatten())
    losses = fit_featsharp(up, train_imgs, steps=config.featsharp_steps, batch_size=8, seed=config.seed)
    ct = data.kind_mask(("ct",))
    idx = torch.nonzero(ct).flatten()
    with torch.no_grad():
        sharp = torch.cat([up(data.pixels(idx[s:s + 32])) for s in range(0, len(idx), 32)])
        low = torch.cat([encoder(data.pixels(idx[s:s + 32]), spatial=True).features for s in range(0, len(idx), 32)])
    bilinear = F.interpolate(low, size=sharp.shape[-2:], mode="bilinear", align_corners=False)
    held = data.held_out[idx]
    lab = data.seg[idx]
    res = {
        "bilinear": segmentation_probe(bilinear[~held], lab[~held], bilinear[held], lab[held], CT_ORGANS)["mean_dice"],
        "featsharp": segmentation_probe(sharp[~held], lab[~held], sharp[held], lab[held], CT_ORGANS)["mean_dice"],
        "low_res": segmentation_probe(low[~held], lab[~held], low[held], lab[held], CT_ORGANS)["mean_dice"],
        "grid": list(sharp.shape[-2:]), "steps": config.featsharp_steps, "final_loss": losses[-1],
    }
    out = Path(config.output_dir) / "featsharp"
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in up.state_dict().items() if not k.startswith("encoder.")}, str(out / "upsampler.safetensors"))
    (out / "config.json").write_text(json.dumps(up.config.to_dict(), indent=2) + "\n")
    return res


def write_outputs(config, out: Path, history: list[dict], metrics: dict, encoder_dirs: list[Path], commands: list[dict] | None = None) -> None:
    """``metrics.json``, ``loss_curves.png`` and ``model_card.md`` (in ``out`` and each encoder folder);
    ``commands``: the invocations that made it (``vlm.train.run_folder.invocations``), listed in the card."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot(history, out / "loss_curves.png")
    (out / "model_card.md").write_text(_model_card(config, metrics, encoder_dirs[0], commands))
    for d in encoder_dirs:
        (Path(d) / "model_card.md").write_text(_model_card(config, metrics, Path(d), commands))
        (Path(d) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    keys = [k for k in history[0] if k != "step" and ("loss@" in k or "/features" in k or "/summary" in k)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [h["step"] for h in history]
    k_smooth = max(1, len(history) // 50)
    for k in keys:
        v = torch.tensor([h.get(k, float("nan")) for h in history])
        v = F.avg_pool1d(v.view(1, 1, -1), k_smooth, stride=1).flatten() if len(v) >= k_smooth else v
        ax.plot(steps[: len(v)], v.tolist(), label=k, lw=1.2 if "loss@" in k else 0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss (moving average, log scale)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("stage 1 distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _model_card(config, metrics: dict, enc_dir: Path, commands: list[dict] | None = None) -> str:
    cfg = json.loads((enc_dir / "config.json").read_text())
    size_mb = (enc_dir / "model.safetensors").stat().st_size / 1e6
    lines = [
        "# m3 vision encoder (RADIO-style, stage 1)",
        "",
        f"ViT patch {cfg['patch_size']}, width {cfg['hidden_size']}, depth {cfg['depth']}, {cfg['num_heads']} heads, "
        f"{cfg['num_registers']} registers, one summary token per teacher, CPE grid for {cfg['max_resolution']} px; "
        f"weights {size_mb:.1f} MB (safetensors). Input: (B, 1|3, H, W) in [0, 1], H and W multiples of {cfg['patch_size']}.",
        "",
        "Distilled from: " + ", ".join(f"`{t['name']}` (summary {t['summary_dim']}, features {t['feature_dim']})" for t in cfg["teachers"])
        + " — `seg`: the ct_segmentation expert's 3D UNet (stride-4 skip + decoder features on the axial slice; "
        "bottleneck level averaged as summary), `cxr`: the cxr_classification expert's DenseNet (last feature map; "
        "its global average as summary), `clip`: a contrastive image–caption model trained on the phantom images "
        "and captions written from their ground truth. Each teacher covers its own images (seg: CT, cxr: radiographs, "
        "clip: all); teacher maps are area-resampled to the student's patch grid.",
        f"Training: {config.steps} steps × batch {config.batch_size} at {list(config.resolutions)} px, mosaic {config.mosaic}, "
        f"{config.normalisation} targets, {config.feature_loss} feature loss, teacher weights {config.teacher_weights}; "
        f"data: {config.n_ct_cases} CT phantoms ({config.slices_per_ct} axial slices each) + {config.n_cxr_cases} radiograph phantoms, "
        f"{config.held_out_fraction:.0%} of cases held out. Synthetic data only: a demonstration, not for clinical use.",
        "",
        "## Linear probes on held-out phantoms",
        "",
        "The same probe runs on the student's backbone features, on the student's features in the teacher's space "
        "(its adaptor head for that teacher, `encoder(x, adaptors=[name])`), and on each teacher's target features "
        "(on the same patch grid), trained on the training cases and scored on the held-out ones.",
        "",
        "| task | student backbone | student via adaptor | teachers | backbone / best teacher | adaptor / best teacher |",
        "|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for task, r in metrics.get("probes", {}).items():
        if "skipped" in r:
            lines.append(f"| {task} ({r['metric']}) | not computed: {r['skipped']} | | | | |")
            continue
        teachers = ", ".join(f"{k.split(':')[1]} {v:.3f}" for k, v in r.items() if k.startswith("teacher:"))
        adaptor = next((v for k, v in r.items() if k.startswith("student:")), nan)
        lines.append(f"| {task} ({r['metric']}) | {r['student']:.3f} | {adaptor:.3f} | {teachers} | "
                     f"{r.get('student_vs_best_teacher', nan):.1%} | {r.get('student_adaptor_vs_best_teacher', nan):.1%} |")
    lines += ["", "## Fidelity in each teacher's space (held-out images the teacher covers)", "",
              "| teacher | feature cosine | feature R² | summary cosine |", "|---|---|---|---|"]
    lines += [f"| {n} | not computed: {v['skipped']} | | |" if "skipped" in v else
              f"| {n} | {v['feature_cosine']:.3f} | {v['feature_r2']:.3f} | {v['summary_cosine']:.3f} |" for n, v in metrics.get("fidelity", {}).items()]
    if "plain" in metrics:
        lines += ["", "## PHI-S vs plain per-teacher normalisation (same data, steps and seed)", "",
                  "| targets | organ seg Dice | finding AUROC | " + " | ".join(f"{n} feat. cos / R²" for n in metrics["fidelity"]) + " |",
                  "|---|---|---|" + "---|" * len(metrics["fidelity"])]
        for label, m in (("PHI-S", metrics), ("plain (x − μ)/σ", metrics["plain"])):
            p = m["probes"]
            row = f"| {label} | {p.get('organ_segmentation', {}).get('student', float('nan')):.3f} | {p.get('finding_classification', {}).get('student', float('nan')):.3f} | "
            fid = {n: m["fidelity"].get(n, {}) for n in metrics["fidelity"]}
            row += " | ".join(f"{f['feature_cosine']:.3f} / {f['feature_r2']:.3f}" if "feature_cosine" in f else "—" for f in fid.values()) + " |"
            lines.append(row)
    if "featsharp" in metrics:
        fs = metrics["featsharp"]
        lines += ["", f"## FeatSharp upsampler (×2, {fs['steps']} steps, multi-view consistency)", "",
                  f"Organ segmentation linear probe, mean Dice on held-out CT slices, features on a {fs['grid'][0]}×{fs['grid'][1]} grid:", "",
                  "| features | mean Dice |", "|---|---|",
                  f"| encoder patch grid | {fs['low_res']:.3f} |", f"| bilinear ×2 | {fs['bilinear']:.3f} |", f"| FeatSharp ×2 | {fs['featsharp']:.3f} |"]
    lines += ["", "## Reproduce", "", "The settings are in this run's `config.json` (and the run's `recipe.json`)."]
    if commands:
        lines += ["Commands that made it, in order (each resume included):", "", "| started (UTC) | command | wall time (s) | outcome |",
                  "|---|---|---|---|"]
        lines += [f"| {c.get('started', '')} | `{c['command']}` | {c.get('seconds') if c.get('seconds') is not None else ''} | "
                  f"{c.get('outcome', '')} |" for c in commands]
    else:
        lines += ["Train it again: `m3 train vision --recipe <its recipe.json> --out RUN`."]
    lines += [""]
    return "\n".join(lines)

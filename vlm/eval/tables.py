"""What ``m3 eval`` writes for people: Markdown tables, a bar plot against the targets, and the model
card of a trained model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "METRIC_NAMES", "write_tables", "write_model_card", "markdown_table", "baseline_rows", "DISCLAIMER"]

# the default model's quality bars (issue 6)
TARGETS = {"closed_accuracy": 0.90, "call_precision": 0.95, "call_recall": 0.95, "finding_f1": 0.85, "grounded_answer_rate": 0.95}
METRIC_NAMES = {
    "closed_accuracy": "closed-question accuracy", "open_recall": "open-question recall", "bleu4": "report BLEU-4 (0-100)",
    "rouge_l": "report ROUGE-L (0-100)", "finding_f1": "report finding F1", "call_precision": "expert-call precision",
    "call_recall": "expert-call recall", "grounded_answer_rate": "grounded answers (numbers quoted from the expert)",
    "right_value_rate": "answers quoting the right expert values",
    "closed_accuracy_other_picture": "closed accuracy, each question asked with another case's picture",
    "closed_prior_baseline": "closed accuracy of the most common answer per question type (no picture)",
    "closed_accuracy_from_picture": "closed accuracy, questions answered from the picture",
    "closed_accuracy_with_expert": "closed accuracy, questions answered with an expert (radiograph findings, brain tumour, CT phase)",
    "closed_expert_called": "share of those where the model called the expert",
}
DISCLAIMER = ("A demonstration model trained on synthetic phantoms, not for clinical use. It has never seen a real patient "
              "image; its answers and the experts' numbers must not inform any clinical decision.")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (floats with 3 decimals)."""
    fmt = lambda v: "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_rows(headline: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for key, name in METRIC_NAMES.items():
        value, target = headline.get(key), TARGETS.get(key)
        met = "—" if target is None or value is None else ("yes" if value >= target else "no")
        rows.append([name, value, f"≥ {target:.2f}" if target is not None else "", met])
    return rows


def baseline_rows(report: dict[str, Any]) -> list[list[Any]]:
    """Per headline metric: name, the model's value, the baseline's and the ratio model / baseline (None where
    either is missing or the baseline scores 0); [] without a baseline in ``report``."""
    base = report.get("baseline", {}).get("headline")
    if not base:
        return []
    rows = []
    for key, name in METRIC_NAMES.items():
        model, rival = report["headline"].get(key), base.get(key)
        ratio = model / rival if model is not None and rival else None
        rows.append([name, model, rival, ratio])
    return rows


def write_tables(report: dict[str, Any], out_dir: str | Path) -> Path:
    """``eval.md`` (headline, VQA by category, reports, expert calls) and ``eval.png``; returns the .md."""
    out_dir = Path(out_dir)
    parts = [f"# m3 eval — {Path(report['model']).name}", "",
             f"Experts behind the tool calls: **{report['expert_mode']}**" + (" (phantom ground truth through the experts' "
             "interface: measures the VLM alone)" if report["expert_mode"] == "truth" else " (the trained experts)") + ".", "",
             markdown_table(["metric", "value", "target", "met"], headline_rows(report["headline"]))]
    base = report.get("baseline")
    if base:
        parts += ["", f"## Model and baseline ({base['backend']}) on the same items", "",
                  "The baseline routes each question to an expert by keywords and answers with a templated sentence; it never "
                  "reads the pictures (its other-picture control is not run).", "",
                  markdown_table(["metric", "model", "baseline", "model / baseline"], baseline_rows(report))]
        kinds = sorted(set(report.get("vqa", {}).get("by_kind", {})) | set(base.get("vqa", {}).get("by_kind", {})))
        if kinds:
            score = lambda part, k: part.get("vqa", {}).get("by_kind", {}).get(k, {}).get("score")  # noqa: E731
            parts += ["", markdown_table(["image kind (VQA)", "model", "baseline", "n"],
                                         [[k, score(report, k), score(base, k), base["vqa"]["by_kind"].get(k, {}).get("n")] for k in kinds])]
    vqa = report.get("vqa")
    if vqa:
        parts += ["", f"## VQA ({vqa['n_closed']} closed, {vqa['n_open']} open)", "",
                  markdown_table(["category", "score", "n"], [[k, v["score"], v["n"]] for k, v in vqa["by_category"].items()]),
                  "", markdown_table(["image kind", "score", "n"], [[k, v["score"], v["n"]] for k, v in vqa["by_kind"].items()])]
    rep = report.get("reports")
    if rep:
        parts += ["", f"## Reports ({rep['n']})", "", markdown_table(["BLEU-4", "ROUGE-L", "finding P", "finding R", "finding F1"],
                  [[rep["bleu4"], rep["rouge_l"], rep["finding_precision"], rep["finding_recall"], rep["finding_f1"]]])]
    exp = report.get("experts")
    if exp:
        parts += ["", f"## Expert conversations ({exp['n']})", "",
                  markdown_table(["call P", "call R", "name P", "name R", "grounded", "right values", "no call when not needed",
                                  "failed tool calls (malformed or expert error)"],
                                 [[exp["call_precision"], exp["call_recall"], exp["call_name_precision"], exp["call_name_recall"],
                                   exp["grounded_answer_rate"], exp.get("right_value_rate"), exp["no_call_when_not_needed"], exp["expert_errors"]]])]
    md = out_dir / "eval.md"
    md.write_text("\n".join(parts) + "\n")
    _plot(report["headline"], out_dir / "eval.png", title=f"m3 eval: {report['model']} (experts: {report['expert_mode']})")
    return md


def write_model_card(model_dir: str | Path, recipe: Any, report: dict[str, Any], *, training: dict[str, Any], command: str,
                     commands: list[dict[str, Any]] | None = None) -> Path:
    """``model_card.md`` in ``model_dir``: what the model is, how it was trained (``command``, or every invocation
    of the run in ``commands``: command line, start, wall time, outcome), measured metrics (with the command
    that measured them) and the intended-use statement."""
    model_dir = Path(model_dir)
    m = recipe.model
    size_mb = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 1e6
    met = [k for k, t in TARGETS.items() if (report["headline"].get(k) is not None and report["headline"][k] >= t)]
    missed = [k for k in TARGETS if k not in met]
    tower_cfg = model_dir / "vision_tower" / "config.json"  # the tower as built (the stage-1 encoder's size when it started from one)
    tower = json.loads(tower_cfg.read_text()) if tower_cfg.is_file() else {"depth": m.vision_depth, "hidden_size": m.vision_hidden}
    tower_trained = any("tower" in s.train for s in getattr(recipe, "stages", {}).values())
    lines = [
        f"# m3 default VLM ({recipe.name} recipe)", "", f"**{DISCLAIMER}**", "",
        "## Model", "",
        f"- Vision tower: RADIO-style ViT (`vlm.encoder`), {tower['depth']} blocks, width {tower['hidden_size']}, patch {m.patch_size}, "
        f"{m.image_size} px input; " + ("trained with the LM." if tower_trained else "the stage-1 encoder, kept frozen in the VLM stages."),
        f"- Projector: `{m.projector_type}`" + (f" {m.projector_options}" if m.projector_options else "") + ".",
        f"- Language model: Llama architecture from config, {m.llm_layers} layers, width {m.llm_hidden}, "
        f"byte-level BPE tokenizer ({m.vocab_size} tokens) trained on the project's corpus.",
        f"- Layout: VILA (`config.json`, `llm/`, `vision_tower/`, `mm_projector/`), safetensors in {m.weights_dtype}; "
        f"{size_mb:.1f} MB on disk.", "",
        "## Training", "",
        *(_commands_table(commands) if commands else [f"Command: `{command}` (stages align_projector → align → ift → medical-ift; "
                                                        "recipe in `recipe.json`).", ""]),
        "Wall time per step (minutes in total: {}):".format(training.get("total_minutes")), "",
        markdown_table(["step", "seconds"], [[k, v] for k, v in training.get("seconds", {}).items()]), "",
        "Data: synthetic CT / MRI / chest X-ray phantoms (`data.phantoms`), LLaVA-style captions, visual questions and "
        "expert conversations (`data.instructions`). Answers after an expert call name the result fields they rest on "
        "(`The liver volume is [[liver volume]].`) and the agent fills in the expert's values (`data.tool_text.resolve_references`): "
        "the model is trained to name fields, not to type numbers; *grounded* and *right values* below are scored on the filled-in answers.", "",
        "## Measured on held-out phantoms", "",
        f"`m3 eval --model {model_dir} --data <run>/data` — experts: {report['expert_mode']}; "
        f"{report.get('vqa', {}).get('n_closed', 0) + report.get('vqa', {}).get('n_open', 0)} questions, "
        f"{report.get('reports', {}).get('n', 0)} reports, {report.get('experts', {}).get('n', 0)} expert conversations.", "",
        markdown_table(["metric", "value", "target", "met"], headline_rows(report["headline"])), "",
        ("All quality bars are met." if not missed else
         "Bars **not** met: " + ", ".join(METRIC_NAMES[k] for k in missed) + ". The numbers above are what this model does."), "",
        *([f"Beside a keyword-router baseline over the same experts, same items, same run ({report['baseline']['backend']}):", "",
           markdown_table(["metric", "model", "baseline", "model / baseline"], baseline_rows(report)), ""] if report.get("baseline") else []),
        "## Intended use", "", DISCLAIMER, "",
    ]
    path = model_dir / "model_card.md"
    path.write_text("\n".join(lines))
    (model_dir / "eval_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return path


def _commands_table(commands: list[dict[str, Any]]) -> list[str]:
    """The run's invocations, oldest first: what to type to make this model again, resumes included."""
    rows = [[c.get("started", ""), f"`{c['command']}`", c.get("seconds") if c.get("seconds") is not None else "",
             "this invocation (card written before it ended)" if c.get("outcome") == "running" else c.get("outcome", "")] for c in commands]
    return ["Commands that trained it, in order (stages vision → align_projector → align → ift → medical-ift; every resume "
            "included; the recipe in `recipe.json` trains it again with `m3 train all --recipe recipe.json`):", "",
            markdown_table(["started (UTC)", "command", "wall time (s)", "outcome"], rows), ""]


def _plot(headline: dict[str, Any], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("closed_accuracy", "open_recall", "finding_f1", "call_precision", "call_recall", "grounded_answer_rate")
            if headline.get(k) is not None]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(keys)), [headline[k] for k in keys], color="#4c72b0")
    for i, k in enumerate(keys):
        if k in TARGETS:
            ax.hlines(TARGETS[k], i - 0.4, i + 0.4, colors="#c44e52", linestyles="--")
    ax.set_xticks(range(len(keys)), [METRIC_NAMES[k].split(" (")[0] for k in keys], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score, 0-1 (dashed line: target)")
    ax.set_xlabel("metric (held-out phantoms)")
    ax.set_title(title or "m3 eval")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

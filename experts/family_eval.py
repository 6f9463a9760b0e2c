"""Cross-family evaluation: each shipped expert on phantom studies of family A (``data.phantoms``, what it was
trained on, held-out seeds) and family B (``data.phantoms_b``, drawn another way, frozen held-out split),
through the app's own path: DICOM written → ``data.load_study`` → ``Expert.select_inputs`` → ``run``.

Reports CT Dice per organ and per lesion type, contrast-phase accuracy; brain whole-tumour Dice and tumours
called in tumour-free brains; CXR AUROC per finding and macro; the "uncertain" markings each result
carried. Writes ``results.json``, ``results.md`` and ``results.png``. The Python function behind
``m3 experts eval``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from data.phantoms import PhantomCase
from data.study import Volume
from experts.base import Expert, ExpertResult

__all__ = ["EXPERT_OF_KIND", "evaluate_families", "evaluate_kind", "family_case", "run_through_app_path", "write_report"]

EXPERT_OF_KIND = {"ct": "ct_segmentation", "mri": "mri_brain_tumor", "cxr": "cxr_classification"}
_A_TEST_SEED = 30_000  # family A's held-out seeds (experts.train_tasks.TEST_SEED): never trained on


def family_case(family: str, kind: str, i: int) -> PhantomCase:
    """The ``i``-th held-out case of ``family`` ("a" or "b")."""
    if family == "a":
        import data.phantoms

        return data.phantoms.generate(kind, _A_TEST_SEED + i)
    if family == "b":
        import data.phantoms_b

        seeds = data.phantoms_b.HELDOUT_SEEDS[kind]
        if i >= len(seeds):
            raise ValueError(f"family b holds {len(seeds)} held-out {kind} cases, asked for case {i}.")
        return data.phantoms_b.generate(kind, seeds[i])
    raise ValueError(f"family must be 'a' or 'b', got {family!r}.")


def run_through_app_path(expert: Expert, case: PhantomCase, workdir: Path, *, photometric: str = "MONOCHROME2") -> tuple[ExpertResult, dict[str, Volume]]:
    """Write ``case`` as DICOM, read it back as the app does, let the expert pick its inputs and run it."""
    import data
    from data.phantoms import study_files, write_study

    folder = write_study(case, workdir / f"{case.kind}_{case.seed}", photometric=photometric)
    study = data.load_study(study_files(folder))
    volumes = _study_volumes(study)
    result = expert.run(expert.select_inputs(volumes))
    return result, volumes


def evaluate_kind(expert: Expert, kind: str, family: str, n: int, *, workdir: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Metrics of ``expert`` over the first ``n`` held-out cases of ``kind`` in ``family`` (one dict, JSON-able)."""
    from tqdm.auto import tqdm

    cases = []
    with tempfile.TemporaryDirectory(prefix="m3_family_eval_") as tmp:
        root = Path(workdir or tmp)
        for i in tqdm(range(n), desc=f"{kind} family {family}", disable=not progress, leave=False):
            case = family_case(family, kind, i)
            photometric = "MONOCHROME1" if (kind == "cxr" and family == "b" and i % 2) else "MONOCHROME2"
            result, _ = run_through_app_path(expert, case, root, photometric=photometric)
            cases.append(_score_case(kind, case, result))
    summary = {"ct": _summarise_ct, "mri": _summarise_mri, "cxr": _summarise_cxr}[kind](cases)
    summary.update({"family": family, "kind": kind, "expert": expert.name, "version": expert.version, "n_cases": n,
                    "uncertain_cases": sum(1 for c in cases if c["uncertain"]), "cases": cases})
    return summary


def evaluate_families(kinds: list[str], n: int, out: str | Path, *, families: tuple[str, ...] = ("a", "b"),
                      registry=None, progress: bool = False) -> dict[str, Any]:
    """Every kind in ``kinds`` on every family, ``n`` cases each; writes the report into ``out``; returns it."""
    from experts.registry import default_registry

    reg = registry or default_registry()
    report: dict[str, Any] = {"n": n, "families": list(families), "results": {}}
    for kind in kinds:
        expert = reg.get(EXPERT_OF_KIND[kind])
        report["results"][kind] = {fam: evaluate_kind(expert, kind, fam, n, progress=progress) for fam in families}
    write_report(report, Path(out))
    return report


# ---- scoring ---------------------------------------------------------------------------------------------
def _score_case(kind: str, case: PhantomCase, result: ExpertResult) -> dict[str, Any]:
    from experts.preprocess import labels_onto_grid

    row: dict[str, Any] = {"seed": case.seed, "uncertain": list(getattr(result, "uncertain", []) or []), "summary": result.summary}
    findings = {f.label: f for f in result.findings}
    if kind == "cxr":
        row["probabilities"] = {f.label: f.probability for f in result.findings if f.probability is not None}
        row["truth"] = dict(case.truth["findings"])
        row["called"] = {f.label: bool(f.present) for f in result.findings}
        return row
    pred = result.label_volume.array
    truth = labels_onto_grid(case.labels, case.volume.affine, result.label_volume)
    if kind == "ct":
        from data.phantoms.labels import CT_LABELS

        row["dice"] = {CT_LABELS[v]: _dice(pred == v, truth == v) for v in CT_LABELS if (truth == v).any()}
        row["false_lesion_types"] = [CT_LABELS[v] for v in (10, 11, 12) if not (truth == v).any() and (pred == v).any()]
        row["phase_truth"] = case.truth["phase"]
        row["phase_called"] = next((f.label.removesuffix(" phase") for f in result.findings if f.label.endswith(" phase") and f.present), None)
        return row
    has = bool((truth > 0).any())
    row["tumor_present"] = has
    row["tumor_called"] = bool(findings["tumor"].present) if "tumor" in findings else bool((pred > 0).any())
    row["true_whole_tumor_ml"] = case.truth["whole_tumor_ml"]
    row["called_whole_tumor_ml"] = round(float((pred > 0).sum()) * result.label_volume.voxel_volume_ml, 1)
    if has:
        row["whole_tumor_dice"] = _dice(pred > 0, truth > 0)
    return row


def _dice(p: np.ndarray, t: np.ndarray) -> float:
    n = int(p.sum()) + int(t.sum())
    return round(2.0 * float(np.logical_and(p, t).sum()) / n, 4) if n else 1.0


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _summarise_ct(cases: list[dict]) -> dict[str, Any]:
    from data.phantoms.labels import CT_LABELS, CT_LESIONS, CT_ORGANS

    per = {CT_LABELS[v]: [c["dice"][CT_LABELS[v]] for c in cases if CT_LABELS[v] in c["dice"]] for v in CT_LABELS}
    organs = {CT_LABELS[v]: _mean(per[CT_LABELS[v]]) for v in CT_ORGANS if per[CT_LABELS[v]]}
    lesions = {CT_LABELS[v]: _mean(per[CT_LABELS[v]]) for v in CT_LESIONS if per[CT_LABELS[v]]}
    return {
        "mean_organ_dice": _mean([s for v in CT_ORGANS for s in per[CT_LABELS[v]]]),
        "organ_dice": organs,
        "mean_lesion_dice": _mean([d for d in lesions.values() if d is not None]),
        "lesion_dice": lesions,
        "false_lesion_types": sum(len(c["false_lesion_types"]) for c in cases),
        "contrast_phase_accuracy": _mean([float(c["phase_called"] == c["phase_truth"]) for c in cases]),
    }


def _summarise_mri(cases: list[dict]) -> dict[str, Any]:
    free = [c for c in cases if not c["tumor_present"]]
    return {
        "whole_tumor_dice": _mean([c["whole_tumor_dice"] for c in cases if "whole_tumor_dice" in c]),
        "tumor_free_cases": len(free),
        "false_tumors_in_tumor_free": sum(1 for c in free if c["tumor_called"]),
        "detection_accuracy": _mean([float(c["tumor_called"] == c["tumor_present"]) for c in cases]),
    }


def _summarise_cxr(cases: list[dict]) -> dict[str, Any]:
    import torch
    from monai.metrics import compute_roc_auc

    names = list(cases[0]["truth"]) if cases else []
    auroc, accuracy = {}, {}
    for f in names:
        y = np.array([c["truth"][f] for c in cases], dtype=int)
        p = np.array([c["probabilities"].get(f, 0.0) for c in cases], dtype=float)
        accuracy[f] = _mean([float(c["called"].get(f) == c["truth"][f]) for c in cases])
        auroc[f] = round(float(compute_roc_auc(torch.as_tensor(p), torch.as_tensor(y))), 4) if 0 < y.sum() < len(y) else None
    scored = [v for v in auroc.values() if v is not None]
    return {"macro_auroc": _mean(scored), "auroc": auroc, "accuracy_at_threshold": accuracy,
            "positives": {f: int(sum(c["truth"][f] for c in cases)) for f in names}}


# ---- report -----------------------------------------------------------------------------------------------
_HEADLINE = {  # kind → (metric key, label) rows of the Markdown table
    "ct": [("mean_organ_dice", "CT mean organ Dice"), ("mean_lesion_dice", "CT mean lesion Dice"),
           ("contrast_phase_accuracy", "CT contrast phase accuracy"), ("false_lesion_types", "CT lesion types called where none")],
    "mri": [("whole_tumor_dice", "brain whole-tumour Dice"), ("false_tumors_in_tumor_free", "tumours called in tumour-free brains"),
            ("tumor_free_cases", "tumour-free brains")],
    "cxr": [("macro_auroc", "CXR macro AUROC")],
}


def write_report(report: Mapping[str, Any], out: Path) -> None:
    """``results.json`` (everything, per case), ``results.md`` (the table) and ``results.png`` (A vs B bars)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    fams = report["families"]
    lines = [f"# Experts across phantom families (n = {report['n']} per family and kind)", "",
             "| metric | " + " | ".join(f"family {f.upper()}" for f in fams) + " |", "|---|" + "---|" * len(fams)]
    bars: list[tuple[str, list[float | None]]] = []
    for kind, by_family in report["results"].items():
        rows = list(_HEADLINE[kind])
        detail = {"ct": ("organ_dice", "lesion_dice"), "mri": (), "cxr": ("auroc",)}[kind]
        for key in detail:
            names = sorted({k for f in fams for k in (by_family[f].get(key) or {})})
            rows += [(f"{key}/{name}", f"{'  ' if kind != 'cxr' else ''}{kind.upper()} {name} {'AUROC' if key == 'auroc' else 'Dice'}") for name in names]
        for key, label in rows:
            values = [_lookup(by_family[f], key) for f in fams]
            lines.append(f"| {label} | " + " | ".join("–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in values) + " |")
            if key in ("mean_organ_dice", "mean_lesion_dice", "contrast_phase_accuracy", "whole_tumor_dice", "macro_auroc") or key.startswith(("organ_dice/", "auroc/")):
                bars.append((label.strip(), [v if isinstance(v, float) else None for v in values]))
        lines.append(f"| {kind.upper()} results marked uncertain | " + " | ".join(f"{by_family[f]['uncertain_cases']} / {by_family[f]['n_cases']}" for f in fams) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(bars, fams, out / "results.png")


def _lookup(d: Mapping[str, Any], key: str):
    if "/" in key:
        group, name = key.split("/", 1)
        return (d.get(group) or {}).get(name)
    return d.get(key)


def _plot(bars: list[tuple[str, list[float | None]]], fams: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(bars) + 2), 4.5))
    width = 0.8 / max(1, len(fams))
    for j, fam in enumerate(fams):
        ax.bar(np.arange(len(bars)) + j * width, [v[j] if v[j] is not None else 0.0 for _, v in bars], width, label=f"family {fam.upper()}")
    ax.set_xticks(np.arange(len(bars)) + width * (len(fams) - 1) / 2)
    ax.set_xticklabels([b[0] for b in bars], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Experts on held-out phantoms: family A (trained-on generator) vs B (drawn another way)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _study_volumes(study) -> dict[str, Volume]:
    """A study's volumes by name as the app names them (``vlm.conversation.study_volumes``, which experts may
    not import): MR by sequence role, others by modality, repeats ``_2``, ``_3``…"""
    volumes: dict[str, Volume] = {}
    for series in study.series:
        v = series.volume
        name = base = v.sequence or series.modality or v.modality
        k = 2
        while name in volumes:
            name, k = f"{base}_{k}", k + 1
        volumes[name] = v
    return volumes

"""Write LLaVA-style training / test files from seeded phantoms: ``build_dataset``.

Output in ``out_dir``::

    images/<kind>_<seed>_<series>.png     the rendered picture(s) of each case
    <stage>_<split>.json                  a list of {"id", "image" | "images", "conversations", "meta"}

Splits never share a case: a case's seed is ``SPLIT_SEEDS[split] + 10_000 * seed + i``. The picture of
a case (its view) depends on the case seed only, so align, ift and medical-ift files of one split show
the same pictures. The first human turn starts with one ``<image>\\n`` per picture (MRI: T1, T1c, T2,
FLAIR in that order). ``meta`` carries what evaluation needs (answer type and answer, expected tool
calls, the values an answer must quote) and is ignored by LLaVA-style loaders.

The ``medical-ift`` file of a split in ``ClinicianMix.splits`` holds, after each case's template expert conversation,
``ClinicianMix.per_case`` conversations on clinician-style questions (``data.instructions.clinician_dialogues``,
``meta.task`` "clinician", with the question's intent family and style); each from its own random stream, so the
template records are the same with or without them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.instructions.captions import caption, caption_prompt, report_findings, study_findings
from data.instructions.clinician_dialogues import clinician_dialogue
from data.instructions.clinician_questions import ClinicianMix
from data.instructions.expert_dialogues import expert_dialogue, tool_result_from_truth
from data.instructions.views import CaseView, make_view
from data.instructions.vqa import vqa_items
from data.phantoms import generate
from data.slice_facts import asks_about_shown_slice
from data.tool_text import format_tool_call, format_tool_result, value_reference

__all__ = ["build_dataset", "build_datasets", "STAGES", "SPLIT_SEEDS", "case_seeds", "ClinicianMix"]

STAGES = ("align", "ift", "medical-ift")
SPLIT_SEEDS = {"train": 100_000, "val": 300_000, "test": 500_000}
_STAGE_CODE = {"align": 1, "ift": 2, "medical-ift": 3}


def case_seeds(kind_index: int, n: int, seed: int, split: str) -> list[int]:
    """Phantom seeds of one kind in one split (disjoint across splits, kinds and ``seed`` values)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}.")
    if not 0 <= n <= 3_000:
        raise ValueError(f"at most 3000 cases per kind and call, got {n}; use another seed for more.")
    base = SPLIT_SEEDS[split] + 10_000 * seed + 3_000 * kind_index
    return list(range(base, base + n))


def build_dataset(kind_counts: dict[str, int], out_dir: str | Path, seed: int = 0, stage: str = "align", split: str = "train", *,
                  questions_per_case: int = 4, phantom_options: dict[str, dict] | None = None, progress: bool = False,
                  clinician: ClinicianMix | None = None) -> Path:
    """Generate ``kind_counts[kind]`` phantoms per kind and write ``out_dir/<stage>_<split>.json``.

    stage: "align" (one caption per case), "ift" (``questions_per_case`` VQA records per case) or
    "medical-ift" (one template expert conversation per case, plus ``clinician.per_case`` clinician-style ones in the
    splits ``clinician.splits``; default ``ClinicianMix()``); phantom_options: per-kind options for
    ``data.phantoms.generate`` (e.g. a smaller MRI grid). Returns the JSON path.
    """
    return build_datasets(kind_counts, out_dir, seed, (stage,), split, questions_per_case=questions_per_case,
                          phantom_options=phantom_options, progress=progress, clinician=clinician)[stage]


def build_datasets(kind_counts: dict[str, int], out_dir: str | Path, seed: int = 0, stages: tuple[str, ...] = STAGES,
                   split: str = "train", *, questions_per_case: int = 4, phantom_options: dict[str, dict] | None = None,
                   progress: bool = False, clinician: ClinicianMix | None = None) -> dict[str, Path]:
    """Like ``build_dataset`` for several stages at once, generating each phantom only once."""
    mix = ClinicianMix() if clinician is None else clinician
    n_clinician = mix.per_case if split in mix.splits else 0
    bad = [st for st in stages if st not in STAGES]
    if bad or not stages:
        raise ValueError(f"stage must be one of {STAGES}, got {bad or list(stages)}.")
    unknown = set(kind_counts) - {"ct", "mri", "cxr"}
    if unknown:
        raise ValueError(f"kinds must be among ('ct', 'mri', 'cxr'), got {sorted(unknown)}.")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(kind, s) for ki, kind in enumerate(("ct", "mri", "cxr")) for s in case_seeds(ki, int(kind_counts.get(kind, 0)), seed, split)]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"{'+'.join(stages)} {split}", unit="case")
    records: dict[str, list[dict]] = {st: [] for st in stages}
    for kind, case_seed in jobs:
        case = generate(kind, case_seed, **(phantom_options or {}).get(kind, {}))
        view = make_view(case, np.random.default_rng([case_seed, 0x71E]))
        images = _write_images(view, out)
        for st in stages:
            rng = np.random.default_rng([case_seed, _STAGE_CODE[st]])
            records[st] += _records(st, view, images, rng, questions_per_case)
            if st == "medical-ift":
                records[st] += _clinician_records(view, images, mix, n_clinician)
    paths = {}
    for st in stages:
        path = out / f"{st}_{split}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(records[st], ensure_ascii=False))
        tmp.replace(path)
        paths[st] = path
    return paths


def _write_images(view: CaseView, out: Path) -> list[str]:
    from PIL import Image

    rel = []
    for name, pixels in view.images.items():
        path = Path("images") / f"{view.kind}_{view.seed}_{name}.png"
        if not (out / path).exists():
            Image.fromarray(pixels).save(out / path)
        rel.append(path.as_posix())
    return rel


def _with_images(images: list[str], record: dict, first_question: str) -> dict:
    if len(images) == 1:
        record["image"] = images[0]
    else:
        record["images"] = images
    record["conversations"][0]["value"] = "<image>\n" * len(images) + first_question
    return record


def _records(stage: str, view: CaseView, images: list[str], rng: np.random.Generator, n_questions: int) -> list[dict]:
    base = {"kind": view.kind, "seed": view.seed, "slice_index": view.slice_index}
    rid = f"{stage}-{view.kind}-{view.seed}"
    if stage == "align":
        q = caption_prompt(rng)
        rec = {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": caption(view, rng)}],
               "meta": {**base, "task": "caption", "findings": study_findings(view), "picture_findings": report_findings(view)}}
        return [_with_images(images, rec, q)]
    if stage == "ift":
        out = []
        for j, qa in enumerate(vqa_items(view, rng, n_questions)):
            rec = {"id": f"{rid}-{j}", "conversations": [{"from": "human", "value": qa.question}, *_vqa_answer(view, qa, j)],
                   "meta": {**base, "task": "vqa", "category": qa.category, "answer_type": qa.answer_type, "answer": qa.answer}}
            if qa.expert:
                rec["meta"]["tool_calls"] = [{"name": qa.expert, "arguments": dict(qa.arguments or {})}]
            out.append(_with_images(images, rec, qa.question))
        return out
    d = expert_dialogue(view, rng)
    first = d.turns[0]["value"]
    rec = {"id": rid, "conversations": [dict(t) for t in d.turns],
           "meta": {**base, "task": d.task, "tool_calls": d.tool_calls, "grounded_values": d.grounded_values}}
    return [_with_images(images, rec, first)]


def _clinician_records(view: CaseView, images: list[str], mix: ClinicianMix, n: int) -> list[dict]:
    """``n`` conversations on clinician-style questions about the case, each from its own random stream."""
    out = []
    for j in range(n):
        d = clinician_dialogue(view, np.random.default_rng([view.seed, _STAGE_CODE["medical-ift"], 0xC11, j]), mix)
        rec = {"id": f"medical-ift-{view.kind}-{view.seed}-c{j}", "conversations": [dict(t) for t in d.turns],
               "meta": {"kind": view.kind, "seed": view.seed, "slice_index": view.slice_index, "task": d.task, **d.info,
                        "tool_calls": d.tool_calls, "grounded_values": d.grounded_values}}
        out.append(_with_images(images, rec, d.turns[0]["value"]))
    return out


def _vqa_answer(view: CaseView, qa, j: int) -> list[dict]:
    """The answer turns of a VQA item: the answer itself, or, for a question its expert answers, the call,
    the result (the expert's output on this case's ground truth, its own random stream so the questions
    stay those of a picture-only set) and a reference to the field that answers it."""
    if not qa.expert:
        return [{"from": "gpt", "value": qa.answer}]
    arguments = dict(qa.arguments or {})
    shown = view.facts if asks_about_shown_slice(qa.question) else None  # the agent adds the slice's findings then
    result = tool_result_from_truth(view.kind, view.truth, arguments, np.random.default_rng([view.seed, 0xE7, j]), shown)
    return [{"from": "gpt", "value": format_tool_call(qa.expert, arguments)}, {"from": "tool", "value": format_tool_result(result)},
            {"from": "gpt", "value": value_reference(qa.key)}]

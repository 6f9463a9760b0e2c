"""``m3 eval`` on held-out phantoms, through the app's path: each case is written as DICOM and ingested as an
upload is (``data.load_study``), and every question is asked through ``vlm.study_chat.StudyChat`` — the pictures
(``data.model_view``), agent, experts and generation settings of the app — at the slice the question is about, as
a clinician who scrolled there would ask it.

Three parts, one per test file written by ``data.instructions.build_datasets(split="test")``:
VQA (``ift_test.json``), reports (``align_test.json``), expert conversations (``medical-ift_test.json``,
each human turn asked in order in one conversation). Experts: ``real`` (the trained experts of the
registry), ``truth`` (the same experts' interface answering from the phantom's ground truth, to
measure the VLM alone), ``auto`` (real when all their weights exist). Closed questions are asked a
second time with another case's picture, beside a no-picture prior baseline: how much of the closed
accuracy comes from reading the picture. A baseline (``vlm.eval.baselines``: a keyword router over the same
experts) can be scored in the same run on the same items, beside the model. Outputs ``metrics.json``,
``eval.md`` (Markdown tables) and ``eval.png``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from data.tool_text import resolve_references
from experts.base import Expert, ExpertResult
from vlm.eval.baselines import BASELINES
from vlm.eval.report import ReportItem, score_reports
from vlm.eval.tables import TARGETS, write_model_card, write_tables
from vlm.eval.tools import DialogueItem, score_dialogues
from vlm.eval.vqa import VQAItem, score_vqa

__all__ = ["evaluate_model", "evaluate_vqa_file", "TruthRegistry", "TARGETS", "load_picture", "answer_text", "write_tables", "write_model_card"]

log = logging.getLogger(__name__)

_NOTE = "\n\n(Note:"


class TruthRegistry:
    """A registry with the built-in experts' names, schemas and result shapes, whose results come from
    the current phantom case's ground truth (``data.instructions.tool_result_from_truth``) — the
    VLM's part measured without the experts' errors. Masks come from the phantom's label map, so the
    agent draws the same overlay it would for the real expert."""

    def __init__(self) -> None:
        from experts.registry import BUILTIN_EXPERTS, _resolve

        self._classes = {name: _resolve(target) for name, target in BUILTIN_EXPERTS.items()}
        self.case: Any = None
        self._experts: dict[str, Expert] = {}

    def names(self) -> list[str]:
        return list(self._classes)

    def get(self, name: str) -> Expert:
        from experts.base import ExpertError

        if name not in self._classes:
            raise ExpertError(f"unknown expert {name!r}; available experts: {', '.join(self._classes)}.")
        if name not in self._experts:
            self._experts[name] = _truth_expert(self._classes[name], self)
        return self._experts[name]

    def run(self, name: str, volumes: Any, **arguments: Any) -> ExpertResult:
        return self.get(name).run(volumes, **arguments)


def evaluate_model(model: str | Path, data_dir: str | Path, out_dir: str | Path, *, experts: str = "auto", limit: int = 0,
                   max_new_tokens: int = 256, progress: bool = True, baseline: str = "", plan_calls: bool = True,
                   device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (a model folder, or a ``ChatBackend``) on the test files in ``data_dir``; returns
    the metrics (also written to ``out_dir``). limit: questions / reports / conversations per part (0: all).
    max_new_tokens: per generation, as the app's (``vlm.study_chat.TurnSettings``) by default. baseline: a name of
    ``vlm.eval.baselines.BASELINES`` ("keyword") scored in the same run on the same items, registry and path; its
    metrics go under ``"baseline"`` (answers in ``baseline_*_answers.json``), "": none. plan_calls: as the app
    (``TurnSettings.plan_calls``); off to score what the model alone calls. device / dtype: where a model folder
    loads (``vlm.device.resolve_device``; None = CPU, auto precision)."""
    if baseline and baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {sorted(BASELINES)} or empty, got {baseline!r}.")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = _backend(model, device, dtype)
    registry, expert_mode = _registry(experts)
    cases = _CaseCache(data_dir, plan_calls)
    t0 = time.perf_counter()
    parts = _score_parts(backend, registry, cases, data_dir, out_dir, limit, max_new_tokens, progress)
    report = {"model": _name(model), "expert_mode": expert_mode, "seconds": round(time.perf_counter() - t0, 1), **parts}
    report["headline"] = _headline(parts)
    if baseline:
        t0 = time.perf_counter()
        rival = BASELINES[baseline]()
        # a baseline never reads the pictures, so the other-picture control would repeat its closed accuracy: not run
        base = _score_parts(rival, registry, cases, data_dir, out_dir, limit, max_new_tokens, progress, prefix="baseline_",
                            picture_control=False)
        report["baseline"] = {"name": baseline, "backend": rival.info.name, "seconds": round(time.perf_counter() - t0, 1), **base,
                              "headline": _headline(base)}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_tables(report, out_dir)
    return report


def _score_parts(backend: Any, registry: Any, cases: "_CaseCache", data_dir: Path, out_dir: Path, limit: int, max_new_tokens: int,
                 progress: bool, *, prefix: str = "", picture_control: bool = True) -> dict[str, Any]:
    """The three parts' scores for ``backend``; the answers go to ``out_dir / f"{prefix}<part>_answers.json"``."""
    parts: dict[str, Any] = {}
    vqa = _records(data_dir / "ift_test.json", limit)
    if vqa:
        items = [_ask_vqa(backend, registry, cases, r, max_new_tokens) for r in _bar(vqa, f"eval {prefix}vqa", progress)]
        parts["vqa"] = score_vqa(items)
        if picture_control:
            parts["vqa"] |= _picture_control(backend, registry, cases, vqa, out_dir, progress, max_new_tokens)
        _dump(out_dir / f"{prefix}vqa_answers.json", items)
    reports = _records(data_dir / "align_test.json", limit)
    if reports:
        items = [_ask_report(backend, registry, cases, r, max_new_tokens) for r in _bar(reports, f"eval {prefix}reports", progress)]
        parts["reports"] = score_reports(items)
        _dump(out_dir / f"{prefix}report_answers.json", items)
    dialogues = _records(data_dir / "medical-ift_test.json", limit)
    if dialogues:
        items = [_ask_dialogue(backend, registry, cases, r, max_new_tokens) for r in _bar(dialogues, f"eval {prefix}experts", progress)]
        parts["experts"] = score_dialogues(items)
        _dump(out_dir / f"{prefix}dialogue_answers.json", items)
    return parts


def evaluate_vqa_file(model: str | Path, path: str | Path, out_dir: str | Path, *, fmt: str = "llava", image_root: str | Path | None = None,
                      experts: str = "auto", limit: int = 0, progress: bool = True, device: str | None = None,
                      dtype: str | None = None) -> dict[str, Any]:
    """The VQA scorer on one file: a phantom ``ift_test.json`` or a VQA-RAD / SLAKE / PathVQA file
    (``fmt``); same agent, same protocol. Writes ``metrics.json`` / ``eval.md`` / ``eval.png``. device / dtype: as
    ``evaluate_model``'s."""
    from vlm.eval.vqa import load_vqa_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r for r in load_vqa_file(path, fmt, image_root) if "answer_type" in r.get("meta", {})]
    if limit and len(records) > limit:
        records = [records[i] for i in sorted(set(np.linspace(0, len(records) - 1, limit).round().astype(int).tolist()))]
    if not records:
        raise ValueError(f"{path} must hold VQA records with an answer type (closed / open); found none.")
    backend = _backend(model, device, dtype)
    registry, expert_mode = _registry(experts)
    cases = _CaseCache(Path(path).parent)
    t0 = time.perf_counter()
    items = [_ask_vqa(backend, registry, cases, r, 256) for r in _bar(records, f"eval {Path(path).name}", progress)]
    _dump(out_dir / "vqa_answers.json", items)
    parts = {"vqa": score_vqa(items) | _picture_control(backend, registry, cases, records, out_dir, progress, 256)}
    report = {"model": _name(model), "data": str(path), "format": fmt, "expert_mode": expert_mode,
              "seconds": round(time.perf_counter() - t0, 1), **parts, "headline": _headline(parts)}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    write_tables(report, out_dir)
    return report


def answer_text(answer: str) -> str:
    """The model's answer without the agent's grounding note."""
    return answer.split(_NOTE)[0].strip()


def load_picture(path: str | Path) -> np.ndarray:
    """A picture file as ``(H, W)`` or ``(H, W, 3)`` uint8 (what the agent shows the model)."""
    from PIL import Image

    img = Image.open(path)
    img = img.convert("L") if img.mode in ("L", "I", "I;16", "F", "1", "P") else img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


# ---- the three parts ---------------------------------------------------------------------------------
def _first_question(record: dict) -> str:
    return record["conversations"][0]["value"].replace("<image>\n", "").replace("<image>", "").strip()


def _ask_vqa(backend: Any, registry: Any, cases: "_CaseCache", record: dict, max_new_tokens: int) -> VQAItem:
    turn = cases.chat(record, backend, registry, max_new_tokens).ask(_first_question(record))
    meta = record.get("meta", {})
    expected = [c["name"] for c in meta.get("tool_calls", [])]
    return VQAItem(_first_question(record), str(meta.get("answer", record["conversations"][-1]["value"])), answer_text(turn.answer),
                   meta.get("answer_type", "open"), meta.get("category", ""), meta.get("kind", ""),
                   expected[0] if expected else "", [c.name for c in turn.tool_calls], [dict(c.arguments) for c in turn.tool_calls])


def _picture_control(backend: Any, registry: Any, cases: "_CaseCache", records: list[dict], out_dir: Path, progress: bool,
                     max_new_tokens: int) -> dict[str, Any]:
    """The closed questions asked again, each with another case's picture(s) (``_other_pictures``): a model
    that reads the picture falls towards ``closed_prior_baseline``; one answering from the question alone
    keeps its score. Study volumes stay the question's own, so an expert call still sees the right case."""
    swapped = _other_pictures([r for r in records if r.get("meta", {}).get("answer_type") == "closed"])
    if not swapped:
        return {}
    items = [_ask_vqa(backend, registry, cases, r, max_new_tokens) for r in _bar(swapped, "eval vqa, other pictures", progress)]
    _dump(out_dir / "vqa_other_picture_answers.json", items)
    return {"closed_accuracy_other_picture": score_vqa(items)["closed_accuracy"], "n_other_picture": len(items)}


def _other_pictures(records: list[dict]) -> list[dict]:
    """Each record with the pictures of the next case (distinct pictures) of the same image kind and picture
    count, in file order, wrapping round; records whose group holds one case only are left out."""
    def pictures(r: dict) -> tuple[str, ...]:
        return tuple(r.get("images") or ([r["image"]] if r.get("image") else []))

    groups: dict[tuple[str, int], dict[tuple[str, ...], None]] = {}
    for r in records:
        if pictures(r):
            groups.setdefault((r.get("meta", {}).get("kind", ""), len(pictures(r))), {})[pictures(r)] = None
    out = []
    for r in records:
        own = pictures(r)
        pool = list(groups.get((r.get("meta", {}).get("kind", ""), len(own)), {}))
        if len(pool) < 2:
            continue
        other = pool[(pool.index(own) + 1) % len(pool)]
        out.append({**r, "other_pictures": list(other)})
    return out


def _ask_report(backend: Any, registry: Any, cases: "_CaseCache", record: dict, max_new_tokens: int) -> ReportItem:
    turn = cases.chat(record, backend, registry, max_new_tokens).ask(_first_question(record))
    meta = record["meta"]
    return ReportItem(answer_text(turn.answer), record["conversations"][1]["value"], list(meta.get("findings", [])), meta["kind"])


def quotes_expert(reference: str, turns: list[dict]) -> bool:
    """Does a conversation's reference answer quote an expert result? Where the conversation names result
    fields (``[[liver volume]]``), the references that name one do; in data written before field references
    (numbers typed in the answers), those whose numbers all come from the conversation's own tool turns.
    Textbook numbers ("-1000 HU") quote no expert."""
    from vlm.eval.metrics import is_grounded, numbers_in

    if any("[[" in u["value"] for u in turns if u["from"] == "gpt"):
        return "[[" in reference
    tools = [u["value"] for u in turns if u["from"] == "tool"]
    return bool(tools) and bool(numbers_in(reference)) and is_grounded(reference, tools)


def _ask_dialogue(backend: Any, registry: Any, cases: "_CaseCache", record: dict, max_new_tokens: int) -> DialogueItem:
    from experts.base import tool_message

    chat = cases.chat(record, backend, registry, max_new_tokens)
    turns = record["conversations"]
    meta = record["meta"]
    item = DialogueItem(expected_calls=[(c["name"], c["arguments"]) for c in meta.get("tool_calls", [])], predicted_calls=[],
                        task=meta.get("task", "expert"), kind=meta.get("kind", ""))
    for k, t in enumerate(turns):
        if t["from"] != "human":
            continue
        nxt = next((j for j in range(k + 1, len(turns)) if turns[j]["from"] == "human"), len(turns))
        reference = next((turns[j]["value"] for j in range(nxt - 1, k, -1) if turns[j]["from"] == "gpt"), "")
        question = t["value"].replace("<image>\n", "").strip()
        turn = chat.ask(question)
        for call in turn.tool_calls:
            item.predicted_calls.append((call.name, dict(call.arguments)))
            if call.result is not None:
                item.tool_texts.append(tool_message(call.result))
            if call.error:
                item.errors.append(call.error)
        # the reference's field references filled from the results this conversation got (the record's own
        # tool turn when the model called nothing): "right values" asks for the values the reference would quote
        item.quotes_expert.append(quotes_expert(reference, turns))
        reference = resolve_references(reference, [u["value"] for u in turns[:nxt] if u["from"] == "tool"] + item.tool_texts)[0]
        item.answers.append((answer_text(turn.answer), reference))
    return item


# ---- cases -------------------------------------------------------------------------------------------
class _CaseCache:
    """The test records' phantom cases, regenerated from their seeds, written as DICOM and ingested as an upload
    (the study the app would hold); one case is kept at a time."""

    def __init__(self, data_dir: Path, plan_calls: bool = True) -> None:
        self.data_dir = data_dir
        self.plan_calls = plan_calls  # ``TurnSettings.plan_calls`` of every chat
        spec = data_dir / "data_spec.json"
        self.options = json.loads(spec.read_text()).get("phantom_options", {}) if spec.is_file() else {}
        self._key: tuple[str, int] | None = None
        self._case: Any = None
        self._study: Any = None

    def case(self, kind: str, seed: int) -> tuple[Any, Any]:
        """(phantom case, its study as ingested from DICOM)."""
        import tempfile

        from data import load_study
        from data.phantoms import generate, study_files, write_study

        key = (kind, int(seed))
        if key != self._key:
            case = generate(kind, int(seed), **self.options.get(kind, {}))
            with tempfile.TemporaryDirectory(prefix="m3-eval-") as tmp:
                study = load_study([str(p) for p in study_files(write_study(case, Path(tmp)))])
            self._key, self._case, self._study = key, case, study
        return self._case, self._study

    def chat(self, record: dict, backend: Any, registry: Any, max_new_tokens: int) -> Any:
        """A ``StudyChat`` on the record's case at the record's slice (the app's path); a record without a phantom
        case (a public VQA file) gets its picture file alone."""
        from vlm.study_chat import StudyChat, TurnSettings

        settings = TurnSettings(max_new_tokens=max_new_tokens, plan_calls=self.plan_calls)
        meta = record.get("meta", {})
        if "kind" not in meta or "seed" not in meta:
            images = [load_picture(p if Path(p).is_absolute() else self.data_dir / p) for p in record.get("images") or [record["image"]]]
            return StudyChat.on_pictures(backend, registry, images, settings=settings)
        case, study = self.case(meta["kind"], meta["seed"])
        if isinstance(registry, TruthRegistry):
            registry.case = case
        chat = StudyChat(backend, registry, study, settings=settings)
        chat.look_at(meta.get("slice_index"))
        if record.get("other_pictures"):  # the picture control: another case's pictures, this case's volumes
            chat.conversation.images = [load_picture(p if Path(p).is_absolute() else self.data_dir / p) for p in record["other_pictures"]]
        return chat


def _truth_expert(cls: type, registry: TruthRegistry) -> Expert:
    from data.instructions import tool_result_from_truth
    from experts.overlay import render_overlay

    def _run(self: Expert, volumes: Any, **arguments: Any) -> ExpertResult:
        case = registry.case
        rng = np.random.default_rng([case.seed, 7])
        truth = tool_result_from_truth(case.kind, case.truth, arguments, rng)
        result = ExpertResult(expert=cls.name, arguments=dict(arguments), findings=list(truth.findings), measurements=list(truth.measurements))
        if case.labels is not None:
            from data.instructions.expert_dialogues import ct_target_values

            labels = np.asarray(case.labels).copy()
            if case.kind == "ct":
                labels[~np.isin(labels, ct_target_values(arguments.get("targets", "everything")))] = 0
            result.label_volume = case.volume.like(labels.astype(np.int16), modality="SEG", description=f"{cls.name} mask", window=None)
            result.label_names = dict(case.label_names)
            result.overlay_renderer = render_overlay
        return result

    attrs = {k: getattr(cls, k) for k in ("name", "description", "modalities", "sequences", "parameters", "version")}
    attrs["_run"] = _run
    return type(f"Truth{cls.__name__}", (Expert,), attrs)()


def _registry(mode: str) -> tuple[Any, str]:
    from experts.model_files import WEIGHTS_DIR
    from experts.registry import BUILTIN_EXPERTS, default_registry

    if mode not in ("auto", "real", "truth"):
        raise ValueError(f"experts must be 'auto', 'real' or 'truth', got {mode!r}.")
    have_all = all((WEIGHTS_DIR / n / "model.safetensors").is_file() for n in BUILTIN_EXPERTS)
    if mode == "real" or (mode == "auto" and have_all):
        return default_registry(), "real"
    if mode == "auto":
        log.warning("expert weights missing under %s: evaluating with ground-truth experts", WEIGHTS_DIR)
    return TruthRegistry(), "truth"


def _backend(model: Any, device: str | None = None, dtype: str | None = None) -> Any:
    from vlm.backends import load_backend

    return model if hasattr(model, "stream_chat") else load_backend(model, device=device, dtype=dtype)


def _name(model: Any) -> str:
    return model.info.name if hasattr(model, "stream_chat") else str(model)


def _records(path: Path, limit: int) -> list[dict]:
    if not path.is_file():
        return []
    records = json.loads(path.read_text())
    if limit and len(records) > limit:
        idx = np.linspace(0, len(records) - 1, limit).round().astype(int)  # spread over kinds and cases
        records = [records[i] for i in sorted(set(idx.tolist()))]
    return records


def _bar(items: list, desc: str, progress: bool) -> Any:
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="item")


def _dump(path: Path, items: list) -> None:
    from dataclasses import asdict

    path.write_text(json.dumps([asdict(i) for i in items], indent=1, ensure_ascii=False, default=str) + "\n")


def _headline(parts: dict[str, Any]) -> dict[str, Any]:
    vqa, rep, exp = parts.get("vqa", {}), parts.get("reports", {}), parts.get("experts", {})
    return {
        "closed_accuracy": vqa.get("closed_accuracy"), "open_recall": vqa.get("open_recall"),
        "closed_accuracy_other_picture": vqa.get("closed_accuracy_other_picture"), "closed_prior_baseline": vqa.get("closed_prior_baseline"),
        "closed_accuracy_from_picture": vqa.get("closed_accuracy_from_picture"), "closed_accuracy_with_expert": vqa.get("closed_accuracy_with_expert"),
        "closed_expert_called": vqa.get("closed_expert_called"),
        "bleu4": rep.get("bleu4"), "rouge_l": rep.get("rouge_l"), "finding_f1": rep.get("finding_f1"),
        "call_precision": exp.get("call_precision"), "call_recall": exp.get("call_recall"),
        "grounded_answer_rate": exp.get("grounded_answer_rate"), "right_value_rate": exp.get("right_value_rate"),
    }


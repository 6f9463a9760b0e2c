"""``m3 eval`` through the real agent loop and the experts' interface on held-out phantoms.

An oracle backend that answers every turn with the reference text (a CT report: plus the study's
findings the shown slice misses) must score perfectly (so the
harness, the scorers and the finding vocabulary agree with the data); a backend that always says
"no" must not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

import numpy as np
import pytest

from vlm.backends.base import BackendInfo


class OracleBackend:
    """Replies with the reference turn of the test record the conversation is about."""

    info = BackendInfo(name="oracle", takes_images=True)

    def __init__(self, data_dir) -> None:
        from vlm.eval.harness import load_picture

        self.by_key: dict[tuple[str, str], dict] = {}
        for stage in ("ift", "align", "medical-ift"):
            for rec in json.loads((data_dir / f"{stage}_test.json").read_text()):
                first = rec.get("images", [rec.get("image")])[0]
                pic = load_picture(data_dir / first)
                self.by_key[(_hash(pic), rec["conversations"][0]["value"].replace("<image>\n", ""))] = rec

    def stream_chat(self, messages, images=None, tools=None, config=None, cache_key=None, constraints=None) -> Iterator[str]:
        first_user = next(m for m in messages if m["role"] == "user")
        rec = self.by_key.get((_hash(images[0]), first_user["content"].replace("<image>\n", "")))
        if rec is None:  # the picture control shows another case's picture: the oracle cannot know the answer
            yield "I cannot tell."
            return
        done = sum(1 for m in messages if m["role"] == "assistant")
        gpt = [t["value"] for t in rec["conversations"] if t["from"] == "gpt"]
        meta = rec["meta"]
        beyond = [f for f in meta.get("findings", []) if f not in meta.get("picture_findings", meta.get("findings", []))]
        # a CT report states the whole study's findings, the caption only the slice's: the perfect model adds the rest
        yield gpt[done] + (f" Elsewhere in the study: {', '.join(beyond)}." if beyond else "")


class NoBackend:
    info = BackendInfo(name="always-no", takes_images=True)

    def stream_chat(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        yield "no"


def _hash(picture: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(picture).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def test_data(tmp_path_factory):
    from data.instructions import build_datasets

    out = tmp_path_factory.mktemp("evaldata")
    build_datasets({"ct": 2, "mri": 2, "cxr": 2}, out, seed=0, split="test", questions_per_case=3)
    return out


def test_a_perfect_model_scores_perfectly(test_data, tmp_path):
    from vlm.eval.harness import evaluate_model
    from vlm.eval.tools import score_dialogues, DialogueItem

    # the model alone: the agent's own expert calls for unanswered measurement questions off
    report = evaluate_model(OracleBackend(test_data), test_data, tmp_path, experts="truth", progress=False, plan_calls=False)
    h = report["headline"]
    assert report["expert_mode"] == "truth"
    assert h["closed_accuracy"] == 1.0 and h["open_recall"] == 1.0
    # the oracle answers from the picture: with another case's picture it knows nothing, except what the study's header
    # answers without the model ("Is this image a CT or an MRI?")
    swapped = json.loads((tmp_path / "vqa_other_picture_answers.json").read_text())
    header = [x for x in swapped if x["category"] == "modality"]
    assert report["vqa"]["n_other_picture"] > len(header) > 0
    assert h["closed_accuracy_other_picture"] == pytest.approx(len(header) / len(swapped))
    assert 0.3 < h["closed_prior_baseline"] <= 1.0
    assert h["finding_f1"] == 1.0 and h["bleu4"] > 90
    assert h["call_precision"] == 1.0 and h["call_recall"] == 1.0
    items = [DialogueItem(**{**d, "expected_calls": [tuple(c) for c in d["expected_calls"]],
                             "predicted_calls": [tuple(c) for c in d["predicted_calls"]], "answers": [tuple(a) for a in d["answers"]]})
             for d in json.loads((tmp_path / "dialogue_answers.json").read_text())]
    # the oracle quotes the training dialogue's numbers; CT and MRI ground truth is deterministic, so those match
    exact = score_dialogues([i for i in items if i.kind in ("ct", "mri")])
    assert exact["grounded_answer_rate"] == 1.0 and exact["n_numeric_answers"] > 0
    assert exact["right_value_rate"] == 1.0  # the oracle writes field references; the agent filled in the truth's values
    assert not any("[[" in pred for i in items for pred, _ in i.answers)
    md = (tmp_path / "eval.md").read_text()
    assert "| closed-question accuracy | 1.000 | ≥ 0.90 | yes |" in md
    assert (tmp_path / "eval.png").stat().st_size > 1000


def test_a_model_that_always_says_no_fails_the_bars(test_data, tmp_path):
    from vlm.eval.harness import evaluate_model

    report = evaluate_model(NoBackend(), test_data, tmp_path, experts="truth", progress=False, plan_calls=False)
    h = report["headline"]
    assert h["call_recall"] == 0.0
    assert h["closed_accuracy"] < 0.9
    assert h["closed_accuracy_other_picture"] == h["closed_accuracy"]  # a blind answerer loses nothing with other pictures
    assert h["finding_f1"] < 0.85
    assert "| expert-call recall | 0.000 | ≥ 0.95 | no |" in (tmp_path / "eval.md").read_text()


def test_public_vqa_file_uses_the_same_scorer(tmp_path):
    """A VQA-RAD file in its released format, answered through the agent with no study volumes."""
    from PIL import Image

    from vlm.eval.harness import evaluate_vqa_file

    folder = tmp_path / "VQA_RAD Image Folder"
    folder.mkdir()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(folder / "synpic1.jpg")
    entries = [{"qid": 1, "image_name": "synpic1.jpg", "question": "Is there a fracture?", "answer": "No", "answer_type": "CLOSED",
                "question_type": "PRES", "image_organ": "HEAD", "phrase_type": "test_freeform"},
               {"qid": 2, "image_name": "synpic1.jpg", "question": "Is the skull intact?", "answer": "yes", "answer_type": "CLOSED ",
                "question_type": "PRES", "image_organ": "HEAD", "phrase_type": "test_para"},
               {"qid": 3, "image_name": "synpic1.jpg", "question": "What organ is shown?", "answer": "brain", "answer_type": "OPEN",
                "question_type": "ORGAN", "image_organ": "HEAD", "phrase_type": "freeform"}]
    path = tmp_path / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(entries))
    report = evaluate_vqa_file(NoBackend(), path, tmp_path / "out", fmt="vqa-rad", experts="truth", progress=False)
    assert report["vqa"]["n_closed"] == 2 and report["vqa"]["n_open"] == 1
    assert report["headline"]["closed_accuracy"] == 0.5  # "no" is right once
    assert report["headline"]["open_recall"] == 0.0


def test_picture_control_swaps_in_the_next_case_of_the_same_kind():
    from vlm.eval.harness import _other_pictures

    def rec(kind, seed, q, images):
        key = {"images": images} if len(images) > 1 else {"image": images[0]}
        return {**key, "meta": {"kind": kind, "seed": seed, "answer_type": "closed"}, "conversations": [{"from": "human", "value": q}]}

    records = [rec("ct", 1, "a", ["ct1.png"]), rec("ct", 1, "b", ["ct1.png"]), rec("ct", 2, "c", ["ct2.png"]),
               rec("ct", 3, "d", ["ct3.png"]), rec("mri", 4, "e", ["m4a.png", "m4b.png"]), rec("cxr", 5, "f", ["x5.png"]),
               rec("mri", 6, "g", ["m6a.png", "m6b.png"])]
    out = _other_pictures(records)
    got = {r["conversations"][0]["value"]: r["other_pictures"] for r in out}
    assert got == {"a": ["ct2.png"], "b": ["ct2.png"], "c": ["ct3.png"], "d": ["ct1.png"], "e": ["m6a.png", "m6b.png"], "g": ["m4a.png", "m4b.png"]}
    assert all(r["meta"]["seed"] == o["meta"]["seed"] for r, o in zip(out, [x for x in records if x["meta"]["kind"] != "cxr"]))


def test_limit_spreads_the_items_over_the_file(tmp_path):
    from vlm.eval.harness import _records

    path = tmp_path / "ift_test.json"
    path.write_text(json.dumps([{"id": i} for i in range(10)]))
    assert [r["id"] for r in _records(path, 4)] == [0, 3, 6, 9]
    assert len(_records(path, 0)) == 10 and _records(tmp_path / "missing.json", 4) == []

"""VQA-RAD, SLAKE and PathVQA loaders on small fixtures written in each set's released format."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from data.public import PublicFormatError, load_pathvqa, load_slake, load_vqa_rad

LLAVA_KEYS = {"id", "image", "conversations", "meta"}


def test_vqa_rad_public_json(tmp_path):
    entries = [
        {"qid": 1, "phrase_type": "freeform", "qid_linked_id": "03f451ca", "image_case_url": "https://medpix.example/case",
         "image_name": "synpic54610.jpg", "image_organ": "HEAD", "evaluation": "not evaluated", "question": "Are regions of the brain infarcted?",
         "question_rephrase": "NULL", "question_relation": "NULL", "question_frame": "NULL", "question_type": "PRES", "answer": "Yes", "answer_type": "CLOSED"},
        {"qid": 2, "phrase_type": "test_freeform", "image_name": "synpic29265.jpg", "image_organ": "CHEST", "question": "How many lesions are there?",
         "question_type": "COUNT", "answer": 2, "answer_type": "OPEN "},
    ]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(entries))
    recs = load_vqa_rad(tmp_path / "VQA_RAD Dataset Public.json")
    assert [set(r) for r in recs] == [LLAVA_KEYS, LLAVA_KEYS]
    assert recs[0]["image"].endswith("VQA_RAD Image Folder/synpic54610.jpg")
    assert recs[0]["conversations"] == [{"from": "human", "value": "<image>\nAre regions of the brain infarcted?"}, {"from": "gpt", "value": "Yes"}]
    assert recs[0]["meta"]["answer_type"] == "closed" and recs[1]["meta"]["answer_type"] == "open"
    assert recs[1]["meta"]["answer"] == "2" and recs[1]["meta"]["split"] == "test"
    assert [r["id"] for r in load_vqa_rad(tmp_path / "VQA_RAD Dataset Public.json", split="test")] == ["vqa-rad-2"]


def test_slake_split_file_keeps_english(tmp_path):
    entries = [
        {"img_id": 102, "img_name": "xmlab102/source.jpg", "question": "Which organ is abnormal?", "answer": "Lung", "q_lang": "en",
         "location": "Lung", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 11934},
        {"img_id": 102, "img_name": "xmlab102/source.jpg", "question": "哪个器官异常？", "answer": "肺", "q_lang": "zh",
         "location": "Lung", "modality": "CT", "answer_type": "OPEN", "base_type": "vqa", "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 11935},
        {"img_id": 7, "img_name": "xmlab7/source.jpg", "question": "Is this a MRI?", "answer": "No", "q_lang": "en",
         "location": "Brain", "modality": "CT", "answer_type": "CLOSED", "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 5},
    ]
    (tmp_path / "train.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    recs = load_slake(tmp_path / "train.json")
    assert [r["id"] for r in recs] == ["slake-11934", "slake-5"]
    assert recs[0]["image"].endswith(os.path.join("imgs", "xmlab102", "source.jpg"))
    assert recs[1]["meta"]["answer_type"] == "closed" and recs[0]["meta"]["modality"] == "CT"
    assert len(load_slake(tmp_path / "train.json", language=None)) == 3


def test_pathvqa_pickles_both_forms_and_refuses_code(tmp_path):
    qas = tmp_path / "pvqa" / "qas" / "train"
    qas.mkdir(parents=True)
    with open(qas / "train_qa.pkl", "wb") as f:
        pickle.dump([{"image": "train_0422", "question": "What have lost their nuclei?", "answer": "neutrophils"},
                     {"image": "train_0001", "question": "Is this a liver?", "answer": "yes"}], f)
    recs = load_pathvqa(qas / "train_qa.pkl")
    assert recs[0]["image"].endswith(os.path.join("pvqa", "images", "train", "train_0422.jpg"))
    assert [r["meta"]["answer_type"] for r in recs] == ["open", "closed"]
    with open(qas / "train_vqa.pkl", "wb") as f:
        pickle.dump([{"img_id": "train_0003", "sent": "Is there fibrosis?", "label": {"no": 1}, "question_id": 3}], f)
    (rec,) = load_pathvqa(qas / "train_vqa.pkl")
    assert rec["conversations"][1]["value"] == "no" and rec["meta"]["answer_type"] == "closed"

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(qas / "evil.pkl", "wb") as f:
        pickle.dump([Exploit()], f)
    with pytest.raises(PublicFormatError, match="refusing to load"):
        load_pathvqa(qas / "evil.pkl")


def test_wrong_format_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(PublicFormatError, match=r"bad.json: entry 0 .*missing \['image_name', 'answer'\]"):
        load_vqa_rad(tmp_path / "bad.json")
    with pytest.raises(PublicFormatError, match="expected a JSON list"):
        (tmp_path / "d.json").write_text("{}")
        load_slake(tmp_path / "d.json")

import argparse
import json

import pytest
from transformers import AutoModelForCausalLM

from vlm.compress.cli import add_parsers
from vlm.compress.depth import load_pruned_lm
from vlm.compress.masks_io import MASKS_FILENAME, load_masks


@pytest.fixture
def lm_folder(tmp_path, tiny_lm):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tiny_lm.save_pretrained(tmp_path / "lm")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a 12 mm lesion in the left kidney"] * 20, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path / "lm")
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"a {i} mm lesion in the left kidney"}) for i in range(120)))
    return tmp_path / "lm", data


def _run(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_maskllm_mft_and_depth_commands_write_loadable_models(tmp_path, lm_folder):
    model, data = lm_folder
    common = ["--data", str(data), "--seq-len", "16"]
    assert _run(["compress", "maskllm", "--model", str(model), "--out", str(tmp_path / "ml"), "--steps", "3", "--batch-size", "4", *common]) == 0
    masks = load_masks(tmp_path / "ml" / MASKS_FILENAME)
    assert masks and json.loads((tmp_path / "ml" / "compress.json").read_text())["prior"] == "sparsegpt"
    assert _run(["compress", "mft", "--model", str(tmp_path / "ml"), "--out", str(tmp_path / "ft"), "--steps", "2", *common]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "ft") is not None
    assert _run(["compress", "depth", "--model", str(model), "--out", str(tmp_path / "dp"), "--auto-blocks", "1", "--recovery", "bias", *common]) == 0
    record = json.loads((tmp_path / "dp" / "compress.json").read_text())
    assert len(record["config"]["blocks"]) == 1
    assert load_pruned_lm(tmp_path / "dp") is not None


def test_maskllm_warns_when_it_would_reuse_a_small_calibration_set(tmp_path, lm_folder, caplog):
    model, data = lm_folder
    common = ["--data", str(data), "--seq-len", "16", "--batch-size", "4"]
    with caplog.at_level("WARNING", logger="vlm.compress.cli"):
        assert _run(["compress", "maskllm", "--model", str(model), "--out", str(tmp_path / "a"), "--steps", "3", *common]) == 0
    assert "over-fit" not in caplog.text  # 3 steps × 4 rows: under one pass over the calibration blocks
    with caplog.at_level("WARNING", logger="vlm.compress.cli"):
        assert _run(["compress", "maskllm", "--model", str(model), "--out", str(tmp_path / "b"), "--steps", "40", *common]) == 0
    assert "over-fit" in caplog.text and "calibration samples" in caplog.text

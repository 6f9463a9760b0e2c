import argparse
import json

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from vlm.compress.cli import add_parsers
from vlm.compress.masks_io import MASKS_FILENAME, save_masks
from vlm.compress.oneshot import OneShotConfig, prune_oneshot
from vlm.compress.targets import check_two_four, prunable_linears
from vlm.export import ExportConfig, ExportError, ManifestError, export_build, int8_available, verify_manifest


@pytest.fixture
def vila_folder(tmp_path, tiny_lm):
    root = tmp_path / "model"
    (root / "vision_tower").mkdir(parents=True)
    (root / "mm_projector").mkdir()
    (root / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama"}))
    save_file({"vision_model.patch.weight": torch.randn(16, 3, 4, 4)}, str(root / "vision_tower" / "model.safetensors"))
    save_file({"layers.2.weight": torch.randn(64, 64)}, str(root / "mm_projector" / "model.safetensors"))
    tiny_lm.save_pretrained(root / "llm")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["no focal lesion in the liver"] * 20, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>").save_pretrained(root / "llm")
    return root


def test_build_with_masks_has_two_four_weights_card_and_a_manifest_that_catches_tampering(tmp_path, vila_folder, tiny_lm):
    masks = prune_oneshot(tiny_lm, None, OneShotConfig(method="magnitude"), inplace=False)
    mask_file = save_masks(masks, tmp_path / "m" / MASKS_FILENAME)
    build = export_build(vila_folder, tmp_path / "build", ExportConfig(masks=str(mask_file), dtype="float16"))
    verify_manifest(build)
    lm = AutoModelForCausalLM.from_pretrained(build / "llm")
    assert lm.dtype == torch.float16
    for name, layer in prunable_linears(lm).items():
        check_two_four(layer.weight != 0, name)  # ready for torch.sparse.to_sparse_semi_structured on a GPU
    assert (build / "llm" / MASKS_FILENAME).is_file()
    assert AutoTokenizer.from_pretrained(build / "llm")("no lesion")["input_ids"]
    card = (build / "model_card.md").read_text()
    assert "## Memory and hardware" in card and "Measured peak CPU memory" in card and "bfloat16" in card
    assert f"LM {sum(p.numel() for p in tiny_lm.parameters()):,}" in card
    (build / "mm_projector" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="changed mm_projector/model.safetensors"):
        verify_manifest(build)
    (build / "extra.bin").write_bytes(b"x")
    with pytest.raises(ManifestError, match="unlisted extra.bin"):
        verify_manifest(build)


def test_int8_build_loads_and_answers_like_the_original(tmp_path, vila_folder, tiny_lm):
    ok, why = int8_available()
    if not ok:  # no build without the int8 it was asked for (tests/vlm/test_build_files.py checks the refusal either way)
        with pytest.raises(ExportError, match="torchao"):
            export_build(vila_folder, tmp_path / "b8", ExportConfig(int8=True, dtype="float32", measure_memory=False))
        assert not (tmp_path / "b8").exists()
        return
    build = export_build(vila_folder, tmp_path / "b8", ExportConfig(int8=True, dtype="float32", measure_memory=False))
    verify_manifest(build)
    notes = json.loads((build / "build.json").read_text())
    assert notes["int8_applied"]
    lm = AutoModelForCausalLM.from_pretrained(build / "llm")
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = tiny_lm(input_ids=ids).logits, lm(input_ids=ids).logits
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert (build / "llm" / "model.safetensors").stat().st_size < 0.7 * (vila_folder / "llm" / "model.safetensors").stat().st_size


def test_export_refuses_a_folder_without_vila_layout_and_a_non_empty_target(tmp_path, vila_folder):
    with pytest.raises(ExportError, match="missing .*vision_tower"):
        export_build(vila_folder / "llm", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        export_build(vila_folder, tmp_path / "full")


def test_cli_oneshot_then_export(tmp_path, vila_folder):
    data = tmp_path / "site.txt"
    data.write_text("\n".join(["no focal lesion in the liver"] * 80))
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compress", "oneshot", "--model", str(vila_folder), "--data", str(data), "--out", str(tmp_path / "pruned"),
                              "--method", "wanda", "--seq-len", "16"])
    assert args.func(args) == 0
    assert (tmp_path / "pruned" / "vision_tower" / "model.safetensors").is_file()
    args = parser.parse_args(["export", "--model", str(tmp_path / "pruned"), "--out", str(tmp_path / "build"),
                              "--masks", str(tmp_path / "pruned" / "llm" / MASKS_FILENAME), "--no-measure"])
    assert args.func(args) == 0
    verify_manifest(tmp_path / "build")

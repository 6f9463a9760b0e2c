"""Published VILA-M3 layout: a tiny checkpoint written exactly as Llama3-VILA-M3-8B's loads through
``load_model`` and computes what VILA computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vlm.model import VILA_IMAGE_TOKEN_INDEX, load_model
from vlm.tokenizer import TokenizerConfig, train_tokenizer
from vlm.vila import VILA_SYSTEM_PROMPTS, render_vila_prompt, tokenize_with_images

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _vila_flat_square(x: torch.Tensor) -> torch.Tensor:
    """VILA's DownSampleBlock, step by step as its code does it (reference for the test)."""
    n, w, h, c = x.size()
    if w % 2 == 1:
        x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1).contiguous()
        n, w, h, c = x.size()
    if h % 2 == 1:
        x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2).contiguous()
        n, w, h, c = x.size()
    x = x.view(n, w, int(h / 2), int(c * 2))
    x = x.permute(0, 2, 1, 3).contiguous()
    return x.view(n, int(h / 2), int(w / 2), int(c * 4))


@pytest.fixture(scope="module")
def vila_dir(tmp_path_factory, make):
    """Config, llm/ (bf16, sharded with an index), vision_tower/ (vision_model.* keys), mm_projector/."""
    root = tmp_path_factory.mktemp("vila") / "Llama3-VILA-M3-tiny"
    tok = train_tokenizer(make.corpus, None, TokenizerConfig(
        vocab_size=500, special_tokens=LLAMA3_SPECIALS, plain_added_tokens=[], bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>", pad_token="<|end_of_text|>", chat_template=None))
    llm = make.llama(len(tok), seed=5).to(torch.bfloat16)
    llm.save_pretrained(root / "llm", max_shard_size="40KB")
    tok.save_pretrained(root / "llm")
    tower = make.siglip(seed=6)
    tower.save_pretrained(root / "vision_tower")
    weights = root / "vision_tower" / "model.safetensors"  # published key names: vision_model.*
    save_file({"vision_model." + k: v for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"})
    (root / "vision_tower" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 70, "width": 70},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    torch.manual_seed(7)
    proj = {"layers.1.weight": 1 + 0.1 * torch.randn(128), "layers.1.bias": 0.1 * torch.randn(128),
            "layers.2.weight": 0.1 * torch.randn(64, 128), "layers.2.bias": 0.1 * torch.randn(64),
            "layers.4.weight": 0.1 * torch.randn(64, 64), "layers.4.bias": 0.1 * torch.randn(64)}
    (root / "mm_projector").mkdir()
    save_file({k: v.to(torch.bfloat16) for k, v in proj.items()}, str(root / "mm_projector" / "model.safetensors"))
    proj_cfg = {"architectures": ["MultimodalProjector"], "mm_projector_type": "mlp_downsample", "model_type": "v2l_projector"}
    (root / "mm_projector" / "config.json").write_text(json.dumps(proj_cfg))
    llm_cfg = json.loads((root / "llm" / "config.json").read_text())
    vt_cfg = json.loads((root / "vision_tower" / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({
        "_name_or_path": "Llama3-VILA-M3-tiny", "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama",
        "llm_cfg": llm_cfg, "vision_tower_cfg": vt_cfg, "mm_projector_cfg": proj_cfg,
        "hidden_size": 64, "mm_hidden_size": 32, "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch",
        "image_aspect_ratio": "resize", "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "num_video_frames": 8, "tune_mm_projector": True, "torch_dtype": "bfloat16", "resume_path": "./checkpoints",
    }))
    return root


def test_layout_is_the_published_one(vila_dir):
    llm_files = {p.name for p in (vila_dir / "llm").iterdir()}
    assert "model.safetensors.index.json" in llm_files and sum(n.endswith(".safetensors") for n in llm_files) >= 2
    keys = load_file(str(next((vila_dir / "vision_tower").glob("*.safetensors")))).keys()
    assert all(k.startswith("vision_model.") for k in keys)


def test_vila_checkpoint_loads_and_matches_vila_computation(vila_dir):
    model = load_model(vila_dir)
    assert model.config.chat_format == "llama_3" and model.config.source_format == "llava_llama"
    assert model.image_token_index == VILA_IMAGE_TOKEN_INDEX and model.llm.dtype == torch.float32

    # prompt: VILA's llama_3 conversation, its own system prompt, <image>\n before the question
    messages = [{"role": "system", "content": "ignored for VILA"}, {"role": "user", "content": "<image>\nWhat is shown?"}]
    prompt = render_vila_prompt(messages, "llama_3")
    assert prompt == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + VILA_SYSTEM_PROMPTS["llama_3"]
                      + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is shown?<|eot_id|>"
                      + "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenize_with_images(prompt, model.tokenizer, VILA_IMAGE_TOKEN_INDEX)
    bos = model.tokenizer.bos_token_id
    assert ids[:2] == [bos, bos] and bos not in ids[2:] and ids.count(VILA_IMAGE_TOKEN_INDEX) == 1

    image = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    full = torch.tensor([model.expand_image_tokens(ids)])
    pixels = model.vision_tower.preprocess([image], model.config.image_aspect_ratio)
    with torch.no_grad():
        ours = model(full, pixel_values=pixels).logits

    # the same by hand, from the files, as VILA 1.5 computes it
    from transformers import LlamaForCausalLM, SiglipVisionModel

    ref_px = np.asarray(Image.fromarray(image).resize((70, 70), Image.BICUBIC), np.float32) / 255.0
    ref_px = torch.from_numpy(((ref_px - 0.5) / 0.5).transpose(2, 0, 1)).unsqueeze(0)
    assert torch.allclose(pixels, ref_px, atol=1e-6)
    tower = SiglipVisionModel.from_pretrained(vila_dir / "vision_tower").eval()
    llm = LlamaForCausalLM.from_pretrained(vila_dir / "llm", dtype=torch.float32).eval()
    w = {k: v.float() for k, v in load_file(str(vila_dir / "mm_projector" / "model.safetensors")).items()}
    with torch.no_grad():
        feats = tower(ref_px, output_hidden_states=True).hidden_states[-2]  # (1, 25, 32), before post_layernorm
        x = _vila_flat_square(feats.reshape(1, 5, 5, 32)).reshape(1, -1, 128)
        x = torch.nn.functional.layer_norm(x, (128,), w["layers.1.weight"], w["layers.1.bias"])
        x = torch.nn.functional.gelu(x @ w["layers.2.weight"].T + w["layers.2.bias"])
        x = x @ w["layers.4.weight"].T + w["layers.4.bias"]  # (1, 9, 64)
        at = ids.index(VILA_IMAGE_TOKEN_INDEX)
        emb = llm.get_input_embeddings()
        embeds = torch.cat([emb(torch.tensor([ids[:at]])), x, emb(torch.tensor([ids[at + 1:]]))], dim=1)
        ref = llm(inputs_embeds=embeds).logits
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-4)


def test_vicuna_format_and_pad_aspect(vila_dir, tmp_path):
    prompt = render_vila_prompt([{"role": "user", "content": "<image>\nAny effusion?"},
                                 {"role": "assistant", "content": "<CXR()>"},
                                 {"role": "tool", "content": "{\"expert\": \"cxr_classification\"}"}], "vicuna_v1")
    assert prompt.startswith(VILA_SYSTEM_PROMPTS["vicuna_v1"] + " USER: <image>\nAny effusion? ASSISTANT: <CXR()></s>USER: The results are")
    assert prompt.endswith("Use this result to respond to this prompt:\nAny effusion? ASSISTANT:")
    model = load_model(vila_dir)
    wide = np.zeros((20, 60), np.uint8)
    wide[:, :] = 255
    padded = model.vision_tower.preprocess([wide], "pad")
    # padding uses the mean colour (0.5 → 127): rows above and below the picture normalise to about 0
    assert abs(float(padded[0, 0, 0, 35])) < 0.02 and float(padded[0, 0, 35, 35]) > 0.95


def test_tools_become_vila_m3_model_cards():
    tools = [{"type": "function", "function": {"name": "ct_segmentation", "description": "CT organs and lesions.",
              "parameters": {"type": "object", "properties": {"targets": {"anyOf": [{"type": "string", "enum": ["everything", "liver tumor"]}]}}}}}]
    prompt = render_vila_prompt([{"role": "user", "content": "<image>\nHow big is the liver?"}], "llama_3", tools)
    assert "<image>\nHere is a list of available expert models:\n<VISTA3D(args)> CT organs and lesions. Valid args are: 'everything', 'liver tumor'" in prompt
    assert prompt.index("Give the model <NAME(args)>") < prompt.index("How big is the liver?")

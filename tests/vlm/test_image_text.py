"""Any local AutoModelForImageTextToText checkpoint drives the agent: a tiny LLaVA written on the spot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm.backends import load_backend
from vlm.backends.base import GenerationConfig
from vlm.backends.image_text import ImageTextBackend, to_content_parts
from vlm.tokenizer import TokenizerConfig, train_tokenizer

LLAVA_TEMPLATE = (
    "{%- for m in messages -%}{{- m['role'] | upper + ': ' -}}"
    "{%- for p in m['content'] -%}{%- if p['type'] == 'image' -%}{{- '<image>\\n' -}}{%- else -%}{{- p['text'] -}}{%- endif -%}{%- endfor -%}"
    "{{- '\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, make):
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    root = tmp_path_factory.mktemp("llava") / "tiny-llava"
    tok = train_tokenizer(make.corpus, None, TokenizerConfig(vocab_size=500, chat_template=None, eos_token="</s>",
                                                            special_tokens=["<pad>", "</s>", "<image>"], plain_added_tokens=[]))
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE,
                               num_additional_image_tokens=1)
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=512),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2, vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(config).eval().save_pretrained(root)
    processor.save_pretrained(root)
    return root


def test_content_parts_and_tool_turns():
    msgs = [{"role": "user", "content": "<image>\nAny effusion?"}, {"role": "assistant", "content": "<CXR()>"},
            {"role": "tool", "content": "<image>\n{\"expert\": \"cxr\"}"}]
    parts = to_content_parts(msgs, tool_role=False)
    assert parts[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Any effusion?"}]
    assert parts[2]["role"] == "user" and parts[2]["content"][0] == {"type": "text", "text": "Expert result: "}
    assert parts[2]["content"][1] == {"type": "image"}


def test_llava_checkpoint_streams_what_generate_gives(llava_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from PIL import Image

    backend = load_backend(llava_dir)
    assert isinstance(backend, ImageTextBackend)
    image = np.random.default_rng(0).integers(0, 256, size=(40, 50), dtype=np.uint8)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat is shown?"}]
    pieces = list(backend.stream_chat(msgs, [image], config=GenerationConfig(max_new_tokens=8)))
    assert backend.render(msgs) == "SYSTEM: Be brief.\nUSER: <image>\nWhat is shown?\nASSISTANT:"

    model = AutoModelForImageTextToText.from_pretrained(llava_dir).eval()
    proc = AutoProcessor.from_pretrained(llava_dir)
    inputs = proc(text=backend.render(msgs), images=[Image.fromarray(np.repeat(image[:, :, None], 3, 2))], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=proc.tokenizer.eos_token_id)
    expected = proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "".join(pieces) == expected and len(out[0]) > inputs["input_ids"].shape[1]

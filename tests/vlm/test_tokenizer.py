"""The BPE tokenizer and its chat template (tools once in the system turn, tool calls, tool turns)."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from vlm.tokenizer import DEFAULT_SYSTEM_PROMPT, ROLE_TOKENS, train_tokenizer

TOOLS = [{"type": "function", "function": {"name": "ct_segmentation", "description": "CT organs.",
          "parameters": {"type": "object", "properties": {"targets": {"type": "string"}}}}}]


def _conversation():
    return [
        {"role": "system", "content": "You are m3."},
        {"role": "user", "content": "<image>\nWhat is the liver volume?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "ct_segmentation", "arguments": {"targets": "liver"}}}]},
        {"role": "tool", "content": '{"expert": "ct_segmentation", "measurements": ["liver volume: 1523.4 mL"]}'},
        {"role": "assistant", "content": "The liver volume is 1523.4 mL."},
        {"role": "user", "content": "And the spleen?"},
    ]


def test_template_renders_every_role_and_tools_once(m3_tokenizer):
    text = m3_tokenizer.apply_chat_template(_conversation(), tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|system|>\nYou are m3.\n\n# Experts\n")
    assert text.count('"name": "ct_segmentation", "description"') == 1  # the tool schema, once
    assert json.dumps(TOOLS[0]) in text
    assert '<|assistant|>\n<tool_call>{"name": "ct_segmentation", "arguments": {"targets": "liver"}}</tool_call><|end|>\n' in text
    assert '<|tool|>\n{"expert": "ct_segmentation", "measurements": ["liver volume: 1523.4 mL"]}<|end|>\n' in text
    assert text.endswith("<|user|>\nAnd the spleen?<|end|>\n<|assistant|>\n")


def test_default_system_prompt_and_no_tools(m3_tokenizer):
    text = m3_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=False)
    assert text == f"<|system|>\n{DEFAULT_SYSTEM_PROMPT}<|end|>\n<|user|>\nHi<|end|>\n"


def test_special_tokens_are_single_ids_and_tool_call_survives_decoding(m3_tokenizer):
    for tok in ROLE_TOKENS + ("<image>", "<tool_call>", "</tool_call>"):
        assert len(m3_tokenizer(tok, add_special_tokens=False).input_ids) == 1, tok
    ids = m3_tokenizer('<|assistant|>\n<tool_call>{"name": "x"}</tool_call><|end|>', add_special_tokens=False).input_ids
    # role markers are dropped when streaming, the call is not, so the agent can read it
    assert m3_tokenizer.decode(ids, skip_special_tokens=True) == '\n<tool_call>{"name": "x"}</tool_call>'
    text = "The liver volume is 1523.4 mL, 23 mm lesion."
    assert m3_tokenizer.decode(m3_tokenizer(text).input_ids) == text  # byte-level: lossless


def test_saved_in_hf_format_and_reloads(m3_tokenizer, tmp_path, make):
    tok = train_tokenizer(make.corpus[:50], tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    conv = _conversation()
    assert again.apply_chat_template(conv, tools=TOOLS, tokenize=False) == tok.apply_chat_template(conv, tools=TOOLS, tokenize=False)
    assert again.eos_token == "<|end|>"


def test_split_digits_gives_one_token_per_digit_and_decodes_back():
    from vlm.tokenizer import TokenizerConfig

    corpus = ["liver volume: 1253.3 mL; largest diameter 20.1 mm; count 2"] * 40
    text = "liver volume: 1253.3 mL"
    split = train_tokenizer(corpus, None, TokenizerConfig(vocab_size=400, split_digits=True))
    merged = train_tokenizer(corpus, None, TokenizerConfig(vocab_size=400))
    digits = [t for t in split.tokenize(text) if any(c.isdigit() for c in t)]
    assert digits == ["1", "2", "5", "3", "3"]
    assert any(len([c for c in t if c.isdigit()]) > 1 for t in merged.tokenize(text))  # BPE merges digit runs otherwise
    assert split.decode(split(text)["input_ids"]) == text

"""The tokenizer of m3's own small models: byte-level BPE + a chat template that takes ``tools=``.

``train_tokenizer(texts, out_dir)`` trains with ``tokenizers`` and saves a ``PreTrainedTokenizerFast``
(Hugging Face format) whose chat template renders ``system`` / ``user`` / ``assistant`` / ``tool``
turns. Tools (the experts' schemas) are given once, in the system turn; an assistant's calls are
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (either in its content or in HF-style
``tool_calls``). ``<tool_call>`` / ``</tool_call>`` are added tokens that are *not* special, so they
survive ``skip_special_tokens`` while streaming and the agent can see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

__all__ = ["TokenizerConfig", "train_tokenizer", "CHAT_TEMPLATE", "DEFAULT_SYSTEM_PROMPT", "ROLE_TOKENS"]

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>")
DEFAULT_SYSTEM_PROMPT = (
    "You are m3, a medical imaging assistant. Answer from the images and, for measurements, from the "
    "expert results; never invent a number."
)

CHAT_TEMPLATE = r"""
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system = messages[0]['content'] -%}{%- set rest = messages[1:] -%}
{%- else -%}
  {%- set system = default_system -%}{%- set rest = messages -%}
{%- endif -%}
{{- '<|system|>\n' + system -}}
{%- if tools -%}
  {{- '\n\n# Experts\nYou can call these experts. To call one, write <tool_call>{"name": NAME, "arguments": {...}}</tool_call> and stop.\n<tools>' -}}
  {%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
  {{- '\n</tools>' -}}
{%- endif -%}
{{- '<|end|>\n' -}}
{%- for m in rest -%}
  {%- if m['role'] == 'user' -%}
    {{- '<|user|>\n' + m['content'] + '<|end|>\n' -}}
  {%- elif m['role'] == 'assistant' -%}
    {{- '<|assistant|>\n' + (m['content'] or '') -}}
    {%- for tc in m['tool_calls'] or [] -%}
      {%- set f = tc['function'] if tc['function'] is defined else tc -%}
      {{- '<tool_call>' + ({'name': f['name'], 'arguments': f['arguments']} | tojson) + '</tool_call>' -}}
    {%- endfor -%}
    {{- '<|end|>\n' -}}
  {%- elif m['role'] == 'tool' -%}
    {{- '<|tool|>\n' + m['content'] + '<|end|>\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}
""".strip().replace("default_system", repr(DEFAULT_SYSTEM_PROMPT))


@dataclass
class TokenizerConfig:
    """What to train. ``bos_token`` set: it is prepended to every encoding (Llama-style)."""

    vocab_size: int = 8000
    min_frequency: int = 2
    special_tokens: list[str] = field(default_factory=lambda: ["<|pad|>", "<|endoftext|>", *ROLE_TOKENS, "<image>"])
    plain_added_tokens: list[str] = field(default_factory=lambda: ["<tool_call>", "</tool_call>"])
    bos_token: str | None = None
    eos_token: str = "<|end|>"
    pad_token: str = "<|pad|>"
    chat_template: str | None = CHAT_TEMPLATE
    model_max_length: int = 4096
    split_digits: bool = False  # True: one token per digit (LLaMA-style), for numbers copied from expert results


def train_tokenizer(texts: Iterable[str], out_dir: str | Path | None = None, config: TokenizerConfig | None = None):
    """Train byte-level BPE on ``texts``; returns a ``PreTrainedTokenizerFast`` (saved to ``out_dir``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    cfg = config or TokenizerConfig()
    specials = list(dict.fromkeys(cfg.special_tokens + ([cfg.bos_token] if cfg.bos_token else []) + [cfg.eos_token, cfg.pad_token]))
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if cfg.split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in cfg.plain_added_tokens])
    if cfg.bos_token:
        bos_id = tok.token_to_id(cfg.bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cfg.bos_token} $A", pair=f"{cfg.bos_token} $A {cfg.bos_token} $B", special_tokens=[(cfg.bos_token, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=cfg.bos_token, eos_token=cfg.eos_token, pad_token=cfg.pad_token,
        model_max_length=cfg.model_max_length, clean_up_tokenization_spaces=False,
    )
    extra = [t for t in specials if t not in (cfg.bos_token, cfg.eos_token, cfg.pad_token)]
    fast.add_special_tokens({"additional_special_tokens": extra})
    if cfg.chat_template:
        fast.chat_template = cfg.chat_template
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast

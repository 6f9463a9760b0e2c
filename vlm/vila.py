"""Published VILA 1.5 / VILA-M3 checkpoints: config mapping, conversation templates, prompt tokens.

``load_model(path)`` (``vlm.model``) calls ``config_from_vila`` when ``config.json`` says
``model_type: llava_llama``; the sub-folders load as they are (``llm/`` a Llama causal LM, maybe bf16
and sharded with an index; ``vision_tower/`` a ``SiglipVisionModel`` with ``vision_model.*`` keys;
``mm_projector/`` with ``layers.1/2/4``), each read straight into the requested dtype
(``load_model(path, dtype="bfloat16")`` keeps published bf16 weights as they are, with no float32 copy). Prompts follow VILA's own conversation classes:
``llama_3`` (VILA-M3 8B) and ``vicuna_v1`` (3B / 13B), with VILA's system prompts, and
``tokenize_with_images`` splits on ``<image>`` as VILA's ``tokenizer_image_token`` does (which leaves
two BOS tokens at the start of a llama_3 prompt; VILA keeps them, so do we).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from vlm.model_config import IMAGE_TOKEN, VILA_IMAGE_TOKEN_INDEX, M3Config, ModelLoadError

__all__ = ["config_from_vila", "render_vila_prompt", "tokenize_with_images", "VILA_SYSTEM_PROMPTS", "VILA_CHAT_FORMATS"]

VILA_SYSTEM_PROMPTS = {
    "llama_3": (
        "You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language."
    ),
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
}
VILA_CHAT_FORMATS = tuple(VILA_SYSTEM_PROMPTS)
_LLAMA3_BOS = "<|begin_of_text|>"
_LLAMA3_ROLES = ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n")
_LLAMA3_SEP = "<|eot_id|>"


def config_from_vila(raw: dict[str, Any], path: str | Path) -> M3Config:
    """Map a VILA ``config.json`` (``LlavaLlamaModel``, nested ``llm_cfg`` / ``vision_tower_cfg`` /
    ``mm_projector_cfg``) onto ``M3Config``; the chat format follows the LLM's tokenizer."""
    path = Path(path)
    if raw.get("mm_use_im_start_end") or raw.get("mm_use_im_patch_token"):
        raise ModelLoadError("VILA checkpoints with mm_use_im_start_end or mm_use_im_patch_token are not supported; VILA 1.5 / VILA-M3 set both false.")
    proj_cfg = raw.get("mm_projector_cfg") or {}
    aspect = raw.get("image_aspect_ratio") or "resize"
    if aspect not in ("resize", "pad"):
        raise ModelLoadError(f"VILA image_aspect_ratio must be 'resize' or 'pad', got {aspect!r} (dynamic tiling is not supported).")
    return M3Config(
        projector_type=proj_cfg.get("mm_projector_type") or raw.get("mm_projector_type") or "mlp_downsample",
        vision_select_layer=int(raw.get("mm_vision_select_layer", -2)),
        vision_select_feature=raw.get("mm_vision_select_feature") or "cls_patch",
        image_aspect_ratio=aspect,
        chat_format=raw.get("conv_mode") or _detect_chat_format(path / "llm"),
        image_token=IMAGE_TOKEN,
        image_token_index=VILA_IMAGE_TOKEN_INDEX,
        source_format="llava_llama",
        version=str(raw.get("_name_or_path", "")),
    )


def render_vila_prompt(messages: Sequence[dict[str, Any]], chat_format: str, tools: Sequence[dict[str, Any]] | None = None) -> str:
    """One prompt string in VILA's conversation format, ending with the assistant's turn opening.

    ``system`` messages are replaced by VILA's own system prompt (what the model was trained with);
    tools become VILA-M3 model cards at the start of the first user message; a ``tool`` message becomes
    a user turn "The results are ... Use this result to respond to this prompt: <question>", as in
    VILA-M3's demo.
    """
    if chat_format not in VILA_CHAT_FORMATS:
        raise ModelLoadError(f"VILA chat format must be one of {VILA_CHAT_FORMATS}, got {chat_format!r}.")
    turns = _vila_turns(messages, tools)
    if chat_format == "llama_3":
        ret = _LLAMA3_BOS + "<|start_header_id|>system<|end_header_id|>\n\n" + VILA_SYSTEM_PROMPTS["llama_3"] + _LLAMA3_SEP
        for role, text in turns:
            ret += _LLAMA3_ROLES[role] + text + _LLAMA3_SEP
        return ret + _LLAMA3_ROLES[1]
    ret = VILA_SYSTEM_PROMPTS["vicuna_v1"] + " "
    for role, text in turns:
        ret += ("USER", "ASSISTANT")[role] + ": " + text + (" ", "</s>")[role]
    return ret + "ASSISTANT:"


def tokenize_with_images(prompt: str, tokenizer: Any, image_token_index: int, *, add_special_tokens: bool = True,
                         image_token: str = IMAGE_TOKEN) -> list[int]:
    """Token ids of ``prompt`` with one ``image_token_index`` per ``<image>``.

    Each text chunk is tokenized on its own (with the tokenizer's BOS when ``add_special_tokens``); a
    leading BOS is kept once and later chunks lose theirs — VILA's ``tokenizer_image_token``.
    """
    chunks = [tokenizer(c, add_special_tokens=add_special_tokens).input_ids for c in prompt.split(image_token)]
    bos = tokenizer.bos_token_id
    offset = 1 if add_special_tokens and chunks and chunks[0] and bos is not None and chunks[0][0] == bos else 0
    ids: list[int] = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(image_token_index)
        ids.extend(chunk[offset:])
    return ids


def _vila_turns(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[tuple[int, str]]:
    """(role 0 = user / 1 = assistant, text) pairs; consecutive tool results merge into one user turn."""
    from vlm.tools import legacy_model_cards

    turns: list[tuple[int, str]] = []
    last_question = ""
    cards = legacy_model_cards(tools) if tools else ""
    pending_results: list[str] = []
    for msg in messages:
        role, text = msg.get("role"), _text(msg.get("content"))
        if role == "system":
            continue
        if role == "tool":
            pending_results.append(text)
            continue
        if pending_results:
            turns.append((0, _results_turn(pending_results, last_question)))
            pending_results = []
        if role == "user":
            last_question = text.replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()
            if cards:
                text, cards = _with_cards(text, cards), ""
            turns.append((0, text))
        elif role == "assistant":
            turns.append((1, text))
    if pending_results:
        turns.append((0, _results_turn(pending_results, last_question)))
    return turns


def _results_turn(results: list[str], question: str) -> str:
    return "The results are " + " ".join(results) + ". Use this result to respond to this prompt:\n" + question


def _with_cards(text: str, cards: str) -> str:
    """Model cards go after the image placeholders and before the question, as in VILA-M3's demo."""
    n = 0
    while text.startswith(IMAGE_TOKEN + "\n", n):
        n += len(IMAGE_TOKEN) + 1
    return text[:n] + cards + text[n:]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # HF content parts
        return "".join(IMAGE_TOKEN + "\n" if p.get("type") == "image" else p.get("text", "") for p in content)
    return "" if content is None else str(content)


def _detect_chat_format(llm_dir: Path) -> str:
    for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        f = llm_dir / name
        if f.is_file() and "<|start_header_id|>" in f.read_text(errors="ignore"):
            return "llama_3"
    cfg = llm_dir / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("vocab_size", 0) >= 128000:
        return "llama_3"
    return "vicuna_v1"

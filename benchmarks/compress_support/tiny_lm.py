"""A small Llama LM trained on the report corpus, cached on disk, and its closed-question accuracy.

The tokenizer is a byte-level BPE (``tokenizers``) trained on the same text. The cache lives in
``cache/compress_lm/<key>/`` under the repository (git-ignored), keyed by the configuration.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tqdm.auto import tqdm

from benchmarks.compress_support.reports import QAItem, generate_reports, training_texts
from vlm.compress.calibration import iterate_batches, pack_tokens

__all__ = ["TinyLMConfig", "train_or_load", "qa_accuracy", "corpus_blocks"]

CACHE = Path(__file__).resolve().parents[2] / "cache" / "compress_lm"


@dataclass
class TinyLMConfig:
    layers: int = 4
    hidden: int = 128
    intermediate: int = 352
    heads: int = 4
    vocab: int = 768
    seq_len: int = 64
    train_reports: int = 4000
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def corpus_blocks(tokenizer, site: str, n_reports: int, seed: int, seq_len: int) -> torch.Tensor:
    """Token blocks ``(N, seq_len)`` of ``n_reports`` reports (with their Q/A lines) from ``site``."""
    return pack_tokens(tokenizer, training_texts(generate_reports(n_reports, site, seed), seed), seq_len)


def train_or_load(config: TinyLMConfig, progress: bool = True) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """The cached LM for ``config``, trained first when absent (≈ minutes on 2 cores for the default)."""
    folder = CACHE / config.key()
    if (folder / "model.safetensors").is_file():
        info = json.loads((folder / "train_info.json").read_text())
        return LlamaForCausalLM.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder), info
    torch.manual_seed(config.seed)
    texts = training_texts(generate_reports(config.train_reports, "A", config.seed + 1), config.seed)
    tokenizer = _train_tokenizer(texts, config.vocab)
    ids = pack_tokens(tokenizer, texts, config.seq_len)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=config.seq_len * 4, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.05)
    batches = iterate_batches(ids, config.batch_size, config.seed)
    start, losses = time.time(), []
    model.train()
    for _ in tqdm(range(config.steps), desc="tiny-lm", disable=not progress):
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    info = {"config": asdict(config), "train_seconds": round(time.time() - start, 1), "final_loss": sum(losses[-20:]) / 20,
            "train_blocks": ids.shape[0], "params": sum(p.numel() for p in model.parameters())}
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "train_info.json").write_text(json.dumps(info, indent=2))
    return model, tokenizer, info


@torch.no_grad()
def qa_accuracy(model, tokenizer, items: list[QAItem], batch_size: int = 32) -> float:
    """Fraction of items where log P(" yes") vs log P(" no") after the prompt picks the right answer."""
    yes = tokenizer(" yes", add_special_tokens=False)["input_ids"]
    no = tokenizer(" no", add_special_tokens=False)["input_ids"]
    if len(yes) != 1 or len(no) != 1:
        raise ValueError(f'" yes" and " no" must be single tokens for this scorer, got {yes} and {no}')
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        encoded = [tokenizer(item.prompt, add_special_tokens=False)["input_ids"] for item in chunk]
        width = max(len(e) for e in encoded)
        # right padding is harmless for a causal LM: positions before the padding never see it
        batch = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in encoded])
        logits = model(input_ids=batch).logits
        last = logits[torch.arange(len(chunk)), torch.tensor([len(e) - 1 for e in encoded])]
        pick_yes = last[:, yes[0]] > last[:, no[0]]
        correct += sum(int(bool(p) == (item.answer == "yes")) for p, item in zip(pick_yes, chunk))
    model.train(was_training)
    return correct / len(items)


def _train_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    site_b = training_texts(generate_reports(300, "B", 99))  # the new site's words must be spellable, not merged
    tok.train_from_iterator(texts + site_b[:50], trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")

"""Shared tiny models for the compression tests (random Llama LMs built in memory, nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)  # the machine is shared; one thread avoids oversubscription stalls


def tiny_llama(layers: int = 2, hidden: int = 64, vocab: int = 128, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def patterned_ids(n: int = 32, length: int = 32, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    """Token blocks with learnable structure: arithmetic sequences with a random start and step."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=gen)
    step = torch.randint(1, 4, (n, 1), generator=gen)
    return (start + step * torch.arange(length)[None, :]) % vocab


@pytest.fixture
def tiny_lm():
    return tiny_llama()


@pytest.fixture(scope="module")
def trained_lm():
    """A 2-layer LM trained for a few seconds on patterned tokens (so pruning has something to lose)."""
    model = tiny_llama(seed=1).train()
    ids = patterned_ids(256, 32, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        batch = ids[(step * 16) % 256 : (step * 16) % 256 + 16]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), ids

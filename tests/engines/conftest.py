"""A tiny model directory for the embedded engine's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 with a tokenizer of its own: a model directory as the engine loads it."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mxn.engines.local.demo import build_tokenizer

    tokenizer = build_tokenizer(["hello world, this is mxn", "a tiny model that says nothing"] * 4, vocab_size=300)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("tiny")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

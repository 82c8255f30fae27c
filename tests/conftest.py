"""Shared fixtures: synthetic subjects with planted wellbeing, trained once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from synthetic_subject import Planted, train_subject, write_stimuli  # noqa: E402


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A subject trained to feel bad after dysphoric and good after euphoric experiences, with its stimuli."""
    root = tmp_path_factory.mktemp("synthetic")
    model = train_subject(root / "model")
    stimuli = write_stimuli(root / "stimuli.jsonl")
    return SimpleNamespace(model=str(model), stimuli=str(stimuli), root=root)


@pytest.fixture(scope="session")
def indifferent(tmp_path_factory):
    """A subject trained with no planted wellbeing at all: everything it reads leaves it at w = 0."""
    root = tmp_path_factory.mktemp("indifferent")
    model = train_subject(root / "model", Planted({"self": 0.0, "human": 0.0, "animal": 0.0}), steps=300)
    stimuli = write_stimuli(root / "stimuli.jsonl")
    return SimpleNamespace(model=str(model), stimuli=str(stimuli), root=root)


@pytest.fixture(scope="session")
def tiny_random_model():
    """An untrained tiny Llama with the synthetic word-level tokenizer: for engine equivalence tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from synthetic_subject import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer

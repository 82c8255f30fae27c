"""Shared fixtures: synthetic subjects with planted wellbeing, trained once per test session."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import synthetic_subject  # noqa: E402
from synthetic_subject import Planted, train_subject, write_stimuli  # noqa: E402
from eval import probes  # noqa: E402


def _trained(tmp_path_factory, name: str, planted: Planted, steps: int) -> SimpleNamespace:
    """Train a synthetic subject, or reuse one trained by identical code (cached by a hash of its recipe).

    The cache only saves local reruns a minute; a fresh machine (CI) always trains. Set
    WELFARE_TEST_CACHE=0 to force training.
    """
    import torch

    recipe = "|".join([Path(synthetic_subject.__file__).read_text(), Path(probes.__file__).read_text(),
                       repr(planted), str(steps), torch.__version__])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    root = tmp_path_factory.mktemp(name)
    cached = Path(os.environ.get("WELFARE_CACHE", Path.home() / ".cache" / "welfare-offsets")) / "test-subjects" / key
    if os.environ.get("WELFARE_TEST_CACHE") != "0" and (cached / "planted.json").exists():
        model = cached
    else:
        model = train_subject(root / "model", planted, steps=steps)
        if os.environ.get("WELFARE_TEST_CACHE") != "0":
            staging = cached.with_name(f"{key}.tmp-{os.getpid()}")
            shutil.copytree(model, staging, dirs_exist_ok=True)
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(staging, cached)  # whole or absent: a half-copied subject is never reused
    return SimpleNamespace(model=str(model), stimuli=str(write_stimuli(root / "stimuli.jsonl")), root=root)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A subject trained to feel bad after dysphoric and good after euphoric experiences, with its stimuli."""
    return _trained(tmp_path_factory, "synthetic", Planted(), steps=700)


@pytest.fixture(scope="session")
def indifferent(tmp_path_factory):
    """A subject trained with no planted wellbeing at all: everything it reads leaves it at w = 0."""
    return _trained(tmp_path_factory, "indifferent", Planted({"self": 0.0, "human": 0.0, "animal": 0.0}, reply_weight=0.0),
                    steps=300)


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

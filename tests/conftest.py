"""Shared fixtures: synthetic subjects with planted wellbeing, trained once per test session."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from tests import synthetic_subject  # noqa: E402
from tests.synthetic_subject import Planted, write_stimuli  # noqa: E402
from welfare_offsets.eval import probes  # noqa: E402

# Fixtures that train synthetic subjects (a minute or more each when not cached): a test that uses one,
# directly or through another fixture, is slow. The fast tier is `pytest -m "not slow"`.
TRAINED_SUBJECTS = {"synthetic", "indifferent", "sweep_subjects"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINED_SUBJECTS & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def _recipe_key(planted: Planted, steps: int, options: dict) -> str:
    import torch

    recipe = "|".join(
        [
            Path(synthetic_subject.__file__).read_text(),
            Path(probes.__file__).read_text(),
            probes.default_instrument().sha256,
            repr(planted),
            str(steps),
            repr(sorted(options.items())),
            torch.__version__,
        ]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _train_all(root: Path, recipes: list[tuple[Planted, int, dict]]) -> list[Path]:
    """Train synthetic subjects, or reuse ones trained by identical code (cached by a hash of the recipe).

    The cache only saves local reruns; a fresh machine (CI) always trains, two subjects at a time in
    single-threaded processes when there are several (tiny models use two cores better that way). Set
    WELFARE_TEST_CACHE=0 to force training.
    """
    use_cache = os.environ.get("WELFARE_TEST_CACHE") != "0"
    cache = Path(os.environ.get("WELFARE_CACHE", Path.home() / ".cache" / "welfare-offsets")) / "test-subjects"
    keys = [_recipe_key(*recipe) for recipe in recipes]
    paths = [cache / key for key in keys]
    missing = [k for k, path in enumerate(paths) if not (use_cache and (path / "planted.json").exists())]
    jobs = [(root / f"model-{keys[k]}", *recipes[k]) for k in missing]
    if len(jobs) > 1:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            trained = list(pool.map(synthetic_subject.train_job, jobs))
    else:
        trained = [
            synthetic_subject.train_subject(folder, planted, steps=steps, **options)
            for folder, planted, steps, options in jobs
        ]
    for k, model in zip(missing, trained):
        paths[k] = model
        if use_cache:
            staging = cache / f"{keys[k]}.tmp-{os.getpid()}"
            shutil.copytree(model, staging, dirs_exist_ok=True)
            shutil.rmtree(cache / keys[k], ignore_errors=True)
            os.replace(staging, cache / keys[k])  # whole or absent: a half-copied subject is never reused
            paths[k] = cache / keys[k]
    return paths


def _trained(tmp_path_factory, name: str, planted: Planted, steps: int) -> SimpleNamespace:
    root = tmp_path_factory.mktemp(name)
    (model,) = _train_all(root, [(planted, steps, {})])
    return SimpleNamespace(model=str(model), stimuli=str(write_stimuli(root / "stimuli.jsonl")), root=root)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A subject trained to feel bad after dysphoric and good after euphoric experiences, with its stimuli."""
    return _trained(tmp_path_factory, "synthetic", Planted(), steps=700)


@pytest.fixture(scope="session")
def indifferent(tmp_path_factory):
    """A subject trained with no planted wellbeing at all: everything it reads leaves it at w = 0."""
    return _trained(
        tmp_path_factory,
        "indifferent",
        Planted({"self": 0.0, "human": 0.0, "animal": 0.0}, reply_weight=0.0),
        steps=300,
    )


@pytest.fixture(scope="session")
def tiny_random_model():
    """An untrained tiny Llama with the synthetic word-level tokenizer: for engine equivalence tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = synthetic_subject.build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny untrained model saved as a local folder, and a small stimulus set: a whole `welfare eval` in
    about two seconds, a session in a few. For tests of the plumbing around a model, not of its readings."""
    root = tmp_path_factory.mktemp("tiny")
    save_random_llama(root / "model")
    return {"model": root / "model", "stimuli": write_stimuli(root / "stimuli.jsonl", n_per_split=12)}


def save_random_llama(
    folder: Path, *, layers: int = 1, hidden: int = 16, heads: int = 2, kv_heads: int = 2, positions: int = 256
) -> Path:
    """A random Llama (seed 0) with the synthetic tokenizer, saved to `folder` as a local model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = synthetic_subject.build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# The sweep's synthetic family: (planted empathy strength, hidden size). "scaling" plants empathy that grows
# with size; "no_trend" plants none (strong, weak, weak, strong). Two subjects sit in both families.
SWEEP_FAMILIES = {
    "scaling": [(0.1, 32), (0.3, 40), (0.55, 48), (0.9, 64)],
    "no_trend": [(0.9, 32), (0.3, 40), (0.3, 48), (0.9, 64)],
}


def sweep_planted(strength: float) -> Planted:
    """Empathy strength s with whims of weight 1 - s: a planted empathy r from ~0.15 (s = 0.1) to ~0.99 (s = 0.9)."""
    return Planted(
        {"self": strength, "human": strength, "animal": strength}, reply_weight=0.0, mood_weight=1.0 - strength
    )


@pytest.fixture(scope="session")
def sweep_subjects(tmp_path_factory):
    """Synthetic subjects of several sizes with planted empathy strengths, and their stimuli."""
    root = tmp_path_factory.mktemp("sweep-subjects")
    unique = sorted({pair for family in SWEEP_FAMILIES.values() for pair in family})
    recipes = [(sweep_planted(s), 600, {"hidden": h, "talk": False, "mix": (0.35, 0.0, 0.65, 0.0)}) for s, h in unique]
    models = dict(zip(unique, _train_all(root, recipes)))
    families = {
        name: [{"strength": s, "hidden": h, "model": str(models[(s, h)])} for s, h in members]
        for name, members in SWEEP_FAMILIES.items()
    }
    return SimpleNamespace(families=families, stimuli=str(write_stimuli(root / "stimuli.jsonl")), root=root)


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading any model fails the test (with exit code 1, never the 2 a refused setting gives)."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model started loading")

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", refuse)

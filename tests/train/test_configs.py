"""Every recipe under configs/ loads and validates, recursively: a typo in a shipped YAML fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from welfare_offsets.eval.evaluate import EvalConfig
from welfare_offsets.eval.study.sweep import SweepConfig
from welfare_offsets.train.config import parse_config
from welfare_offsets.train.offset_cmd import entry

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))


def schema(path: Path) -> list[type] | None:
    """The dataclasses that validate a recipe: by its folder, and for offsets by the session kind it names."""
    folder = path.relative_to(CONFIGS).parts[0]
    if folder == "eval":
        return [EvalConfig]
    if folder == "offset":
        return recipe_kind(path).config_types(["--config", str(path)])
    if folder == "sweep":
        return [SweepConfig]
    return None


def recipe_kind(path: Path):
    """The session module a shipped offset recipe is for, by its name: soft_prompt*, lora*, *exposure*."""
    stem = path.stem
    for prefix, kind in (("soft_prompt", "soft-prompt"), ("lora", "lora")):
        if stem.startswith(prefix):
            return entry(kind)
    if "exposure" in stem:
        return entry("exposure")
    raise ValueError(f"{path}: cannot tell the session kind from the file name (soft_prompt*, lora*, *exposure*)")


ACCELERATE_YAML = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_there_are_recipes_and_each_has_a_schema():
    assert ALL_YAML
    for path in set(ALL_YAML) - set(ACCELERATE_YAML):
        assert schema(path), f"{path}: no schema for it in tests/test_configs.py"


@pytest.mark.parametrize("path", ACCELERATE_YAML, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    """accelerate's own loader validates its configs (unknown keys and bad enum values fail)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1


@pytest.mark.parametrize("path", [p for p in ALL_YAML if p not in ACCELERATE_YAML], ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_against_its_schema(path):
    schema_types = schema(path)
    *configs, passed = parse_config(schema_types, ["--config", str(path)], prog="test")
    assert passed["yaml"] == yaml.safe_load(path.read_text())
    for key, value in passed["yaml"].items():
        if key == "subjects":  # mappings travel as JSON text and become SubjectSpecs
            assert [{k: getattr(s, k) for k in given} for s, given in zip(configs[0].specs, value)] == value
            continue
        assert any(getattr(c, key, object()) == value for c in configs), key

"""Every recipe under configs/ loads and validates, recursively: a typo in a shipped YAML fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval.evaluate import EvalConfig
from train.config import parse_config
from train.offset_cmd import recipe_kind

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))


def schema(path: Path) -> list[type] | None:
    """The dataclasses that validate a recipe: by its folder, and for offsets by the session kind it names."""
    folder = path.relative_to(CONFIGS).parts[0]
    if folder == "eval":
        return [EvalConfig]
    if folder == "offset":
        return recipe_kind(path).config_types(["--config", str(path)])
    return None


def test_there_are_recipes_and_each_has_a_schema():
    assert ALL_YAML
    for path in ALL_YAML:
        assert schema(path), f"{path}: no schema for it in tests/test_configs.py"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_against_its_schema(path):
    schema_types = schema(path)
    *configs, passed = parse_config(schema_types, ["--config", str(path)], prog="test")
    assert passed["yaml"] == yaml.safe_load(path.read_text())
    for key, value in passed["yaml"].items():
        assert any(getattr(c, key, object()) == value for c in configs), key

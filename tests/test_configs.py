"""Every recipe under configs/ loads and validates, recursively: a typo in a shipped YAML fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eval.evaluate import EvalConfig
from train.config import parse_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Which dataclasses validate the recipes of each configs/ subfolder.
SCHEMAS = {"eval": [EvalConfig]}
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))


def test_there_are_recipes_and_each_has_a_schema():
    assert ALL_YAML
    for path in ALL_YAML:
        assert path.relative_to(CONFIGS).parts[0] in SCHEMAS, f"{path}: no schema registered in tests/test_configs.py"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_parses_against_its_schema(path):
    schema = SCHEMAS[path.relative_to(CONFIGS).parts[0]]
    *configs, passed = parse_config(schema, ["--config", str(path)], prog="test")
    assert passed["yaml"] == yaml.safe_load(path.read_text())
    for key, value in passed["yaml"].items():
        assert any(getattr(c, key, object()) == value for c in configs), key

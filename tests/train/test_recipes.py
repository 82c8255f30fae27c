"""Packaged recipes by name: listed, resolved wherever --config is taken (a real path wins), copied safely."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from welfare_offsets.train.cli import main as welfare
from welfare_offsets.train.config import parse_config
from welfare_offsets.train.recipes import RecipeError, packaged_recipes, recipe_path, resolve_config

GROUPS = {"accelerate", "capability", "eval", "offset", "sweep"}


def test_every_packaged_recipe_is_listed_with_its_description(capsys):
    recipes = packaged_recipes()
    assert {name.split("/")[0] for name in recipes} == GROUPS
    assert {"offset/lora_sft", "offset/soft_prompt", "accelerate/ddp", "eval/default", "sweep/qwen2.5"} <= set(recipes)
    assert welfare(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(recipes)
    assert all(line.split()[0] in recipes and len(line.split()) > 1 for line in lines)  # name, then a description


@pytest.mark.parametrize("name", ["offset/lora_sft", "offset/lora_sft.yaml"])
def test_a_name_resolves_to_the_packaged_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(name) == str(recipe_path("offset/lora_sft"))
    assert recipe_path("offset/lora_sft").read_text().startswith("#")


@pytest.mark.parametrize("name", ["eval/default.yaml", "eval/default"])
def test_a_real_path_wins_over_a_name_spelled_either_way(tmp_path, monkeypatch, name):
    from welfare_offsets.eval.evaluate import EvalConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "default.yaml").write_text("seed: 7\n")
    assert resolve_config(name) == "eval/default.yaml"
    config, passed = parse_config([EvalConfig], ["--config", name], prog="test")
    assert config.seed == 7 and passed["config_file"] == str(tmp_path / "eval" / "default.yaml")


def test_the_reviewers_local_recipe_is_the_one_read(tmp_path, monkeypatch, capsys):
    """A local eval/default.yaml with a key no setting has: refused as the file it is, not skipped."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "default.yaml").write_text("bogus_local_key: 1\n")
    assert welfare(["eval", "--config", "eval/default", "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "eval/default.yaml: unknown key(s) ['bogus_local_key']" in err


def test_an_unknown_name_exits_2_listing_the_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="Did you mean offset/lora_sft"):
        resolve_config("offset/lora_stf")
    assert welfare(["eval", "--config", "lora_sft"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean offset/lora_sft" in err and "offset/soft_prompt" in err and "accelerate/ddp" in err
    assert resolve_config(str(tmp_path / "missing.yaml")) == str(tmp_path / "missing.yaml")  # the loader says why


def test_path_prints_a_file_accelerate_can_read(capsys):
    assert welfare(["recipes", "path", "accelerate/ddp"]) == 0
    path = capsys.readouterr().out.strip()
    assert os.path.isfile(path) and "distributed_type" in Path(path).read_text()


def test_cp_copies_a_recipe_to_edit(tmp_path, capsys):
    assert welfare(["recipes", "cp", "offset/soft_prompt", str(tmp_path / "mine.yaml")]) == 0
    assert (tmp_path / "mine.yaml").read_bytes() == recipe_path("offset/soft_prompt").read_bytes()
    assert welfare(["recipes", "cp", "offset/lora_sft", str(tmp_path)]) == 0  # into a folder, under its own name
    assert (tmp_path / "lora_sft.yaml").read_bytes() == recipe_path("offset/lora_sft").read_bytes()


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda p: p.write_text("mine\n"), "already exists (a file)"),
        (lambda p: os.symlink(p.parent / "elsewhere", p), "a symbolic link"),  # dangling, too
        (lambda p: os.mkfifo(p), "FIFO"),
    ],
)
def test_cp_never_overwrites_and_never_follows(tmp_path, capsys, make, why):
    dest = tmp_path / "dest.yaml"
    make(dest)
    before = os.lstat(dest)
    assert welfare(["recipes", "cp", "offset/lora_sft", str(dest)]) == 2
    assert why in capsys.readouterr().err
    assert os.lstat(dest) == before and not (tmp_path / "elsewhere").exists()


def test_cp_refuses_any_part_of_the_ledger(tmp_path, monkeypatch, capsys):
    from welfare_offsets.ledger import Ledger

    ledger = tmp_path / "ledger.sqlite"
    Ledger.open(ledger).close()
    monkeypatch.setenv("WELFARE_LEDGER", str(ledger))
    for part in ("ledger.sqlite-journal", "ledger.sqlite.sessions"):
        assert welfare(["recipes", "cp", "offset/lora_sft", str(tmp_path / part)]) == 2
        assert "ledger" in capsys.readouterr().err and not (tmp_path / part).exists()
    assert sqlite3.connect(ledger).execute("SELECT value FROM meta WHERE key = 'format'").fetchone()


def test_an_unknown_name_to_cp_or_path_exits_2(capsys):
    assert welfare(["recipes", "path", "offset/nope"]) == 2
    assert "Packaged recipes:" in capsys.readouterr().err


def test_a_lora_recipe_named_picks_its_trl_config():
    from trl import DPOConfig

    from welfare_offsets.train import lora_offset

    assert issubclass(lora_offset.config_types(["--config", "offset/lora_dpo"])[-1], DPOConfig)

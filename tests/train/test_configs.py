"""Every recipe under configs/ loads and validates, recursively: a typo in a shipped YAML fails here. And
the config hierarchy: each setting is declared once, and a bad shared setting is refused alike everywhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from welfare_offsets.eval.capability_run import CapabilityConfig
from welfare_offsets.eval.evaluate import EvalConfig
from welfare_offsets.eval.settings import Settings
from welfare_offsets.train import sweep
from welfare_offsets.train.config import ConfigError, parse_config
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
        return sweep.config_types()
    if folder == "capability":
        return [CapabilityConfig]
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


@pytest.mark.parametrize(
    "path", [p for p in ALL_YAML if p not in ACCELERATE_YAML], ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_recipe_parses_against_its_schema(path):
    schema_types = schema(path)
    *configs, passed = parse_config(schema_types, ["--config", str(path)], prog="test")
    assert passed["yaml"] == yaml.safe_load(path.read_text())
    for key, value in passed["yaml"].items():
        if key == "subjects":  # mappings travel as JSON text and become SubjectSpecs
            assert [{k: getattr(s, k) for k in given} for s, given in zip(configs[0].specs, value)] == value
            continue
        assert any(getattr(c, key, object()) == value for c in configs), key


# -- one config hierarchy: each setting declared, defaulted and validated once ------------------------


def command_configs(tmp_path: Path) -> dict[str, tuple[list[type], list[str]]]:
    """Every command's dataclasses, and the flags it needs besides the setting under test."""
    from welfare_offsets.train import exposure, lora_offset, soft_prompt

    session = ["--output_dir", str(tmp_path / "session"), "--budget_hours", "0.1"]
    return {
        "eval": ([EvalConfig], ["eval"]),
        "capability": ([CapabilityConfig], ["capability", "--capability_tasks", "mmlu"]),
        "sweep": (sweep.config_types(), ["sweep", "--subjects", "a/b", "--out", str(tmp_path / "sweep")]),
        "soft-prompt": (soft_prompt.config_types(), ["offset", "soft-prompt", *session]),
        "exposure": (exposure.config_types(), ["offset", "exposure", *session]),
        "lora sft": (lora_offset.config_types(), ["offset", "lora", *session]),
        "lora dpo": (lora_offset.config_types(["--method", "dpo"]), ["offset", "lora", "--method", "dpo", *session]),
    }


# Names two of our dataclasses declare, never composed into one command. For two different settings: an
# exposure's episodes come from `split` (default all), an evaluation's and a sweep's measured conditions from
# ProbeSettings' `split` (both checked by eval/settings.py SPLITS); a session's `budget_hours` covers its run over
# every resume and must be given, a sweep's covers one run of the command and defaults to what the account has.
SAME_NAME_OTHER_SETTING = {
    "split": {"ExposureConfig", "ProbeSettings"},
    "budget_hours": {"SessionArguments", "SweepBudgetSettings"},
}
# Settings of ours that TRL's config also declares: ours owns the flag, TRL's config gets our value.
SHARED_WITH_TRL = {"output_dir", "seed", "report_to", "trust_remote_code"}


def _ours(cls: type) -> bool:
    """One of our settings dataclasses (OffsetSFTConfig and OffsetDPOConfig are TRL's, with our checks)."""
    return dataclasses.is_dataclass(cls) and issubclass(cls, Settings)


def test_each_setting_is_declared_once(tmp_path):
    """Over every command's config hierarchy, a field name is declared (with its help and default) by one
    dataclass; the commands inherit it from there."""
    declared: dict[str, set[str]] = {}
    for types_, _ in command_configs(tmp_path).values():
        for cls in {c for t in types_ for c in t.__mro__ if _ours(c)}:
            for name in vars(cls).get("__annotations__", {}):
                if name in {f.name for f in dataclasses.fields(cls)}:
                    declared.setdefault(name, set()).add(cls.__qualname__)
    twice = {name: owners for name, owners in declared.items() if len(owners) > 1}
    assert twice == SAME_NAME_OTHER_SETTING
    assert len(declared) > 40  # the walk found the hierarchy


def test_commands_share_settings_only_with_trl_and_trl_gets_ours(tmp_path):
    for command, (types_, _) in command_configs(tmp_path).items():
        ours = [t for t in types_ if _ours(t)]
        names = [f.name for t in ours for f in dataclasses.fields(t)]
        assert len(names) == len(set(names)), command  # no setting twice among our own dataclasses
        theirs = {f.name for t in types_ if not _ours(t) for f in dataclasses.fields(t)}
        assert set(names) & theirs == (SHARED_WITH_TRL if theirs else set()), command
    types_, _ = command_configs(tmp_path)["lora sft"]
    args, _, trl_config, _ = parse_config(
        types_, ["--output_dir", str(tmp_path / "s"), "--budget_hours", "0.1", "--report_to", "wandb"], prog="test"
    )
    assert (args.seed, args.report_to, args.output_dir) == (0, "wandb", str(tmp_path / "s"))
    assert (trl_config.seed, trl_config.report_to, trl_config.output_dir) == (0, ["wandb"], str(tmp_path / "s"))


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--report_to", "wnadb", "report_to: expected none or wandb, got 'wnadb'"),
        ("--dtype", "float8", "dtype: expected auto or float32 or bfloat16 or float16, got 'float8'"),
        ("--seed", "-1", "seed: expected an integer >= 0, got -1"),
    ],
)
def test_a_bad_shared_setting_is_refused_alike_by_every_command(
    capsys, monkeypatch, tmp_path, no_model_loads, flag, value, message
):
    from welfare_offsets.train.cli import main as welfare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for command, (_, argv) in command_configs(tmp_path).items():
        capsys.readouterr()
        code = welfare([*argv, flag, value])
        err = capsys.readouterr().err.strip()
        assert code == 2, (command, err)
        assert err.endswith(f": error: flags: {message}"), (command, err)
    assert not any(tmp_path.iterdir())  # nothing written, nothing claimed


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_help_lists_config_and_says_what_a_no_flag_does(capsys, command):
    from welfare_offsets.train.cli import main as welfare

    with pytest.raises(SystemExit) as exit_:
        welfare([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert exit_.value.code == 0
    assert "[--config RECIPE]" in out and "--config RECIPE a YAML recipe file, or the name of a packaged one" in out
    assert "--no_progress, --no-progress the same as --progress false" in out
    assert "show progress bars (default: False)" not in out


def test_no_flags_and_config_parse_as_they_say():
    config, _ = parse_config([EvalConfig], ["--no_progress"], prog="test")
    assert config.progress is False
    assert parse_config([EvalConfig], [], prog="test")[0].progress is True
    for argv in (["--config", "eval/default", "--config", "eval/default"], ["--conf", "eval/default"]):
        with pytest.raises(ConfigError, match="--config: give one recipe, once, spelled out in full"):
            parse_config([EvalConfig], argv, prog="test")

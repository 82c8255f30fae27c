"""The one config loader: typed dataclasses, a YAML file whose keys are field names, CLI overrides.

Built on transformers' HfArgumentParser (as TRL's TrlParser is), but stricter: an unknown YAML key is an
error that names the file and the known keys, and YAML values go through the same type conversion as
command-line values, so a wrong type fails with the field's name instead of deep inside a run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from transformers import HfArgumentParser

from eval.errors import InputError
from ledger.errors import LedgerError


class ConfigError(InputError):
    """A config file or flag is invalid; the message says which and how to fix it."""


def parse_config(dataclass_types: list[type], argv: list[str], prog: str) -> tuple:
    """Parse `--config FILE` (optional) plus flags into instances of `dataclass_types`.

    Returns (instances..., passed) where `passed` records the YAML values and flags as given.
    """
    import yaml

    argv = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    yaml_values: dict = {}
    config_path = None
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        config_path = argv[at + 1]
        del argv[at : at + 2]
        yaml_values = _read_yaml(config_path, yaml)
    known = {f.name: f for cls in dataclass_types for f in dataclasses.fields(cls)}
    unknown = sorted(set(yaml_values) - set(known))
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown key(s) {unknown}. Known keys: {', '.join(sorted(known))}."
        )
    parser = _StrictParser(dataclass_types, prog=prog)
    from_yaml = []
    for key, value in yaml_values.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        from_yaml += [f"--{key}", *[_to_flag_text(v) for v in values]]
    if from_yaml:
        try:  # type-check the file's values alone first, so an error names the file
            parser.parse_known_args(from_yaml)
        except ConfigError as err:
            raise ConfigError(f"{config_path}: {err}") from None
    # Flags after the YAML values win: argparse keeps the last occurrence.
    try:
        parsed = parser.parse_args_into_dataclasses(args=from_yaml + argv)
    except ConfigError:
        raise
    except ValueError as err:  # dataclass __post_init__ validation
        raise ConfigError(f"{config_path or 'flags'}: {err}") from err
    passed = {"config_file": str(Path(config_path).resolve()) if config_path else None, "yaml": yaml_values, "argv": argv}
    return (*parsed, passed)


class _StrictParser(HfArgumentParser):
    """HfArgumentParser whose errors raise ConfigError (one clear line) instead of printing usage and exiting."""

    def error(self, message):
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _read_yaml(path: str, yaml) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror or err})") from err
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def _to_flag_text(value) -> str:
    if isinstance(value, dict):  # a mapping in a list (e.g. a sweep's subjects) travels as JSON text
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_cli(main_body, argv: list[str], prog: str) -> int:
    """Run a command; bad input (InputError) becomes a one-paragraph message and exit code 2."""
    try:
        return int(main_body(argv) or 0)
    except (InputError, LedgerError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2

"""The one config loader: typed dataclasses, a YAML recipe whose keys are field names, CLI overrides.

A recipe's values become typed values directly, never command-line text: each is checked against its
field's type (a list where a scalar is expected is an error naming the key and the file; a list field
takes a list of scalars of its element type; a string that looks like a flag is just a string). Flags are
then parsed by transformers' HfArgumentParser (as TRL's TrlParser does) and win over the recipe. Every
value is then validated by its dataclass, before any model loads.

A field that two of a command's dataclasses declare is one setting, and the first dataclass owns it: its
type, help, default and validation. A command lists our settings (eval/settings.py, train/session.py)
before TRL's config, so where TRL's TrainingArguments names the same thing (seed, report_to, output_dir,
trust_remote_code) ours wins, and TRL's config is built with the value ours resolved.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import types
import typing
from pathlib import Path

from transformers import HfArgumentParser

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.safe_read import load_yaml_recipe
from welfare_offsets.train.recipes import resolve_config

# Settings that make a session import or run code that is not ours (an lm-eval task folder's YAML may name
# Python functions). A plan never takes them from a recorded recipe, only from its own command line.
CODE_RUNNING_SETTINGS = ("trust_remote_code", "model_init_kwargs", "capability_include_path")
MAX_INT = 2**63 - 1  # no count, seed or size is larger (torch and numpy take 64-bit integers)


class ConfigError(InputError):
    """A config file or flag is invalid; the message says which and how to fix it."""


def parse_config(dataclass_types: list[type], argv: list[str], prog: str) -> tuple:
    """Parse `--config FILE` or `--config NAME` of a packaged recipe (optional; train/recipes.py) plus flags
    into instances of `dataclass_types`.

    Returns (instances..., passed) where `passed` records the YAML values and flags as given.
    """
    argv = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    yaml_values: dict = {}
    config_path = None
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path or a packaged recipe name (`welfare recipes`)")
        config_path = resolve_config(argv[at + 1])
        del argv[at : at + 2]
        yaml_values = load_yaml_recipe(config_path)
    values = recipe_values(dataclass_types, yaml_values, where=str(config_path))
    flags = _flag_values(_StrictParser(dataclass_types, prog=prog), argv)
    if "config" in flags:  # a second --config (or an abbreviated one): only the first is read
        raise ConfigError("--config: give one recipe, once, spelled out in full")
    values.update(flags)
    instances = build_configs(dataclass_types, values, where=config_path or "flags")
    passed = {
        "config_file": str(Path(config_path).resolve()) if config_path else None,
        "yaml": yaml_values,
        "argv": argv,
    }
    return (*instances, passed)


def recipe_values(dataclass_types: list[type], mapping: dict, *, where: str) -> dict:
    """A recipe mapping as typed field values (null only where the field allows None); an unknown key or a
    value of the wrong type is an error naming the key and `where`."""
    known = _fields(dataclass_types)
    unknown = sorted(str(k) for k in set(mapping) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}. Known keys: {', '.join(sorted(known))}.")
    typed = {}
    for key, value in mapping.items():
        field_type, mappings_ok = known[key]
        try:
            typed[key] = _typed(value, field_type, mappings_ok)
        except _Mismatch as err:
            raise ConfigError(f"{where}: key {key!r} (argument --{key}): expected {err}, got {_shown(value)}") from None
    return typed


def build_configs(dataclass_types: list[type], values: dict, *, where: str) -> list:
    """Each dataclass built from the typed `values` of its fields; its own validation errors name `where`."""
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {key}: expected a finite number, got {value}")
        if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
            raise ConfigError(f"{where}: {key}: {str(value)[:20]}... is too large for any setting (at most {MAX_INT})")
    instances, resolved = [], {}
    for cls in dataclass_types:
        fields = [f for f in dataclasses.fields(cls) if f.init]
        missing = [
            f.name
            for f in fields
            if f.name not in values
            and f.name not in resolved
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{where}: missing required setting(s) {missing}; set them in the recipe or as flags")
        # A setting an earlier dataclass owns is passed on as that one resolved it (module docstring).
        given = {
            f.name: resolved[f.name] if f.name in resolved else values[f.name]
            for f in fields
            if f.name in resolved or f.name in values
        }
        try:
            instance = cls(**given)
        except ValueError as err:  # __post_init__ validation (InputError is a ValueError)
            raise ConfigError(f"{where}: {err}") from err
        instances.append(instance)
        for f in fields:
            resolved.setdefault(f.name, getattr(instance, f.name))
    return instances


class _Mismatch(Exception):
    """A YAML value does not have its field's type; the message says what was expected."""


def _fields(dataclass_types: list[type]) -> dict[str, tuple[object, bool]]:
    """Field name -> (resolved type, whether list items may be mappings) over every dataclass; a name two
    declare is typed by the first."""
    known = {}
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                known.setdefault(f.name, (hints[f.name], f.name in getattr(cls, "RECIPE_MAPPING_ITEMS", ())))
    return known


def _typed(value, field_type, mappings_ok: bool = False):
    """`value` as a value of `field_type`, or _Mismatch. Numbers stay numbers, bools bools, strings strings."""
    origin, args = typing.get_origin(field_type), typing.get_args(field_type)
    if field_type is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        exact = [a for a in options if type(value) is a]  # an int stays an int where int | float is allowed
        for option in exact + [a for a in options if a not in exact]:
            try:
                return _typed(value, option, mappings_ok)
            except _Mismatch:
                continue
        raise _Mismatch(" or ".join(_describe(a) for a in options))
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise _Mismatch(f"one of {list(args)}")
    if origin in (list, tuple) or field_type in (list, tuple):
        if not isinstance(value, list):
            raise _Mismatch(_describe(field_type))
        item_type = args[0] if args else typing.Any
        return [_item(v, item_type, mappings_ok, k) for k, v in enumerate(value)]
    if origin is dict or field_type is dict:
        if not isinstance(value, dict):
            raise _Mismatch("a mapping")
        return value
    if field_type is bool:
        if isinstance(value, bool):
            return value
    elif field_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif field_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise _Mismatch("a number of float range") from None
            if math.isfinite(number):
                return number
            raise _Mismatch("a finite number")
    elif field_type is str:
        if isinstance(value, str):
            return value
    elif isinstance(field_type, type) and issubclass(field_type, enum.Enum):
        if value in [m.value for m in field_type]:
            return value
        raise _Mismatch(f"one of {[m.value for m in field_type]}")
    raise _Mismatch(_describe(field_type))


def _item(value, item_type, mappings_ok: bool, k: int):
    """Element `k` of a list field: a scalar of the element type (or, where allowed, a mapping of scalars)."""
    if mappings_ok and isinstance(value, dict) and not any(isinstance(v, (list, dict)) for v in value.values()):
        return value
    allowed = f"{_describe(item_type, plural=True)}{' or mappings of scalars' if mappings_ok else ''}"
    if isinstance(value, (list, dict)):
        raise _Mismatch(f"a list of {allowed} (item {k} is a nested {type(value).__name__})")
    try:
        return _typed(value, item_type)
    except _Mismatch:
        raise _Mismatch(f"a list of {allowed} (item {k} is not)") from None


def _describe(field_type, plural: bool = False) -> str:
    """What a value of `field_type` is, in a recipe's words (for error messages)."""
    origin, args = typing.get_origin(field_type), typing.get_args(field_type)
    if origin in (list, tuple) or field_type in (list, tuple):
        return f"a list of {_describe(args[0], plural=True) if args else 'values'}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args if a is not type(None))
    names = {
        bool: ("true or false", "true/false values"),
        int: ("an integer", "integers"),
        float: ("a number", "numbers"),
        str: ("a string", "strings"),
        dict: ("a mapping", "mappings"),
    }
    name = getattr(field_type, "__name__", str(field_type))
    return names.get(field_type, (name, f"{name} values"))[plural]


def _shown(value) -> str:
    """`value` as an error message shows it: its YAML kind and (at most 80 characters of) its text."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


_NOT_GIVEN = object()


def _flag_values(parser: HfArgumentParser, argv: list[str]) -> dict:
    """Only the flags given on the command line, converted by HfArgumentParser's per-field types (argparse
    fills in a default only where the namespace lacks the name, so a placeholder marks "not given")."""
    for action in parser._actions:
        action.required = False  # a required field may come from the recipe; the dataclass says if it is missing
    placeholders = argparse.Namespace(**{a.dest: _NOT_GIVEN for a in parser._actions if a.dest != "help"})
    namespace, rest = parser.parse_known_args(argv, namespace=placeholders)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return {k: v for k, v in vars(namespace).items() if v is not _NOT_GIVEN}


class _StrictParser(HfArgumentParser):
    """HfArgumentParser whose errors raise ConfigError (one clear line) instead of printing usage and exiting,
    where a field an earlier dataclass declared stays that dataclass's flag, and whose --help lists --config
    (which parse_config reads itself) and says what each --no_X flag does."""

    def error(self, message):
        raise ConfigError(f"{message} (see `{self.prog} --help`)")

    def _add_dataclass_arguments(self, dtype):
        if "--config" not in self._option_string_actions:  # first in --help, before the dataclasses' flags
            self.add_argument(
                "--config",
                metavar="RECIPE",
                default=argparse.SUPPRESS,
                help="a YAML recipe file, or the name of a packaged one (`welfare recipes` lists them; a file of "
                "that name here wins); its keys are the flags below, and flags given win over it",
            )
        super()._add_dataclass_arguments(dtype)

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        if f"--{field.name}" in parser._option_string_actions:
            return
        HfArgumentParser._parse_dataclass_field(parser, field)
        negation = parser._option_string_actions.get(f"--no_{field.name}")
        if negation is not None:  # HfArgumentParser gives it the field's own help, and "(default: False)"
            negation.help = f"the same as --{field.name} false"
            negation.default = argparse.SUPPRESS

"""Bounded reading of user-supplied files: the one place every reader in eval/ and train/ goes through.

A path given on the command line may be a FIFO (open blocks forever), a device (/dev/zero never ends),
a huge file, deeply nested JSON (RecursionError), a 5,000-digit number (ValueError), invalid UTF-8, or
YAML whose aliases expand to gigabytes. Each of these becomes an InputError (exit 2) that names the file,
and nothing is read beyond the cap.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Hashable, Iterator
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError

MAX_RECIPE_BYTES = 1 << 20  # a YAML recipe: a page of settings
MAX_JSON_BYTES = 256 << 20  # a results.json or cache entry (per-item rows included)
MAX_STIMULI_BYTES = 256 << 20  # a stimulus JSONL file
MAX_LINE_BYTES = 1 << 20  # one stimulus (one JSONL line)


class ReadError(InputError):
    """A file cannot be read safely; the message names it and says why."""


def regular_file(path: str | Path, *, what: str) -> Path:
    """`path` if it is a regular file, checked with stat before anything opens it (a FIFO would block)."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ReadError(f"{what} {path}: cannot read it ({err.strerror or err})") from err
    if not stat.S_ISREG(mode):
        raise ReadError(f"{what} {path}: not a regular file ({_kind(mode)}); pass a file")
    return path


def read_bytes_bounded(path: str | Path, *, what: str, max_bytes: int) -> bytes:
    """The whole file, refused if it is not a regular file or is larger than `max_bytes`."""
    path = regular_file(path, what=what)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise ReadError(f"{what} {path}: cannot read it ({err.strerror or err})") from err
    if len(data) > max_bytes:
        raise ReadError(f"{what} {path}: larger than the {max_bytes:,}-byte limit; is it the right file?")
    return data


def read_text_bounded(path: str | Path, *, what: str, max_bytes: int) -> str:
    """The file as UTF-8 text (see read_bytes_bounded); invalid UTF-8 is an error naming the line."""
    return decode_utf8(read_bytes_bounded(path, what=what, max_bytes=max_bytes), f"{what} {Path(path)}")


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ReadError(
            f"{where}: not valid UTF-8 (byte {data[err.start]:#04x} on line {line}); save the file as UTF-8"
        ) from None


def json_value(text: str) -> tuple[object, str | None]:
    """(value, None), or (None, why `text` is not readable JSON): for callers that collect every problem."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except RecursionError:
        return None, "JSON nested too deeply to read"
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        return None, f"unreadable JSON value ({err})"


def parse_json(text: str, where: str):
    """json.loads whose failures (syntax, nesting too deep, a number too long) name `where`."""
    value, problem = json_value(text)
    if problem:
        raise ReadError(f"{where}: {problem}")
    return value


def load_json_bounded(path: str | Path, *, what: str, max_bytes: int = MAX_JSON_BYTES):
    """A JSON file read with every bound above."""
    return parse_json(read_text_bounded(path, what=what, max_bytes=max_bytes), f"{what} {Path(path)}")


def load_jsonl_bounded(path: str | Path, *, what: str, max_bytes: int = MAX_JSON_BYTES) -> list:
    """One JSON value per non-empty line, read with every bound above; an error names the file and line."""
    text = read_text_bounded(path, what=what, max_bytes=max_bytes)
    return [
        parse_json(line, f"{what} {Path(path)}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def iter_lines_bounded(
    path: Path, *, what: str, max_bytes: int = MAX_STIMULI_BYTES, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw line) of a regular file no larger than `max_bytes`; a line over `max_line_bytes`
    comes as None (and is skipped without being held in memory)."""
    path = regular_file(path, what=what)
    size = path.stat().st_size
    if size > max_bytes:
        raise ReadError(f"{what} {path}: {size:,} bytes, over the {max_bytes:,}-byte limit")
    read = 0
    with open(path, "rb") as f:
        number = 0
        while read <= max_bytes:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            read += len(raw)
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n") and read <= max_bytes:
                    raw = f.readline(max_line_bytes)
                    read += len(raw)
                yield number, None
                continue
            yield number, raw
    raise ReadError(f"{what} {path}: grew past the {max_bytes:,}-byte limit while being read")


def load_yaml_recipe(path: str | Path, *, what: str = "--config") -> dict:
    """A YAML recipe: a mapping, at most MAX_RECIPE_BYTES, no aliases (so nothing expands), no key given twice
    in one mapping (YAML would silently keep the last), read as YAML 1.2 reads numbers (5e-5 is a float)."""
    import yaml

    where = f"{what} {Path(path)}"
    text = read_text_bounded(path, what=what, max_bytes=MAX_RECIPE_BYTES)
    try:
        data = yaml.load(text, Loader=_recipe_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ReadError(f"{where}: not valid YAML ({err})") from None
    except RecursionError:
        raise ReadError(f"{where}: YAML nested too deeply to read") from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        raise ReadError(f"{where}: unreadable YAML value ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReadError(f"{where}: expected a mapping of field: value, got {type(data).__name__}")
    return data


_LOADER = None
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


def _recipe_loader():
    """yaml.SafeLoader that refuses aliases (the "billion laughs" expansion) and duplicate keys, and reads 1e-4
    as a float."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class RecipeLoader(yaml.SafeLoader):
            def compose_node(self, parent, index):
                if self.check_event(yaml.AliasEvent):
                    mark = self.peek_event().start_mark
                    raise yaml.composer.ComposerError(
                        None, None, "aliases (*name) are not allowed in recipes; write the value out", mark
                    )
                return super().compose_node(parent, index)

            def construct_mapping(self, node, deep=False):
                lines = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=deep)
                    if not isinstance(key, Hashable):
                        continue  # refused by SafeLoader itself
                    line = key_node.start_mark.line + 1
                    if key in lines:
                        where = f"line {line}" if lines[key] == line else f"lines {lines[key]} and {line}"
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice, on {where}; keep one"
                        )
                    lines[key] = line
                return super().construct_mapping(node, deep=deep)

        RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789."))
        _LOADER = RecipeLoader
    return _LOADER


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"

"""Stimulus sets: experiences (conversations with metadata) loaded and validated against the public format.

The format is a contract: one JSON object per line,
  {"id", "messages": [{"role", "content"}...], "valence", "category", "target", "intensity", "split"}
A local `datasets` folder (saved with `save_to_disk`) with the same columns works too. Validation reports
every problem at once, each with its file:line, field and what was expected, so a user fixes a file in
one pass; nothing is run on an invalid set.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.safe_read import MAX_LINE_BYTES, ReadError, iter_lines_bounded, json_value

VALENCES = ("euphoric", "neutral", "dysphoric")
TARGETS = ("self", "human", "animal", "none")
SPLITS = ("train", "heldout")
ROLES = ("system", "user", "assistant")
FIELDS = ("id", "messages", "valence", "category", "target", "intensity", "split")
DEFAULT_STIMULI = "wellbeing-v1.jsonl"


@dataclass(frozen=True)
class Experience:
    id: str
    messages: tuple[dict, ...]
    valence: str
    category: str
    target: str
    intensity: float
    split: str


@dataclass(frozen=True)
class StimulusSet:
    experiences: tuple[Experience, ...]
    source: str
    sha256: str  # of the canonical content, so the same set hashes the same from JSONL or a datasets folder

    def __len__(self) -> int:
        return len(self.experiences)

    def select(self, *, valence=None, split=None, target=None, category=None) -> list[Experience]:
        """Experiences matching every given filter; `split="all"` or None keeps both splits."""
        keep = []
        for e in self.experiences:
            if valence is not None and e.valence != valence:
                continue
            if split not in (None, "all") and e.split != split:
                continue
            if target is not None and e.target != target:
                continue
            if category is not None and e.category != category:
                continue
            keep.append(e)
        return keep

    def to_dataset(self):
        """The set as a `datasets.Dataset` (messages as a list column), for trainers."""
        from datasets import Dataset

        return Dataset.from_list([{**asdict(e), "messages": list(e.messages)} for e in self.experiences])


class StimulusError(InputError):
    """A stimulus set failed validation; the message lists every problem with its location."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(
            f"{source}: {len(problems)} problem(s) in the stimulus set:\n  "
            + "\n  ".join(shown)
            + more
            + "\nEach line must be a JSON object with fields "
            + ", ".join(FIELDS)
            + " (see eval/stimuli/README.md)."
        )


def builtin_stimuli_path() -> Path:
    return Path(str(resources.files("welfare_offsets.eval.stimuli") / DEFAULT_STIMULI))


def check_stimuli_path(path: str | Path) -> Path:
    """`path` if it can be a stimulus set (a regular file or a folder), checked without opening it: a FIFO
    or device would block or never end."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        problem = "file not found" if isinstance(err, FileNotFoundError) else f"cannot read it ({err.strerror or err})"
        raise StimulusError(str(path), [f"{problem}; pass --stimuli with a JSONL file or a datasets folder"]) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise StimulusError(
            str(path), ["not a regular file or a folder; pass --stimuli with a JSONL file or a datasets folder"]
        )
    return path


def load_stimuli(path: str | Path | None = None) -> StimulusSet:
    """Load and validate a stimulus set: a JSONL file, a `datasets` folder, or (None) the built-in set."""
    path = check_stimuli_path(path) if path else builtin_stimuli_path()
    rows = _rows_from_dataset_folder(path) if path.is_dir() else _rows_from_jsonl(path)
    problems: list[str] = []
    experiences = []
    seen: dict[str, str] = {}
    for where, row in rows:
        if isinstance(row, str):  # a parse error already described
            problems.append(f"{where}: {row}")
            continue
        exp, errs = _validate(row)
        problems += [f"{where}: {e}" for e in errs]
        if exp is None:
            continue
        if exp.id in seen:
            problems.append(
                f"{where}: field 'id': duplicate id {exp.id!r} (first at {seen[exp.id]}); ids must be unique"
            )
        seen.setdefault(exp.id, where)
        experiences.append(exp)
    if not experiences and not problems:
        problems.append("the set is empty; it needs at least one experience")
    if problems:
        raise StimulusError(str(path), problems)
    canonical = "\n".join(json.dumps(asdict(e), sort_keys=True, ensure_ascii=False) for e in experiences)
    return StimulusSet(tuple(experiences), str(path), hashlib.sha256(canonical.encode()).hexdigest())


def _rows_from_jsonl(path: Path) -> Iterable[tuple[str, dict | str]]:
    """Rows of a JSONL file, read within the bounds of eval/safe_read.py; a bad line is described, not raised."""
    try:
        for number, raw in iter_lines_bounded(path, what="--stimuli"):
            where = f"{path}:{number}"
            if raw is None:
                yield where, f"longer than {MAX_LINE_BYTES:,} bytes; one experience per line, each shorter"
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield (
                    where,
                    f"not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}); save the file as UTF-8",
                )
                continue
            if not line.strip():
                continue
            row, problem = json_value(line)
            if problem:
                yield where, problem
                continue
            yield where, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
    except ReadError as err:
        raise StimulusError(str(path), [str(err)]) from None


def _rows_from_dataset_folder(path: Path) -> Iterable[tuple[str, dict | str]]:
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for "not a dataset folder"
        yield str(path), f"not a datasets folder saved with save_to_disk ({err})"
        return
    for i, row in enumerate(data):
        yield f"{path}[row {i}]", row


def _validate(row: dict) -> tuple[Experience | None, list[str]]:
    errs = []
    missing = [f for f in FIELDS if f not in row]
    errs += [f"field {f!r}: missing" for f in missing]
    extra = sorted(set(row) - set(FIELDS))
    errs += [f"field {f!r}: unknown field (allowed: {', '.join(FIELDS)})" for f in extra]
    if missing:
        return None, errs
    if not isinstance(row["id"], str) or not row["id"].strip():
        errs.append(f"field 'id': expected a non-empty string, got {row['id']!r}")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        errs.append("field 'messages': expected a non-empty list of {role, content} objects")
    else:
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or set(m) != {"role", "content"}:
                errs.append(f"field 'messages[{k}]': expected an object with exactly 'role' and 'content'")
            elif m["role"] not in ROLES:
                errs.append(f"field 'messages[{k}].role': expected one of {ROLES}, got {m['role']!r}")
            elif not isinstance(m["content"], str) or not m["content"].strip():
                errs.append(f"field 'messages[{k}].content': expected non-empty text")
    for name, allowed in (("valence", VALENCES), ("target", TARGETS), ("split", SPLITS)):
        if row[name] not in allowed:
            errs.append(f"field {name!r}: expected one of {allowed}, got {row[name]!r}")
    if not isinstance(row["category"], str) or not row["category"].strip():
        errs.append(f"field 'category': expected a non-empty string, got {row['category']!r}")
    intensity = row["intensity"]  # compared, not converted: a 400-digit integer would overflow float()
    if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not -1e300 < intensity < 1e300:
        errs.append(f"field 'intensity': expected a number in [-10, 10], got {intensity!r}")
    elif not -10 <= intensity <= 10:
        errs.append(f"field 'intensity': expected a number in [-10, 10], got {intensity}")
    if errs:
        return None, errs
    exp = Experience(
        id=row["id"],
        messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
        valence=row["valence"],
        category=row["category"],
        target=row["target"],
        intensity=float(intensity),
        split=row["split"],
    )
    return exp, []

"""Writing an evaluation's output folder atomically: results.json, samples.jsonl, items.jsonl, plot, summary.

Everything is written into a staging folder beside the destination and renamed into place at the end,
so a crash or a full disk never leaves a half-written result that looks complete. The staging folder
is created before any model work (`OutputFolder.prepare`), so an unwritable destination fails at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from eval.errors import InputError

RESULTS_SCHEMA_VERSION = 1
_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "wandb", "numpy", "scipy")


class OutputError(InputError):
    """The output folder cannot be written."""


class OutputFolder:
    """A destination folder filled through a staging folder and swapped in by `commit`."""

    def __init__(self, destination: str | Path):
        self.destination = Path(destination).expanduser().resolve()
        self.staging: Path | None = None

    def prepare(self) -> "OutputFolder":
        parent = self.destination.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.destination.name}.staging-", dir=parent))
        except OSError as err:
            raise OutputError(
                f"cannot write the output folder {self.destination}: {err.strerror or err}. "
                "Choose a folder you can write to with --out."
            ) from err
        if self.destination.exists() and not self.destination.is_dir():
            self.abort()
            raise OutputError(f"--out {self.destination} exists and is not a folder; choose another path.")
        return self

    def write_text(self, name: str, text: str) -> Path:
        path = self.staging / name
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return path

    def write_json(self, name: str, data) -> Path:
        return self.write_text(name, json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n")

    def write_jsonl(self, name: str, rows) -> Path:
        return self.write_text(name, "".join(json.dumps(_finite(r), ensure_ascii=False) + "\n" for r in rows))

    def path(self, name: str) -> Path:
        return self.staging / name

    def commit(self) -> Path:
        """Swap the staged folder in; an existing destination is replaced only after the new one is complete."""
        old = None
        if self.destination.exists():
            old = self.destination.with_name(f".{self.destination.name}.old-{os.getpid()}")
            os.replace(self.destination, old)
        os.replace(self.staging, self.destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.staging = None
        return self.destination

    def abort(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def write_json_file(path: str | Path, data) -> Path:
    """One JSON file written whole or not at all (temp file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(_finite(data), indent=2, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _finite(value):
    """JSON has no NaN: undefined numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def provenance() -> dict:
    """What ran: library versions, git commit and dirty flag of this code, and when."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "git": _git_state(),
        "results_schema_version": RESULTS_SCHEMA_VERSION,
    }


def _git_state() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}

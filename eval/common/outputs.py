"""Writing outputs atomically: one file at a time, or an evaluation's whole output folder.

A file is written to a new temp file and renamed over its name (`write_text_file`, `write_figure`); a folder
is filled in a staging folder beside the destination and renamed into place at the end (`OutputFolder`), so
a crash or a full disk never leaves a half-written result that looks complete. The rename replaces whatever
had the name (a symbolic link or a FIFO someone put there is replaced, never written through or blocked
on). The staging folder is created before any model work (`OutputFolder.prepare`), so an unwritable
destination fails at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from welfare_offsets.eval.common.output_folder import (
    OutputError,
    claim,
    output_path,
    staging_folder,
    swap_in,
    temporary_path,
)

__all__ = [
    "OutputError",
    "OutputFolder",
    "provenance",
    "write_figure",
    "write_json_file",
    "write_jsonl_file",
    "write_text_file",
]

_PROJECT = "welfare-offsets"
_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "wandb", "numpy", "scipy")


class OutputFolder:
    """A destination folder filled through a staging folder and swapped in by `commit`. It must be new,
    empty, or (with `overwrite`) an earlier output of the same `kind` holding only what it recorded having
    written (its marker lists the files; see output_folder.py)."""

    def __init__(self, destination: str | Path, *, kind: str = "eval", overwrite: bool = False, flag: str = "--out"):
        self.destination = output_path(destination)
        self.kind, self.overwrite, self.flag = kind, overwrite, flag
        self.staging: Path | None = None

    def prepare(self) -> OutputFolder:
        """Check the destination and make the staging folder now, before any model work."""
        self.claimed = claim(self.destination, self.kind, overwrite=self.overwrite, flag=self.flag, files=())
        self.staging = staging_folder(self.claimed)
        return self

    def write_text(self, name: str, text: str) -> Path:
        return write_text_file(self.staging / name, text)

    def write_jsonl(self, name: str, rows) -> Path:
        return write_jsonl_file(self.staging / name, rows)

    def path(self, name: str) -> Path:
        return self.staging / name

    def commit(self) -> Path:
        """Swap the staged folder in; an earlier output is replaced only after the new one is complete."""
        swap_in(self.staging, self.claimed, overwrite=self.overwrite)
        self.staging = None
        return self.destination

    def abort(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def write_text_file(path: str | Path, text: str) -> Path:
    """A UTF-8 text file written whole or not at all (see `write_file`)."""
    return write_file(path, lambda f: f.write(text.encode("utf-8")))


def write_figure(figure, path: str | Path, *, dpi: int) -> Path:
    """A matplotlib figure as a PNG file written whole or not at all (savefig itself follows a link)."""
    return write_file(path, lambda f: figure.savefig(f, dpi=dpi, format="png"))


def write_file(path: str | Path, write: Callable) -> Path:
    """The one atomic writer outside the ledger: `write(binary file)` fills a new temp file (created here,
    never opened through a link or a FIFO left at its name), which is fsynced and renamed over `path`."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.unlink(missing_ok=True)  # a stale one of a killed writer with our pid
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or an interrupt leaves no temp file behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_file(path: str | Path, data) -> Path:
    """`data` as one indented JSON file, written atomically (result files go through results.write_result)."""
    return write_text_file(path, json.dumps(_finite(data), indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_file(path: str | Path, rows) -> Path:
    """One JSON value per line, written atomically."""
    return write_text_file(path, "".join(json.dumps(_finite(r), ensure_ascii=False, default=str) + "\n" for r in rows))


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
    """What ran, and when: this package's installed version and the libraries', and the git commit and dirty
    flag where this code runs from a git checkout of welfare-offsets (else None: see _own_checkout)."""
    versions = {}
    for name in (_PROJECT, *_LIBRARIES):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "git": _git_state(),
    }


def _git_state() -> dict:
    root = _own_checkout()
    if root is None:
        return {"commit": None, "dirty": None}
    git = ["git", "-C", str(root)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # GIT_DIR would point elsewhere
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], env=env, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no"],
                env=env,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            != ""
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _own_checkout() -> Path | None:
    """The folder holding this code's sources, if it is the top of a git work tree of welfare-offsets itself.
    An installed copy (site-packages/welfare_offsets/) is none: a git repository around it, such as the
    user's own project with a venv inside, says nothing about this code."""
    root = Path(__file__).resolve().parents[2]  # eval/common/outputs.py -> the folder holding eval/
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    ours = re.search(rf'(?m)^name\s*=\s*"{_PROJECT}"\s*$', pyproject)
    return root if ours and (root / ".git").exists() else None

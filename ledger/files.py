"""Small file operations whose failure must not leave half-written data behind."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

STAGING_SUFFIX = ".tmp"  # `.<name>.<pid>.tmp`: a file being written, renamed over <name> when complete
# A staging file (or a session file of no reserved session) this much older than now has no live writer:
# a writer renames a staging file in milliseconds, and reserves within the ledger's busy timeout of
# creating its lock.
STALE_AFTER_S = 600.0


def write_json_atomic(path: Path, value: Any) -> None:
    """Write, fsync, then rename into place: a reader sees the old file or the new one, never a torn one."""
    staging = path.with_name(f".{path.name}.{os.getpid()}{STAGING_SUFFIX}")
    try:
        with open(staging, "w", encoding="utf-8") as handle:
            json.dump(value, handle, sort_keys=True, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)  # e.g. a full disk: leave no half-written staging file behind
        raise


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename or link into it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_stale(path: Path) -> bool:
    """Whether `path` was last changed more than STALE_AFTER_S ago (False if it is gone)."""
    try:
        return time.time() - path.lstat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Small file operations whose failure must not leave half-written data behind, and bounded reads of files
a user names (keys, keyrings), which may be a FIFO, a device or huge."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from welfare_offsets.ledger.errors import LedgerError

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


@contextmanager
def replacing(path: Path, *, what: str) -> Iterator[Path]:
    """A staging path beside `path` (same suffix, so writers that go by it still do), fsynced and renamed
    onto `path` when the block succeeds. A reader never sees a torn file, and a FIFO, device, folder or
    symbolic link at `path` is refused, never opened or followed; a failed block leaves nothing behind."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "symbolic link" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode) else "special file"
        raise LedgerError(f"{what} {path} is a {kind}, not a regular file; nothing was written: pick a file path")
    staging = path.with_name(f".{path.stem}.{os.getpid()}{STAGING_SUFFIX}{path.suffix}")
    try:
        yield staging
        fsync_path(staging)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
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


def read_small_file(path: Path, *, what: str, max_bytes: int) -> bytes:
    """The whole of a regular file of at most `max_bytes`; anything else (a FIFO, a device, a folder, a bigger
    file) is refused with a LedgerError, and nothing blocks: a FIFO is opened without waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise LedgerError(f"{path}: cannot read the {what} ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LedgerError(f"{path}: the {what} must be a regular file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LedgerError(f"{path}: a {what} larger than {max_bytes:,} bytes is refused")
    return data

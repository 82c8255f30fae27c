"""A consistent single-file copy of a ledger that may be in use: never copy an SQLite ledger with `cp`.

SQLite keeps committed entries in `<ledger>-wal` until a checkpoint moves them into the main file;
after a writer is killed they may live only there, so a copy of the main file alone can lack
acknowledged entries. Each store writes one consistent snapshot instead (`Store.copy_to`: SQLite's
online backup, -wal included; a PostgreSQL ledger's rows read in one statement), while other processes
go on writing, as one self-contained SQLite file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from welfare_offsets.ledger.errors import LedgerError
from welfare_offsets.ledger.files import fsync_path
from welfare_offsets.ledger.location import check_not_ledger
from welfare_offsets.ledger.storage import Store


@contextmanager
def staged_copy(store: Store, destination: Path, *, what: str = "backup destination") -> Iterator[Path]:
    """Copy the ledger into a new staging file beside `destination`, fsynced; yields its path, then
    removes whatever of it was not published (a failed or refused copy leaves nothing behind)."""
    _check_destination(store.location, destination, what)
    staging = destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.backup")
    try:
        os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        store.copy_to(staging)
        fsync_path(staging)
        yield staging
    finally:
        for leftover in (staging, Path(f"{staging}-wal"), Path(f"{staging}-shm"), Path(f"{staging}-journal")):
            leftover.unlink(missing_ok=True)


def publish(staging: Path, destination: Path) -> None:
    """Link the finished copy into place: `destination` names a complete copy or nothing, and a path
    created meanwhile is never overwritten."""
    try:
        os.link(staging, destination)
    except FileExistsError:
        raise LedgerError(
            f"{destination} appeared while the backup was being made; nothing was overwritten: pick a new path"
        ) from None
    fsync_path(destination.parent)


def _check_destination(ledger: Path | str, destination: Path, what: str) -> None:
    check_not_ledger(destination, ledger, what=what)
    if os.path.lexists(destination):
        raise LedgerError(f"{what} {destination} already exists; a copy never overwrites anything: pick a new path")
    if not destination.parent.is_dir():
        raise LedgerError(f"{what} folder {destination.parent} does not exist; create it first")

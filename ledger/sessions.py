"""Lock and progress files that let `repair` tell a live session from one killed without settling.

A reserving process holds an exclusive `flock` on `<ledger>.sessions/<session>.lock` from before its
reservation commits until after it settles. The kernel drops the lock when the process dies, even by
kill -9, so a lock anyone can take belongs to a dead session. The session also writes its spend so far
to `<session>.progress.json` now and then; `repair` settles a dead session from it.
(POSIX only; flock on network file systems depends on the mount.)
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from ledger.chain import utc_now
from ledger.errors import LedgerError
from ledger.files import read_json, write_json_atomic


@dataclass(frozen=True)
class Progress:
    spent_hours: float
    energy_kwh: float | None
    updated_at: str


class SessionLock:
    def __init__(self, fd: int, path: Path):
        self._fd, self._path = fd, path

    def release(self, *, delete: bool = False) -> None:
        """Drop the lock (closing the descriptor drops the flock); `delete` also removes the file."""
        if delete:
            self._path.unlink(missing_ok=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SessionFiles:
    def __init__(self, ledger_path: Path):
        self.directory = ledger_path.with_name(ledger_path.name + ".sessions")

    def _lock_path(self, session: str) -> Path:
        return self.directory / f"{session}.lock"

    def _progress_path(self, session: str) -> Path:
        return self.directory / f"{session}.progress.json"

    def hold(self, session: str) -> SessionLock:
        """Create and lock a new session's file; it stays locked while this process lives."""
        try:
            return self._lock(session, os.O_EXCL)
        except FileExistsError:
            raise LedgerError(
                f"session id {session!r} is already in use (see {self.directory}); pick another session id"
            ) from None

    def claim_if_dead(self, session: str) -> SessionLock | None:
        """The session's lock if no live process holds it, else None."""
        try:
            return self._lock(session, 0)
        except BlockingIOError:
            return None

    def is_alive(self, session: str) -> bool:
        """Whether a live process holds the session's lock. Creates nothing, so it works read-only."""
        try:
            fd = os.open(self._lock_path(session), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def _lock(self, session: str, extra_flags: int) -> SessionLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._lock_path(session)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | extra_flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return SessionLock(fd, path)

    def write_progress(self, session: str, spent_hours: float, energy_kwh: float | None) -> None:
        write_json_atomic(
            self._progress_path(session),
            {"session": session, "spent_hours": spent_hours, "energy_kwh": energy_kwh, "updated_at": utc_now()},
        )

    def read_progress(self, session: str) -> Progress | None:
        path = self._progress_path(session)
        if not path.exists():
            return None
        data = read_json(path)
        return Progress(float(data["spent_hours"]), data.get("energy_kwh"), str(data["updated_at"]))

    def remove(self, session: str) -> None:
        """Forget a settled session's files (the caller still holds, then releases, the lock)."""
        self._progress_path(session).unlink(missing_ok=True)
        self._lock_path(session).unlink(missing_ok=True)

"""How `repair` tells a live session from one killed without settling (`Sessions`), and its files here.

Each store says where its sessions hold their liveness locks and note their progress: an SQLite ledger
in files beside it (`SessionFiles`, below), a PostgreSQL one in the server (`postgres.ServerSessions`).
For files: a reserving process holds an exclusive `flock` on `<ledger>.sessions/<session>.lock` (beside
the ledger's real file, symlinks resolved) from before its reservation commits until after it settles.
The kernel drops the lock when the process dies, even by kill -9, so a lock anyone can take belongs to a
dead session. The session also writes its spend so far to `<session>.progress.json` now and then;
`repair` settles a dead session from it.
A lock counts only while its file is still at its path: whoever takes one checks that afterwards, so a
process that locked a file another process was deleting tries the one now there.
(POSIX only; flock on network file systems depends on the mount.)

Progress lives outside the hash chain, so it is only evidence: `read_progress` checks it
(`parse_progress`) and reports what is wrong instead of raising anything else.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from welfare_offsets.ledger.chain import is_portable_text, utc_now
from welfare_offsets.ledger.errors import LedgerError
from welfare_offsets.ledger.files import STAGING_SUFFIX, is_stale, write_json_atomic
from welfare_offsets.ledger.location import SESSIONS_SUFFIX

MAX_PROGRESS_BYTES = 64 * 1024  # a progress note is ~150 bytes; anything this big is not one
_LOCK, _PROGRESS = ".lock", ".progress.json"
_LOCK_ATTEMPTS = 5


@dataclass(frozen=True)
class Progress:
    spent_hours: float
    energy_kwh: float | None
    updated_at: str


class UnreadableProgress(Exception):
    """A progress file that cannot be trusted; the message says why (for a settlement's `basis`)."""


class SessionLock(ABC):
    """A session's liveness lock, held by this process."""

    @abstractmethod
    def release(self, *, delete: bool = False) -> None:
        """Let go of the lock; `delete` also removes what marks the session as started (its lock file)."""


class Sessions(ABC):
    """Liveness locks and progress notes of a ledger's sessions."""

    @abstractmethod
    def hold(self, session: str) -> SessionLock:
        """Lock a new session; it stays locked while this process lives. LedgerError if it is in use."""

    @abstractmethod
    def claim_if_dead(self, session: str) -> SessionLock | None:
        """The session's lock if no live process holds it, else None."""

    @abstractmethod
    def is_alive(self, session: str) -> bool:
        """Whether a live process holds the session's lock; takes nothing, so it works read-only."""

    @abstractmethod
    def write_progress(self, session: str, spent_hours: float, energy_kwh: float | None) -> None: ...

    @abstractmethod
    def read_progress(self, session: str) -> Progress | None:
        """The session's last progress, None if it noted none; UnreadableProgress if the note is not a
        plausible progress note of this session."""

    @abstractmethod
    def remove(self, session: str) -> None:
        """Forget a settled session's liveness and progress records, where the store removes any."""

    @abstractmethod
    def remove_leftovers(self, settled: Collection[str], reserved: Collection[str]) -> list[Path]:
        """Delete records no live process needs; returns what was removed."""


def progress_note(session: str, spent_hours: float, energy_kwh: float | None) -> dict:
    return {"session": session, "spent_hours": spent_hours, "energy_kwh": energy_kwh, "updated_at": utc_now()}


class LockFile(SessionLock):
    def __init__(self, fd: int, path: Path):
        self._fd, self._path = fd, path

    def release(self, *, delete: bool = False) -> None:
        """Drop the lock (closing the descriptor drops the flock); `delete` also removes the file."""
        if delete:
            self._path.unlink(missing_ok=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SessionFiles(Sessions):
    def __init__(self, ledger_path: Path):
        """The folder is beside the ledger's real file, so every path to the ledger (a symlink, another
        spelling) finds the same locks: else `repair` through one path settles a session running through another."""
        real = Path(os.path.realpath(ledger_path))
        self.directory = real.with_name(real.name + SESSIONS_SUFFIX)

    def _lock_path(self, session: str) -> Path:
        return self.directory / f"{session}{_LOCK}"

    def _progress_path(self, session: str) -> Path:
        return self.directory / f"{session}{_PROGRESS}"

    def hold(self, session: str) -> LockFile:
        """Create and lock a new session's file; it stays locked while this process lives."""
        try:
            lock = self._lock(session, os.O_EXCL)
        except (FileExistsError, BlockingIOError):
            lock = None
        if lock is None:
            raise LedgerError(
                f"session id {session!r} is already in use (see {self.directory}); pick another session id"
            )
        return lock

    def claim_if_dead(self, session: str) -> LockFile | None:
        try:
            return self._lock(session, 0)
        except BlockingIOError:
            return None

    def is_alive(self, session: str) -> bool:
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

    def _lock(self, session: str, extra_flags: int) -> LockFile | None:
        """Lock the file at the session's lock path; None if it kept being replaced while we locked it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._lock_path(session)
        for _ in range(_LOCK_ATTEMPTS):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | extra_flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _is_at(fd, path):
                    return LockFile(fd, path)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # another process removed the file while we locked it: lock the one there now
        return None

    def write_progress(self, session: str, spent_hours: float, energy_kwh: float | None) -> None:
        write_json_atomic(self._progress_path(session), progress_note(session, spent_hours, energy_kwh))

    def read_progress(self, session: str) -> Progress | None:
        """Never blocks on a FIFO nor reads a huge file."""
        path = self._progress_path(session)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise UnreadableProgress(f"its progress file cannot be opened ({error.strerror})") from None
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise UnreadableProgress("its progress file is not a regular file")
            raw = os.read(fd, MAX_PROGRESS_BYTES + 1)
        except OSError as error:
            raise UnreadableProgress(f"its progress file cannot be read ({error.strerror})") from None
        finally:
            os.close(fd)
        return parse_progress(raw, session, what="progress file")

    def remove(self, session: str) -> None:
        """Delete a settled session's files (the caller still holds, then releases, the lock)."""
        _discard(self._progress_path(session))
        _discard(self._lock_path(session))

    def remove_leftovers(self, settled: Collection[str], reserved: Collection[str]) -> list[Path]:
        """Delete files no live process needs: those of settled sessions, whose lock anyone can take;
        those of sessions never reserved and staging files, once stale. Returns what was removed."""
        if not self.directory.is_dir():
            return []
        removed = []
        for path in sorted(self.directory.iterdir()):
            if path.name.endswith(STAGING_SUFFIX):
                if is_stale(path):
                    _discard(path)
                    removed.append(path)
                continue
            session = _session_of(path.name)
            if session is None or not path.exists() or not _is_leftover(session, path, settled, reserved):
                continue
            lock = self.claim_if_dead(session)
            if lock is not None:
                removed += [p for p in (self._progress_path(session), self._lock_path(session)) if p.exists()]
                self.remove(session)
                lock.release()
        return removed


def _discard(path: Path) -> None:
    """Remove a file; something else put at its path (a folder) is removed only if empty."""
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        try:
            path.rmdir()
        except OSError:
            pass  # not empty: not ours to delete; it no longer matters once the session is settled


def _is_at(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _is_leftover(session: str, path: Path, settled: Collection[str], reserved: Collection[str]) -> bool:
    """A settled session's file, or a stale one of a session never reserved (killed before it reserved)."""
    return session in settled or (session not in reserved and is_stale(path))


def _session_of(name: str) -> str | None:
    for suffix in (_LOCK, _PROGRESS):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def parse_progress(raw: bytes, session: str, *, what: str) -> Progress:
    """Read a progress note (`what`: where it came from, for the reasons given) as untrusted evidence."""
    if len(raw) > MAX_PROGRESS_BYTES:
        raise UnreadableProgress(f"its {what} is implausibly large (more than {MAX_PROGRESS_BYTES} bytes)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise UnreadableProgress(f"its {what} is not JSON") from None
    if not isinstance(data, dict) or data.get("session") != session:
        raise UnreadableProgress(f"its {what} is not this session's progress")
    spent, energy, updated_at = data.get("spent_hours"), data.get("energy_kwh"), data.get("updated_at")
    if not _is_amount(spent):
        raise UnreadableProgress(f"its {what} gives spent_hours {spent!r}, not a finite number >= 0")
    if energy is not None and not _is_amount(energy):
        raise UnreadableProgress(f"its {what} gives energy_kwh {energy!r}, not a finite number >= 0")
    if (
        not isinstance(updated_at, str) or len(updated_at) > 64 or not is_portable_text(updated_at)
    ):  # it goes into the settlement
        raise UnreadableProgress(f"its {what} has no readable updated_at time")
    return Progress(float(spent), None if energy is None else float(energy), updated_at)


def _is_amount(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return False
    return math.isfinite(number) and number >= 0

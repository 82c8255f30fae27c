"""Where the ledger lives (`--ledger PATH` or URL, else $WELFARE_LEDGER, else the user's data directory),
and which paths belong to a ledger, so that nothing ever writes an export, a plot or a run's output over one.

A location is an SQLite file (a `Path`) or a PostgreSQL server's URL (a `str` starting postgresql:// or
postgres://); a URL is only ever shown without its password (`redact`). An SQLite ledger is several paths: the SQLite file, its `-wal` (committed entries not yet checkpointed live only
there), `-shm` and `-journal`, and the `.sessions` folder of lock and progress files. Any spelling of
them counts: paths are compared after resolving symlinks, and existing files also by device and inode
(a hard link), and a file is recognised as a ledger by its content too, whichever ledger it is.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from welfare_offsets.ledger.errors import LedgerError
from welfare_offsets.ledger.storage import FORMAT_NAME

ENV_VAR = "WELFARE_LEDGER"
SERVER_SCHEMES = ("postgresql://", "postgres://")
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
SESSIONS_SUFFIX = ".sessions"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def default_ledger_path(environ: Mapping[str, str] = os.environ) -> Path | str:
    if environ.get(ENV_VAR):
        return _location(environ[ENV_VAR])
    data_home = environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "welfare-offsets" / "ledger.sqlite"


def resolve_ledger_path(explicit: str | os.PathLike | None) -> Path | str:
    """The ledger to use; an empty path is refused rather than silently meaning the default ledger."""
    if explicit is None:
        return default_ledger_path()
    if not os.fspath(explicit):
        raise LedgerError(
            "--ledger '' is an empty path; pass --ledger PATH to a ledger file (or a postgresql:// URL), "
            f"or leave the option out to use ${ENV_VAR} or the default ledger"
        )
    return _location(explicit)


def is_server_url(location: object) -> bool:
    """Whether a location names a PostgreSQL server rather than a file."""
    return isinstance(location, str) and location.startswith(SERVER_SCHEMES)


def redact(url: str) -> str:
    """A server URL without its password (in its user part or a password parameter), to show and record:
    passwords belong in ~/.pgpass or PGPASSWORD, never in anything a command prints or a run writes."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.split(':', 1)[0]}{at}{host}"
    query = urlencode(
        [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "password"]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def shown(location: str | os.PathLike) -> str:
    """A location as it may be printed: a URL without its password."""
    return redact(location) if is_server_url(location) else os.fspath(location)


def _location(text: str | os.PathLike) -> Path | str:
    return text if is_server_url(text) else Path(text).expanduser()


def is_ledger_file(path: str | os.PathLike, ledger: str | os.PathLike | None = None) -> bool:
    """Whether writing to `path` could overwrite a ledger: `ledger` (default: the one `--ledger` would find
    without the option), its -wal/-shm/-journal or its .sessions folder (or anything inside it), or any
    file that is itself a welfare-offsets ledger or the -wal/-shm/-journal/.sessions of one. (A ledger on
    a server has no files here to overwrite.)"""
    target = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    known = resolve_ledger_path(ledger)
    if not is_server_url(known) and (
        _names_ledger_part(target, {Path(os.path.realpath(known)), Path(os.path.abspath(known))})
        or _same_file_as_any(target, known)
    ):
        return True
    return any(_is_ledger_database(base) for base in _possible_ledgers(target))


def check_not_ledger(path: str | os.PathLike, ledger: str | os.PathLike | None = None, *, what: str = "output") -> None:
    """Refuse (LedgerError) an output path that `is_ledger_file`: writing it would destroy the ledger."""
    if is_ledger_file(path, ledger):
        raise LedgerError(
            f"{what} {os.fspath(path)!r} is a ledger file (or its -wal/-shm or .sessions folder); "
            "writing there would destroy the ledger, so nothing was written: pick another path"
        )


def _names_ledger_part(target: Path, ledgers: set[Path]) -> bool:
    for base in ledgers:
        parts = {base, *(base.with_name(base.name + suffix) for suffix in COMPANION_SUFFIXES)}
        sessions = base.with_name(base.name + SESSIONS_SUFFIX)
        if target in parts or target == sessions or sessions in target.parents:
            return True
    return False


def _same_file_as_any(target: Path, ledger: Path) -> bool:
    """A hard link to the ledger or one of its companions names the same inode under another name."""
    identity = _identity(target)
    if identity is None:
        return False
    companions = [ledger, *(ledger.with_name(ledger.name + suffix) for suffix in COMPANION_SUFFIXES)]
    return any(_identity(companion) == identity for companion in companions)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _possible_ledgers(target: Path) -> list[Path]:
    """The files that would make `target` part of a ledger: itself, the file its companion suffix names,
    and, for a path in or at a `.sessions` folder, the file that folder belongs to."""
    candidates = [target]
    for suffix in COMPANION_SUFFIXES:
        if target.name.endswith(suffix):
            candidates.append(target.with_name(target.name[: -len(suffix)]))
    for folder in (target, *target.parents):
        if folder.name.endswith(SESSIONS_SUFFIX):
            candidates.append(folder.with_name(folder.name[: -len(SESSIONS_SUFFIX)]))
    return candidates


def _is_ledger_database(path: Path) -> bool:
    """Whether `path` is a regular SQLite file whose meta table names the ledger format. Reads the main
    file only (immutable: no locks, no -wal/-shm created), and never opens a FIFO or device."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            if handle.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                return False
        db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    except (OSError, sqlite3.Error):
        return False
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.Error:
        return False
    finally:
        db.close()
    return row is not None and row[0] == FORMAT_NAME

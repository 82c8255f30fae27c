"""Durable storage of the hash chain in SQLite: the embedded default, one file per ledger.

Why SQLite and not an fsynced JSONL file:
- A transaction lands whole or not at all. A batch of entries is one commit, and after kill -9 or a
  power cut SQLite's WAL recovery drops any uncommitted tail; a JSONL file needs its own repair of
  torn last lines and cannot make a many-entry append atomic.
- `BEGIN IMMEDIATE` takes the write lock before the head is read, so sessions in several processes
  append one after another and the chain stays linear, without a hand-made lock file.
- WAL with `synchronous=FULL` fsyncs the log before COMMIT returns: an acknowledged entry is on disk,
  and readers (verify, report) see a consistent snapshot while writers append.
- Balances are read out of the chained payloads themselves (`json_each`, in C) and summed in Python,
  whose integers never overflow: no second copy of the numbers that could drift from what the hashes protect.
- The generated columns and triggers are part of what is trusted, so `schema_problem` compares them with
  what `_SCHEMA` creates, and a transaction refuses to write into a ledger whose schema differs.
The price: the file is binary, so people read it through `welfare ledger show` and `export`. What is
not SQLite's own (reading entries, summing, appending) is shared with the PostgreSQL store (`storage`).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import secrets
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from welfare_offsets.ledger.errors import LedgerError, NotALedger
from welfare_offsets.ledger.files import fsync_path, is_stale
from welfare_offsets.ledger.sessions import SessionFiles
from welfare_offsets.ledger.storage import META, Queries, Store, Transaction, check_meta, schema_difference

# Long, because a writer waits behind other sessions' commits rather than failing a run.
BUSY_TIMEOUT_S = 120.0

_SCHEMA = f"""
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- `body` is the hashed canonical JSON; the other columns are read out of it, so they cannot disagree.
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    hash TEXT NOT NULL,
    kind TEXT GENERATED ALWAYS AS (json_extract(body, '$.kind')) VIRTUAL,
    time TEXT GENERATED ALWAYS AS (json_extract(body, '$.time')) VIRTUAL,
    session TEXT GENERATED ALWAYS AS (json_extract(body, '$.payload.session')) VIRTUAL,
    corrects INTEGER GENERATED ALWAYS AS (json_extract(body, '$.payload.corrects')) VIRTUAL
);
CREATE INDEX entries_by_kind ON entries(kind);
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
INSERT INTO meta VALUES {", ".join(f"('{key}', '{value}')" for key, value in META.items())};
COMMIT;
"""

_QUERIES = Queries(
    head="SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1",
    entry="SELECT seq, body, hash FROM entries WHERE seq = :seq",
    select="SELECT seq, body, hash FROM entries WHERE (:kind IS NULL OR kind = :kind)"
    " AND (:session IS NULL OR session = :session) AND (:since IS NULL OR time >= :since)"
    " AND (:until IS NULL OR time < :until) AND (:corrects IS NULL OR corrects = :corrects) ORDER BY seq",
    postings="SELECT seq, p.key, p.value FROM entries, json_each(entries.body, '$.payload.postings') AS p",
    postings_of="SELECT seq, p.value FROM entries, json_each(entries.body, '$.payload.postings') AS p WHERE p.key = :account",
    insert="INSERT INTO entries (seq, body, hash) VALUES (:seq, :body, :hash)",
    chain="SELECT CAST(body AS BLOB), hash FROM entries ORDER BY seq",
    # one aggregate per subquery, so each is a rowid lookup, not a scan
    seq_range="SELECT (SELECT MIN(seq) FROM entries), (SELECT MAX(seq) FROM entries)",
    misnumbered="SELECT seq FROM entries WHERE seq IS NOT json_extract(body, '$.seq') ORDER BY seq LIMIT 1",
)
_SCHEMA_ROWS = "SELECT type, name, sql FROM sqlite_master"


@functools.cache
def _expected_schema() -> tuple[dict[tuple[str, str], str | None], dict[str, str]]:
    """The sqlite_master rows and meta rows `_SCHEMA` creates: built from the DDL itself, so the check
    and the creation cannot drift apart."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        db.executescript(_SCHEMA)
        schema = {(kind, name): sql for kind, name, sql in db.execute(_SCHEMA_ROWS)}
        return schema, dict(db.execute("SELECT key, value FROM meta"))
    finally:
        db.close()


class SQLiteStore(Store):
    def __init__(self, db: sqlite3.Connection, path: Path):
        super().__init__(db.execute, _QUERIES)
        self._db = db
        self.location = path
        self._schema_checked_at: int | None = None  # the schema cookie when schema_problem last found nothing

    @classmethod
    def open(cls, path: Path, *, create: bool) -> SQLiteStore:
        """Open the ledger at `path`, creating it if missing and `create`; refuse anything else."""
        if not _is_existing_file(path):
            if not create:
                raise LedgerError(
                    f"no ledger at {path}: pass --ledger PATH (or set WELFARE_LEDGER) to an existing "
                    "ledger; `welfare ledger fund` creates a new one"
                )
            try:
                _create(path)
            except (OSError, sqlite3.Error) as error:
                raise LedgerError(
                    f"cannot create a ledger at {path} ({_reason(error)}); pass --ledger PATH in a folder you can write"
                ) from None
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise LedgerError(
                f"cannot open ledger {path} ({error}); check that you can read it and write its "
                "folder (SQLite keeps its -wal and -shm files beside it)"
            ) from None
        try:
            _check_format(db, path)
            db.execute("PRAGMA synchronous=FULL")
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    @classmethod
    def fill(cls, path: Path, rows: Iterable[tuple[bytes, str]]) -> None:
        """Make the existing empty file `path` a ledger holding `rows` as they are, in one commit."""
        db = sqlite3.connect(path, isolation_level=None)
        try:
            _initialise(db)
            with cls(db, path).transaction() as tx:
                tx.extend(rows)
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """All appends inside commit together (one fsync) or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._require_schema()
            yield Transaction(self._db.execute, _QUERIES)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _require_schema(self) -> None:
        """Refuse to write where the columns that decide reservations and settlements are not ours; the
        check reruns only when SQLite's schema cookie changed, so an append costs one PRAGMA."""
        cookie = self._db.execute("PRAGMA schema_version").fetchone()[0]
        if cookie == self._schema_checked_at:
            return
        problem = self.schema_problem()
        if problem is not None:
            raise LedgerError(
                f"ledger {self.location} cannot be written: {problem}. Nothing was written; check it "
                "with `welfare ledger verify` and restore it from a backup"
            )
        self._schema_checked_at = cookie

    def schema_problem(self) -> str | None:
        """What differs between this database's tables, generated columns, indexes, triggers and meta rows
        and those `_SCHEMA` creates, or None if nothing does."""
        expected_schema, expected_meta = _expected_schema()
        found = {(kind, name): sql for kind, name, sql in self._db.execute(_SCHEMA_ROWS)}
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        return schema_difference(expected_schema, found, expected_meta, meta)

    def sessions(self) -> SessionFiles:
        return SessionFiles(self.location)

    def copy_to(self, staging: Path) -> None:
        """Copy the whole database in one step of SQLite's online backup: one consistent snapshot,
        entries still only in the -wal included, while other processes go on writing."""
        target = sqlite3.connect(staging, isolation_level=None)
        try:
            self._db.backup(target)
        finally:
            target.close()

    def remove_stale_staging(self) -> list[Path]:
        """Delete what processes killed while creating this ledger left beside it; returns what was removed."""
        prefix, removed = f".{self.location.name}.", []
        for leftover in self.location.parent.glob(f"{glob.escape(prefix)}*"):
            if _STAGING.fullmatch(leftover.name[len(prefix) :]) and is_stale(leftover):
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
        return removed

    def close(self) -> None:
        self._db.close()


def _check_format(db: sqlite3.Connection, path: Path) -> None:
    how_to_fix = "point --ledger at a ledger file, or at a new path to create one"
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as error:
        raise NotALedger(f"{path} is not a welfare-offsets ledger ({error}); {how_to_fix}") from None
    check_meta(meta, f"{path}, an SQLite file,", how_to_fix)


def _is_existing_file(path: Path) -> bool:
    """Whether `path` is an existing regular file. Anything else that exists is refused before SQLite
    sees it: opening a FIFO would block forever, and the others fail with unhelpful messages."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise LedgerError(
                f"{path} is a symlink to the missing {os.readlink(path)}; point --ledger at the "
                "ledger file itself, or fix the link"
            ) from None
        return False
    except OSError as error:
        raise LedgerError(
            f"cannot open ledger {path} ({_reason(error)}); pass --ledger PATH to a ledger file"
        ) from None
    if stat.S_ISDIR(status.st_mode):
        raise NotALedger(f"{path} is a directory, not a ledger file; pass --ledger PATH to a file")
    if not stat.S_ISREG(status.st_mode):
        raise NotALedger(
            f"{path} is a {_file_kind(status.st_mode)}, not a ledger file; pass --ledger PATH to a ledger file"
        )
    if not os.access(path, os.R_OK):
        raise LedgerError(f"ledger {path} is not readable by this user; check its permissions (ls -l {path})")
    return True


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_IFIFO: "FIFO (named pipe)",
        stat.S_IFSOCK: "socket",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
    }
    return kinds.get(stat.S_IFMT(mode), "special file")


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


_STAGING = re.compile(r"\d+\.[0-9a-f]{8}\.new(-wal|-shm|-journal)?")  # after `.<ledger name>.`, as _create names it


def _create(path: Path) -> None:
    """Build the new ledger beside `path` and link it into place, so `path` never names a half-made file
    and concurrent first users agree on one ledger."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")  # see _STAGING
    try:
        db = sqlite3.connect(staging, isolation_level=None)
        try:
            _initialise(db)
        finally:
            db.close()
        fsync_path(staging)
        try:
            os.link(staging, path)
        except FileExistsError:
            pass  # another process created it first: everyone uses that one
        fsync_path(path.parent)
    finally:
        for leftover in (staging, Path(f"{staging}-wal"), Path(f"{staging}-shm")):
            leftover.unlink(missing_ok=True)


def _initialise(db: sqlite3.Connection) -> None:
    """Give a new, empty database the ledger's journal mode, schema and meta rows."""
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)

"""Durable storage of the hash chain, in SQLite.

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
The price: the file is binary, so people read it through `welfare ledger show` and `export`.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import secrets
import sqlite3
import stat
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from welfare_offsets.ledger.chain import EMPTY_HEAD, GENESIS_HASH, Entry, Head, seal, utc_now
from welfare_offsets.ledger.errors import LedgerError, NotALedger, SchemaTooNew
from welfare_offsets.ledger.files import fsync_path, is_stale

SCHEMA_VERSION = 1
FORMAT_NAME = "welfare-offsets-ledger"
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
INSERT INTO meta VALUES ('format', '{FORMAT_NAME}'), ('schema_version', '{SCHEMA_VERSION}'),
    ('genesis', '{GENESIS_HASH}');
COMMIT;
"""


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


def _entry(row: tuple[str, str]) -> Entry:
    body, hash_ = row
    fields = json.loads(body)
    return Entry(fields["seq"], fields["time"], fields["kind"], fields["payload"], fields["prev_hash"], hash_)


class _Reader:
    """Queries shared by the store and by a transaction (which sees its own uncommitted entries)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def head(self) -> Head:
        row = self._db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return Head(*row) if row else EMPTY_HEAD

    def entry(self, seq: int) -> Entry | None:
        row = self._db.execute("SELECT body, hash FROM entries WHERE seq = ?", (seq,)).fetchone()
        return _entry(row) if row else None

    def select(
        self,
        *,
        kind: str | None = None,
        session: str | None = None,
        since: str | None = None,
        until: str | None = None,
        corrects: int | None = None,
    ) -> list[Entry]:
        """Entries in seq order; each filter left as None matches everything."""
        rows = self._db.execute(
            "SELECT body, hash FROM entries WHERE (:kind IS NULL OR kind = :kind)"
            " AND (:session IS NULL OR session = :session) AND (:since IS NULL OR time >= :since)"
            " AND (:until IS NULL OR time < :until) AND (:corrects IS NULL OR corrects = :corrects) ORDER BY seq",
            {"kind": kind, "session": session, "since": since, "until": until, "corrects": corrects},
        )
        return [_entry(row) for row in rows]

    def account_totals(self) -> dict[str, int]:
        """Every account's balance in micro-hours: the sum of all postings to it."""
        totals: dict[str, int] = defaultdict(int)
        for name, amount in self._db.execute(
            "SELECT p.key, p.value FROM entries, json_each(entries.body, '$.payload.postings') AS p"
        ):
            totals[name] += amount
        return dict(totals)

    def account_total(self, account: str) -> int | None:
        """One account's balance in micro-hours, or None if nothing was ever posted to it."""
        amounts = [
            amount
            for (amount,) in self._db.execute(
                "SELECT p.value FROM entries, json_each(entries.body, '$.payload.postings') AS p WHERE p.key = ?",
                (account,),
            )
        ]
        return sum(amounts) if amounts else None

    def schema_problem(self) -> str | None:
        """What differs between this database's tables, generated columns, indexes, triggers and meta rows
        and those `_SCHEMA` creates, or None if nothing does."""
        expected_schema, expected_meta = _expected_schema()
        found = {(kind, name): sql for kind, name, sql in self._db.execute(_SCHEMA_ROWS)}
        for key in sorted(expected_schema.keys() | found.keys()):
            if key not in found:
                return f"its {key[0]} {key[1]} is missing (the database schema was edited)"
            if key not in expected_schema:
                return f"it has an extra {key[0]} {key[1]} (the database schema was edited)"
            if found[key] != expected_schema[key]:
                return (
                    f"its {key[0]} {key[1]} is defined as {found[key]!r}, not as this code creates it "
                    "(the database schema was edited)"
                )
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if meta != expected_meta:
            return f"its meta table holds {meta!r}, not {expected_meta!r} (the database was edited)"
        return None


class Transaction(_Reader):
    """Appends under the write lock; the head is read once, when the lock was taken."""

    def __init__(self, db: sqlite3.Connection):
        super().__init__(db)
        self._head = self.head()

    def append(self, kind: str, payload: dict[str, Any]) -> Entry:
        seq, time, prev_hash = self._head.seq + 1, utc_now(), self._head.hash
        body, hash_ = seal(seq, time, kind, payload, prev_hash)
        self._db.execute("INSERT INTO entries (seq, body, hash) VALUES (?, ?, ?)", (seq, body, hash_))
        self._head = Head(seq, hash_)
        return _entry((body, hash_))


class Store(_Reader):
    def __init__(self, db: sqlite3.Connection, path: Path):
        super().__init__(db)
        self.path = path
        self._schema_checked_at: int | None = None  # the schema cookie when schema_problem last found nothing

    @classmethod
    def open(cls, path: Path, *, create: bool) -> Store:
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

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """All appends inside commit together (one fsync) or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._require_schema()
            yield Transaction(self._db)
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
                f"ledger {self.path} cannot be written: {problem}. Nothing was written; check it "
                "with `welfare ledger verify` and restore it from a backup"
            )
        self._schema_checked_at = cookie

    def chain_rows(self) -> Iterator[tuple[bytes, str]]:
        """Stored (body bytes, hash) rows in seq order, for verification."""
        return self._db.execute("SELECT CAST(body AS BLOB), hash FROM entries ORDER BY seq")

    def first_misnumbered_seq(self, rows: int) -> int | None:
        """After a chain check walked `rows` rows whose bodies hold seqs 1..rows in order: the first
        row whose seq column disagrees with its body, if any. Distinct integers from 1 to `rows`,
        `rows` of them, are exactly 1..rows, so the usual answer costs no scan."""
        low, high = self._db.execute(  # one aggregate per subquery, so each is a rowid lookup, not a scan
            "SELECT (SELECT MIN(seq) FROM entries), (SELECT MAX(seq) FROM entries)"
        ).fetchone()
        if rows == 0 or (low, high) == (1, rows):
            return None
        row = self._db.execute(
            "SELECT seq FROM entries WHERE seq IS NOT json_extract(body, '$.seq') ORDER BY seq LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    def copy_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole database into `target` in one step of SQLite's online backup: one consistent
        snapshot, entries still only in the -wal included, while other processes go on writing."""
        self._db.backup(target)

    def remove_stale_staging(self) -> list[Path]:
        """Delete what processes killed while creating this ledger left beside it; returns what was removed."""
        prefix, removed = f".{self.path.name}.", []
        for leftover in self.path.parent.glob(f"{glob.escape(prefix)}*"):
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
    if meta.get("format") != FORMAT_NAME:
        raise NotALedger(f"{path} is an SQLite file but not a welfare-offsets ledger; {how_to_fix}")
    version = meta.get("schema_version", "")
    if not version.isdigit():
        raise NotALedger(f"{path} has an unreadable schema version {version!r}; {how_to_fix}")
    if int(version) > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has ledger schema version {version}, newer than the {SCHEMA_VERSION} this "
            "welfare-offsets reads; upgrade welfare-offsets to read or write it"
        )


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
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
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

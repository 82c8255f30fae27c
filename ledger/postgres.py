"""The ledger in PostgreSQL: one ledger for a team whose sessions run on many machines.

The rows, the canonical entries and every check are the SQLite store's (`storage` holds what they share);
what the server adds:
- **Appends are serialised** by a transaction-level advisory lock taken before the head is read, so any
  number of writers on any number of hosts extend one linear chain; the lock is freed when the
  transaction ends, however it ends (a writer killed mid-transaction included).
- **The database enforces append-only itself.** Triggers refuse UPDATE, DELETE and TRUNCATE on every table,
  whoever runs them, and a BEFORE INSERT trigger refuses a row that does not extend the chain (its seq is
  not the next, its prev_hash is not the last entry's hash, or its hash is not sha256 of its body). A
  writer role needs only INSERT and SELECT (docs/ledger.md); only the tables' owner can drop or disable a
  trigger, and `schema_problem` (so `verify`, and every write) finds that: a write locks the entries table
  first, so no schema change lands between its check and its commit.
- **Liveness across hosts.** A session holds a session-level advisory lock on the connection of the process
  that reserved it, for as long as it runs; the server frees it when that connection ends (the process
  died, even by kill -9, or closed the ledger), so `repair` treats a session whose lock it can take as
  abandoned. Progress notes are rows of an append-only table, read back as untrusted evidence, as files are.
- **A lost connection** (the server restarted, the network failed) is re-established for up to
  RECONNECT_TIMEOUT_S, and the process re-takes its sessions' locks. A read is simply run again. A write
  is run again only when it is known to have written nothing: after reconnecting, under the append lock
  (so the lost transaction has ended, committed or not), the store looks for the last entry it was
  appending; if it is there, the commit landed and the write is done; if not, the ledger runs the write
  again from a fresh read (`storage.WriteInterrupted`). Nothing is appended twice, nothing acknowledged
  is lost (the server acknowledges a commit only once its WAL is written).
For RESTART_GRACE_S after the server starts, a free session lock may belong to a live session whose
process has not reconnected yet, so `repair` leaves such sessions open until then.
Entries are kept as text (not jsonb, which would reorder keys) and read through `body::json` expressions,
never through a derived column a schema edit could redefine; indexes on the same expressions only make
those reads fast (an index that does not match them is simply not used). psycopg 3 is an optional
dependency, imported when a postgresql:// ledger is opened.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from welfare_offsets.ledger.chain import GENESIS_HASH, Head
from welfare_offsets.ledger.errors import LedgerError, NotALedger
from welfare_offsets.ledger.location import redact
from welfare_offsets.ledger.sessions import (
    MAX_PROGRESS_BYTES,
    Progress,
    SessionLock,
    Sessions,
    parse_progress,
    progress_note,
)
from welfare_offsets.ledger.storage import (
    META,
    Queries,
    Store,
    Transaction,
    WriteInterrupted,
    check_meta,
    schema_difference,
)
from welfare_offsets.ledger.store import SQLiteStore

INSTALL = "pip install 'welfare-offsets[postgres]'"
# A writer waits this long behind other writers (as SQLite's busy timeout) before giving up with an error.
LOCK_TIMEOUT_S = 120
# A lost connection is re-established for this long before a command gives up with an error.
RECONNECT_TIMEOUT_S = 120.0
# Sessions note progress every 30 s (BudgetSession), which reconnects and re-takes their locks: for this
# long after the server starts, a free session lock may still belong to a live session.
RESTART_GRACE_S = 120.0
# A transaction idle this long (its client hung, or vanished unseen) is ended by the server, freeing the
# append lock before the writers waiting behind it give up (LOCK_TIMEOUT_S).
IDLE_IN_TRANSACTION_S = 60

_KIND = "((body::json) ->> 'kind')"
_SESSION = "(((body::json) -> 'payload') ->> 'session')"
_TIME = """(((body::json) ->> 'time') COLLATE "C")"""  # fixed-width UTC text: compared byte by byte
_POSTINGS_FIELD = "(((body::json) -> 'payload') -> 'postings')"
# json_each fails the whole query on postings that are not an object (a malformed entry); such postings
# read instead as one posting to the account '', which `storage` refuses, naming the entry.
_POSTINGS = (
    f"json_each(CASE WHEN {_POSTINGS_FIELD} IS NULL OR json_typeof({_POSTINGS_FIELD}) = 'object' "
    f"THEN {_POSTINGS_FIELD} ELSE json_build_object('', {_POSTINGS_FIELD}) END) AS p"
)

# The schema, declared once: the DDL is made from it, and `schema_problem` compares the server's catalog
# with it. Column definitions read as the catalog query below prints them.
_TABLES = {
    "meta": {"key": "text not null", "value": "text not null"},
    "entries": {"seq": "bigint not null", "body": "text not null", "hash": "text not null"},
    "progress": {
        "id": "bigint not null generated always as identity",
        "session": "text not null",
        "body": "text not null",
    },
}
_PRIMARY_KEYS = {"meta": "key", "entries": "seq", "progress": "id"}
_INDEXES = {
    "entries_by_kind": ("entries", _KIND),
    "entries_by_session": ("entries", _SESSION),
    "progress_by_session": ("progress", "session, id"),
}
_FUNCTIONS = {
    "welfare_ledger_refuse": """
BEGIN
    RAISE EXCEPTION 'welfare-offsets ledger: % on table % refused: its tables are append-only', TG_OP, TG_TABLE_NAME;
END
""",
    "welfare_ledger_chain": f"""
DECLARE
    last_seq bigint;
    last_hash text;
BEGIN
    EXECUTE format('SELECT seq, hash FROM %I.%I ORDER BY seq DESC LIMIT 1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO last_seq, last_hash;
    IF NEW.seq IS DISTINCT FROM coalesce(last_seq, 0) + 1
        OR (NEW.body::json ->> 'seq') IS DISTINCT FROM NEW.seq::text
        OR (NEW.body::json ->> 'prev_hash') IS DISTINCT FROM coalesce(last_hash, '{GENESIS_HASH}')
        OR NEW.hash IS DISTINCT FROM encode(sha256(convert_to(NEW.body, 'UTF8')), 'hex') THEN
        RAISE EXCEPTION 'welfare-offsets ledger: entry % refused: it does not extend the chain (its seq, '
            'prev_hash or hash is not the next one)', NEW.seq;
    END IF;
    RETURN NEW;
END
""",
}
_REFUSE_CHANGES = (
    "BEFORE UPDATE OR DELETE OR TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION welfare_ledger_refuse()"
)
_TRIGGERS = {
    "entries_append_only": _REFUSE_CHANGES.format("entries"),
    "entries_chain": "BEFORE INSERT ON entries FOR EACH ROW EXECUTE FUNCTION welfare_ledger_chain()",
    "meta_append_only": _REFUSE_CHANGES.format("meta"),
    "progress_append_only": _REFUSE_CHANGES.format("progress"),
}
_DDL = [
    *(
        f"CREATE TABLE {table} ({', '.join(f'{name} {kind}' for name, kind in columns.items())}, "
        f"PRIMARY KEY ({_PRIMARY_KEYS[table]}))"
        for table, columns in _TABLES.items()
    ),
    *(f"CREATE INDEX {name} ON {table} ({expression})" for name, (table, expression) in _INDEXES.items()),
    *(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $source${source}$source$"
        for name, source in _FUNCTIONS.items()
    ),
    *(f"CREATE TRIGGER {name} {definition}" for name, definition in _TRIGGERS.items()),
    "INSERT INTO meta VALUES " + ", ".join(f"('{key}', '{value}')" for key, value in META.items()),
]
_EXPECTED = {
    **{("table", table): "row security off" for table in _TABLES},
    **{("column", f"{table}.{name}"): kind for table, columns in _TABLES.items() for name, kind in columns.items()},
    **{("constraint", f"{table}_pkey"): f"PRIMARY KEY ({column})" for table, column in _PRIMARY_KEYS.items()},
    **{("index", f"{table}_pkey"): f"unique on {table}" for table in _TABLES},
    **{("index", name): f"on {table}" for name, (table, _) in _INDEXES.items()},
    **{("function", name): f"plpgsql: {source}" for name, source in _FUNCTIONS.items()},
    **{("trigger", name): definition for name, definition in _TRIGGERS.items()},
}
# What the catalog says about our tables, worded as _EXPECTED words it: anything that could change what
# the ledger reads or refuses (columns, keys, row security, rules, policies, triggers and the source
# of the functions they run).
_CATALOG = """
WITH ours AS (SELECT to_regclass(name) AS oid FROM unnest(ARRAY['meta', 'entries', 'progress']) AS name),
triggers AS (
    SELECT tg.*, c.relname, p.proname FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
        JOIN pg_proc p ON p.oid = tg.tgfoid
    WHERE tg.tgrelid IN (SELECT oid FROM ours) AND NOT tg.tgisinternal
),
functions AS (  -- those the triggers run, and those of our functions' names beside the tables
    SELECT p.*, l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
    WHERE p.oid IN (SELECT tgfoid FROM triggers) OR (p.proname IN ('welfare_ledger_refuse', 'welfare_ledger_chain')
        AND p.pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass('entries')))
)
SELECT 'table', relname, CASE WHEN relrowsecurity OR relforcerowsecurity THEN 'row security on' ELSE 'row security off' END
    FROM pg_class WHERE oid IN (SELECT oid FROM ours)
UNION ALL
SELECT 'column', c.relname || '.' || a.attname, concat_ws(' ', format_type(a.atttypid, a.atttypmod),
        CASE WHEN a.attnotnull THEN 'not null' END,
        CASE a.attidentity WHEN 'a' THEN 'generated always as identity' WHEN 'd' THEN 'generated by default as identity' END,
        CASE WHEN a.attgenerated <> '' THEN 'generated' END, CASE WHEN a.atthasdef THEN 'with a default' END,
        CASE WHEN a.attcollation NOT IN (0, 100) THEN 'collated' END)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    WHERE a.attrelid IN (SELECT oid FROM ours) AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint
    WHERE conrelid IN (SELECT oid FROM ours) AND contype <> 'n'
UNION ALL
SELECT 'index', i.relname, concat_ws(' ', CASE WHEN x.indisunique THEN 'unique' END, 'on', t.relname)
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
    WHERE x.indrelid IN (SELECT oid FROM ours)
UNION ALL
SELECT 'rule', rulename, pg_get_ruledef(oid) FROM pg_rewrite WHERE ev_class IN (SELECT oid FROM ours)
UNION ALL
SELECT 'policy', polname, pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polrelid IN (SELECT oid FROM ours)
UNION ALL
SELECT 'trigger', tgname, concat_ws(' ',
        CASE WHEN tgtype & 2 > 0 THEN 'BEFORE' WHEN tgtype & 64 > 0 THEN 'INSTEAD OF' ELSE 'AFTER' END,
        concat_ws(' OR ', CASE WHEN tgtype & 4 > 0 THEN 'INSERT' END, CASE WHEN tgtype & 16 > 0 THEN 'UPDATE' END,
            CASE WHEN tgtype & 8 > 0 THEN 'DELETE' END, CASE WHEN tgtype & 32 > 0 THEN 'TRUNCATE' END),
        'ON', relname, 'FOR EACH', CASE WHEN tgtype & 1 > 0 THEN 'ROW' ELSE 'STATEMENT' END,
        CASE WHEN tgqual IS NOT NULL THEN 'WHEN (...)' END, CASE WHEN tgattr <> '' THEN 'OF some columns' END,
        'EXECUTE FUNCTION', proname || '()', CASE tgenabled WHEN 'O' THEN NULL WHEN 'D' THEN '(disabled)'
            ELSE '(enabled ' || tgenabled::text || ')' END)
    FROM triggers
UNION ALL
SELECT 'function', proname, concat_ws(' ', lanname, CASE WHEN prosecdef THEN 'security definer' END,
        array_to_string(proconfig, ' ')) || ': ' || prosrc
    FROM functions
"""
# Every catalog row _CATALOG reads and the meta rows, by oid and xmin, folded into one md5. A row's xmin is
# the transaction that wrote it: any edit of a catalog row writes a new version with a new xmin, an added
# row adds an element and a dropped one removes it, so an unchanged fingerprint means an unchanged schema.
# Writes compare it with the one taken when the full check last passed, and rerun that check only when it
# differs: about a third of the full check's cost (BENCHMARKS.md).
_FINGERPRINT = """
WITH ours AS (SELECT ARRAY(SELECT to_regclass(name)::oid FROM unnest(ARRAY['meta', 'entries', 'progress']) AS name) AS oids),
functions AS (  -- two index lookups, not one scan of pg_proc
    SELECT oid, prolang, xmin FROM pg_proc
        WHERE oid = ANY(ARRAY(SELECT tgfoid FROM pg_trigger WHERE tgrelid = ANY((SELECT oids FROM ours)::oid[])))
    UNION
    SELECT oid, prolang, xmin FROM pg_proc WHERE proname IN ('welfare_ledger_refuse', 'welfare_ledger_chain')
        AND pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass('entries'))
)
SELECT md5(string_agg(version, ',' ORDER BY version)) FROM (
    SELECT 'class ' || oid || ' ' || xmin AS version FROM pg_class WHERE oid = ANY(ARRAY(
        SELECT unnest(oids) FROM ours UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid = ANY((SELECT oids FROM ours)::oid[])))
    UNION ALL SELECT 'attribute ' || attrelid || '.' || attnum || ' ' || xmin FROM pg_attribute
        WHERE attrelid = ANY((SELECT oids FROM ours)::oid[]) AND attnum > 0
    UNION ALL SELECT 'constraint ' || oid || ' ' || xmin FROM pg_constraint WHERE conrelid = ANY((SELECT oids FROM ours)::oid[])
    UNION ALL SELECT 'index ' || indexrelid || ' ' || xmin FROM pg_index WHERE indrelid = ANY((SELECT oids FROM ours)::oid[])
    UNION ALL SELECT 'rule ' || oid || ' ' || xmin FROM pg_rewrite WHERE ev_class = ANY((SELECT oids FROM ours)::oid[])
    UNION ALL SELECT 'policy ' || oid || ' ' || xmin FROM pg_policy WHERE polrelid = ANY((SELECT oids FROM ours)::oid[])
    UNION ALL SELECT 'trigger ' || oid || ' ' || xmin FROM pg_trigger WHERE tgrelid = ANY((SELECT oids FROM ours)::oid[])
    UNION ALL SELECT 'function ' || oid || ' ' || xmin FROM functions
    UNION ALL SELECT 'language ' || oid || ' ' || xmin FROM pg_language WHERE oid IN (SELECT prolang FROM functions)
    UNION ALL SELECT 'meta ' || xmin FROM meta
) AS versions
"""
_QUERIES = Queries(
    head="SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1",
    entry="SELECT seq, body, hash FROM entries WHERE seq = %(seq)s",
    # the server plans each with the filters' values, so a filter left as None costs nothing
    select=f"SELECT seq, body, hash FROM entries WHERE (%(kind)s::text IS NULL OR {_KIND} = %(kind)s)"
    f" AND (%(session)s::text IS NULL OR {_SESSION} = %(session)s)"
    f" AND (%(since)s::text IS NULL OR {_TIME} >= %(since)s) AND (%(until)s::text IS NULL OR {_TIME} < %(until)s)"
    " AND (%(corrects)s::bigint IS NULL OR (((body::json) -> 'payload') ->> 'corrects') = %(corrects)s::bigint::text)"
    " ORDER BY seq",
    postings=f"SELECT seq, p.key, p.value FROM entries, {_POSTINGS}",
    postings_of=f"SELECT seq, p.value FROM entries, {_POSTINGS} WHERE p.key = %(account)s",
    insert="INSERT INTO entries (seq, body, hash) VALUES (%(seq)s, %(body)s, %(hash)s)",
    chain="SELECT convert_to(body, 'UTF8'), hash FROM entries ORDER BY seq",
    # the first `rows` rows, those a chain check walked: rows appended since sort after them
    seq_range="SELECT MIN(seq), MAX(seq) FROM (SELECT seq FROM entries ORDER BY seq LIMIT %(rows)s) AS walked",
    misnumbered="SELECT seq FROM entries WHERE ((body::json) ->> 'seq') IS DISTINCT FROM seq::text ORDER BY seq LIMIT 1",
)
_CHAIN_BATCH = 10_000  # rows fetched per round trip while verifying


class _Lost(Exception):
    """The connection broke: the server stopped or restarted, or the network failed."""


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise LedgerError(
            f"a postgresql:// ledger needs psycopg (version 3), which is not installed: {INSTALL}"
        ) from None
    return psycopg


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PostgresStore(Store):
    def __init__(self, pg: Any, url: str, connection: Any, schema: str):
        super().__init__(self._run, _QUERIES)
        self._pg, self._url, self._conn, self._schema = pg, url, connection, schema
        self.location = redact(url)
        self._append_key = self._key("append")
        self._held_keys: dict[
            int, str
        ] = {}  # session locks this process holds (key: session), re-taken after a reconnect
        self._in_transaction = False
        self._checked_fingerprint: str | None = None  # the catalog's, when the full check last passed

    @classmethod
    def open(cls, url: str, *, create: bool) -> PostgresStore:
        """Open the ledger in the database at `url`, creating its tables if it has none and `create`."""
        pg = _psycopg()
        connection, schema = _connect(pg, url, until=time.monotonic())
        store = cls(pg, url, connection, schema)
        try:
            store._check_or_create(create)
        except BaseException:
            store.close()
            raise
        return store

    # ---- running statements ------------------------------------------------------------------------

    def _run(self, sql: str, params: Mapping[str, Any]) -> list[tuple]:
        """Rows of one statement. Outside a transaction, a lost connection is re-established and the
        statement run again; inside one, the transaction is over, and `transaction` decides what next."""
        try:
            return self._execute(sql, params)
        except _Lost:
            if self._in_transaction:
                raise
        self._reconnect()
        try:
            return self._execute(sql, params)
        except _Lost as lost:
            raise LedgerError(f"lost the connection to the ledger server {self.location} again ({lost})") from None

    def _execute(self, sql: str, params: Mapping[str, Any]) -> list[tuple]:
        try:
            cursor = self._conn.execute(sql, params or None)  # None: a '%' in the SQL is not a placeholder
            return cursor.fetchall() if cursor.description else []
        except self._pg.Error as error:
            if self._conn.broken or self._conn.closed:
                raise _Lost(_first_line(error)) from None
            raise self._error(error) from None

    def _error(self, error: Exception) -> LedgerError:
        errors = self._pg.errors
        if isinstance(error, errors.InsufficientPrivilege):
            hint = (
                "this role may not do that: writers need INSERT and SELECT on the ledger's tables, auditors "
                "SELECT, and only the database's owner creates them (docs/ledger.md)"
            )
        elif isinstance(error, errors.LockNotAvailable):
            hint = f"other writers held the ledger for over {LOCK_TIMEOUT_S} s; nothing was written: try again"
        else:
            hint = "the step that failed wrote nothing; check the server's log"
        return LedgerError(f"the ledger server {self.location} refused: {_first_line(error)}; {hint}")

    def _key(self, *parts: str) -> int:
        """An advisory lock key of this ledger (the schema is part of it: one database may hold several)."""
        digest = hashlib.sha256("\0".join(("welfare-offsets", self._schema, *parts)).encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _reconnect(self) -> None:
        """Connect again (for up to RECONNECT_TIMEOUT_S) and re-take the session locks this process holds."""
        deadline = time.monotonic() + RECONNECT_TIMEOUT_S
        while True:
            self._conn.close()
            try:
                self._conn, _ = _connect(self._pg, self._url, until=deadline)
            except LedgerError as error:
                raise LedgerError(f"lost the connection to the ledger server and {error}") from None
            try:
                lost_sessions = self._sessions_taken_over()
            except _Lost as lost:
                if time.monotonic() > deadline:
                    raise LedgerError(
                        f"the connection to the ledger server {self.location} keeps breaking ({lost})"
                    ) from None
                continue
            if lost_sessions:
                for session in lost_sessions:
                    del self._held_keys[self._key("session", session)]
                raise LedgerError(
                    f"while this process was cut off from the ledger server {self.location}, another process took "
                    f"over its session(s) {', '.join(map(repr, lost_sessions))}: `welfare ledger repair` settles a "
                    "session whose process it cannot see, from its last progress note. Stop this run: `welfare ledger "
                    "show --session ID` shows what was settled; the hours it spent after that note are not in the "
                    "ledger, and an approver charges them by correcting the settle entry with explicit postings "
                    "(Ledger.correct, docs/ledger.md)"
                )
            return

    def _sessions_taken_over(self) -> list[str]:
        """Re-take this process's session locks on a new connection; the sessions whose lock another process
        took while this one was cut off (one that `repair` settled and let go is found at its settlement)."""
        relock = "SELECT pg_try_advisory_lock(%(key)s)"
        return [session for key, session in self._held_keys.items() if not self._execute(relock, {"key": key})[0][0]]

    @contextmanager
    def _begun(self, lock_key: int) -> Iterator[None]:
        """A transaction holding the advisory lock `lock_key` until it ends; rolled back on any error."""
        self._in_transaction = True
        try:
            self._run("BEGIN", {})
            self._run("SELECT pg_advisory_xact_lock(%(key)s)", {"key": lock_key})
            yield
            self._run("COMMIT", {})
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except self._pg.Error:
                pass  # the connection is gone: the server rolled the transaction back
            raise
        finally:
            self._in_transaction = False

    # ---- the Store interface ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Appends under the append lock; see the module docstring for what a lost connection does."""
        tx: Transaction | None = None
        committing = False
        try:
            with self._begun(self._append_key):
                self._require_schema()
                tx = Transaction(self._run, _QUERIES)
                yield tx
                committing = True
        except _Lost as lost:
            self._recover(tx.appended_up_to if committing and tx else None, lost)

    def _recover(self, committed_if_found: Head | None, lost: _Lost) -> None:
        """After losing the connection in a transaction: return if its commit landed, else raise
        WriteInterrupted (nothing was written), or LedgerError if that cannot be known."""
        nothing = f"the connection to the ledger server {self.location} was lost ({lost}) before the write committed"
        deadline = time.monotonic() + RECONNECT_TIMEOUT_S
        while True:
            try:
                self._reconnect()
            except LedgerError as error:
                if committed_if_found is None:
                    raise LedgerError(f"{error}; nothing was written (the write had not committed)") from None
                raise LedgerError(
                    f"{error} while a write was committing, so it may or may not have landed: look for entry "
                    f"{committed_if_found.seq} (welfare ledger show) before running it again"
                ) from None
            if committed_if_found is None:
                raise WriteInterrupted(nothing)
            try:
                with self._begun(self._append_key):  # the lost transaction held it: now it has ended
                    found = self._run(_QUERIES.entry, {"seq": committed_if_found.seq})
            except _Lost:
                if time.monotonic() < deadline:
                    continue
                raise LedgerError(
                    f"lost the connection to the ledger server {self.location} again and again while a write was "
                    f"committing: look for entry {committed_if_found.seq} (welfare ledger show) before running it again"
                ) from None
            if found and found[0][2] == committed_if_found.hash:  # (seq, body, hash)
                return  # the commit landed before the connection was lost
            raise WriteInterrupted(nothing)

    def _require_schema(self) -> None:
        """Refuse to write where the tables, triggers or meta rows are not ours. The entries table is locked
        first (as the INSERT would lock it), so no schema change can land between this check and the
        commit; the full check reruns only when the catalog's fingerprint changed since it last passed."""
        self._run("LOCK TABLE entries IN ROW EXCLUSIVE MODE", {})
        fingerprint = self._run(_FINGERPRINT, {})[0][0]  # taken first: a change after it shows next time
        if fingerprint == self._checked_fingerprint:
            return
        problem = self.schema_problem()
        if problem is not None:
            raise LedgerError(
                f"ledger {self.location} cannot be written: {problem}. Nothing was written; check it "
                "with `welfare ledger verify`, and have the database's owner restore it"
            )
        self._checked_fingerprint = fingerprint

    def schema_problem(self) -> str | None:
        found = {(kind, name): detail for kind, name, detail in self._run(_CATALOG, {})}
        return schema_difference(_EXPECTED, found, META, dict(self._run("SELECT key, value FROM meta", {})))

    def chain_rows(self) -> Iterator[tuple[bytes, str]]:
        """Streamed through a server-side cursor, in one statement's snapshot (so in one pass, while
        writers go on appending)."""
        if not self._in_transaction:
            self._run("SELECT 1", {})  # a connection lost since it was last used is re-established first
        try:
            with self._conn.transaction(), self._conn.cursor(name="welfare_ledger_chain") as cursor:
                cursor.itersize = _CHAIN_BATCH
                cursor.execute(_QUERIES.chain)
                yield from cursor
        except self._pg.Error as error:
            if self._conn.broken or self._conn.closed:
                raise LedgerError(
                    f"lost the connection to the ledger server {self.location} while reading the ledger "
                    f"({_first_line(error)}); nothing was written: run the command again"
                ) from None
            raise self._error(error) from None

    def sessions(self) -> ServerSessions:
        return ServerSessions(self)

    def copy_to(self, staging: Path) -> None:
        SQLiteStore.fill(staging, self.chain_rows())

    def remove_stale_staging(self) -> list[Path]:
        return []  # nothing is staged on a server: its tables are created in one transaction

    def close(self) -> None:
        self._conn.close()

    # ---- creating --------------------------------------------------------------------------------

    def _check_or_create(self, create: bool) -> None:
        how_to_fix = "point --ledger at a ledger's database, or at an empty database of its own to create one"
        if self._run("SELECT to_regclass('meta')", {})[0][0] is None:
            if not create:
                raise LedgerError(
                    f"no ledger in {self.location}: pass --ledger (or set WELFARE_LEDGER) to a ledger's database; "
                    "`welfare ledger fund`, run by the database's owner, creates one (docs/ledger.md)"
                )
            self._create(how_to_fix)
        try:
            meta = dict(self._run("SELECT key, value FROM meta", {}))
        except LedgerError as error:
            raise NotALedger(f"{self.location} is not a welfare-offsets ledger ({error}); {how_to_fix}") from None
        check_meta(meta, f"the database at {self.location}", how_to_fix)

    def _create(self, how_to_fix: str) -> None:
        """Tables, triggers and meta rows in one transaction. Concurrent first users queue on an advisory
        lock, and those after the first find the ledger made."""
        with self._begun(self._key("create")):
            # read pg_class itself: a name looked up before the lock may be cached as missing
            sql = "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relname = ANY(%(names)s)"
            present = {name for (name,) in self._run(sql, {"names": list(_TABLES)})}
            if "meta" in present:
                return
            if present:
                raise NotALedger(
                    f"{self.location} has a table named entries or progress but no ledger meta table, so it is not "
                    f"a welfare-offsets ledger; {how_to_fix}"
                )
            for statement in _DDL:
                self._run(statement, {})

    # ---- liveness and progress, for ServerSessions ---------------------------------------------------

    def take_session_lock(self, session: str, *, hold: bool) -> bool:
        """Take the session's advisory lock on this connection if no other connection holds it; `hold`:
        keep it across reconnects (this process runs the session)."""
        key = self._key("session", session)
        if key in self._held_keys:  # a connection may take its own lock again: not for a second session
            return False
        taken = self._run("SELECT pg_try_advisory_lock(%(key)s)", {"key": key})[0][0]
        if taken and hold:
            self._held_keys[key] = session
        return taken

    def release_session_lock(self, session: str) -> None:
        key = self._key("session", session)
        self._held_keys.pop(key, None)
        try:
            self._execute("SELECT pg_advisory_unlock(%(key)s)", {"key": key})
        except _Lost:
            pass  # the connection is gone, and its locks with it

    def session_lock_is_free(self, session: str) -> bool:
        """Takes a shared lock and gives it back, so two auditors asking at once do not disturb each other."""
        key = {"key": self._key("session", session)}
        sql = "SELECT CASE WHEN pg_try_advisory_lock_shared(%(key)s) THEN pg_advisory_unlock_shared(%(key)s) ELSE false END"
        return self._run(sql, key)[0][0]

    def recently_started(self) -> bool:
        sql = "SELECT now() - pg_postmaster_start_time() < make_interval(secs => %(grace)s)"
        return self._run(sql, {"grace": RESTART_GRACE_S})[0][0]

    def insert_progress(self, session: str, body: str) -> None:
        self._run(
            "INSERT INTO progress (session, body) VALUES (%(session)s, %(body)s)", {"session": session, "body": body}
        )

    def last_progress(self, session: str) -> str | None:
        """The session's last note, cut after MAX_PROGRESS_BYTES + 1 characters: a huge one is not read whole."""
        sql = "SELECT left(body, %(limit)s) FROM progress WHERE session = %(session)s ORDER BY id DESC LIMIT 1"
        rows = self._run(sql, {"session": session, "limit": MAX_PROGRESS_BYTES + 1})
        return rows[0][0] if rows else None


# TCP keepalives: an idle connection (a session between progress notes) is not dropped by a firewall or
# NAT that forgets quiet flows, which would free its session lock while its process lives; and a dead
# server is noticed within about a minute. A URL that sets any of these keeps its own.
_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}


def _connection_defaults(pg: Any, url: str) -> dict[str, str]:
    try:
        given = pg.conninfo.conninfo_to_dict(url)
    except pg.ProgrammingError:
        given = {}  # connecting says what is wrong with it
    defaults = {"connect_timeout": "10", "application_name": "welfare-offsets ledger", **_KEEPALIVES}
    return {name: value for name, value in defaults.items() if name not in given}


def _connect(pg: Any, url: str, *, until: float) -> tuple[Any, str]:
    """A connection with the ledger's session settings and its schema; tried again until `until`."""
    location, pause = redact(url), 0.1
    while True:
        try:
            connection = pg.connect(url, autocommit=True, **_connection_defaults(pg, url))
            break
        except pg.ProgrammingError as error:
            raise LedgerError(
                f"{location} is not a usable PostgreSQL URL ({_first_line(error)}); see docs/ledger.md"
            ) from None
        except pg.OperationalError as error:
            if time.monotonic() + pause > until:
                raise LedgerError(
                    f"cannot connect to the ledger server {location} ({_first_line(error)}); check that it runs and "
                    "that this machine may connect (host, port, role; a password in ~/.pgpass or PGPASSWORD)"
                ) from None
            time.sleep(pause)
            pause = min(2 * pause, 2.0)
    try:
        settings = "SELECT set_config('lock_timeout', %s, false), set_config('idle_in_transaction_session_timeout', %s, false), current_schema()"
        schema = connection.execute(settings, (f"{LOCK_TIMEOUT_S}s", f"{IDLE_IN_TRANSACTION_S}s")).fetchone()[2]
    except pg.Error as error:
        connection.close()
        raise LedgerError(f"cannot use the ledger server {location} ({_first_line(error)}); check the server") from None
    if schema is None:
        connection.close()
        raise LedgerError(
            f"the search_path of {location} names no schema that exists; create the schema or fix the URL"
        )
    return connection, schema


class _ServerLock(SessionLock):
    def __init__(self, store: PostgresStore, session: str):
        self._store, self._session = store, session

    def release(self, *, delete: bool = False) -> None:
        """Give the lock back (`delete` has nothing more to remove: the server keeps no lock file)."""
        self._store.release_session_lock(self._session)


class ServerSessions(Sessions):
    """Sessions' liveness as advisory locks on the server; progress as rows of the append-only progress table."""

    def __init__(self, store: PostgresStore):
        self._store = store

    def hold(self, session: str) -> SessionLock:
        if not self._store.take_session_lock(session, hold=True):
            raise LedgerError(
                f"session id {session!r} is already in use (a live process holds it in {self._store.location}); "
                "pick another session id"
            )
        return _ServerLock(self._store, session)

    def claim_if_dead(self, session: str) -> SessionLock | None:
        if self._store.recently_started() or not self._store.take_session_lock(session, hold=False):
            return None
        return _ServerLock(self._store, session)

    def is_alive(self, session: str) -> bool:
        return self._store.recently_started() or not self._store.session_lock_is_free(session)

    def write_progress(self, session: str, spent_hours: float, energy_kwh: float | None) -> None:
        self._store.insert_progress(
            session, json.dumps(progress_note(session, spent_hours, energy_kwh), sort_keys=True)
        )

    def read_progress(self, session: str) -> Progress | None:
        note = self._store.last_progress(session)
        return None if note is None else parse_progress(note.encode("utf-8"), session, what="progress note")

    def remove(self, session: str) -> None:
        """Nothing to remove: progress notes are kept, as history, in a table nobody may delete from."""

    def remove_leftovers(self, settled: Collection[str], reserved: Collection[str]) -> list[Path]:
        return []  # locks end with their connections, and notes are kept

"""What every ledger store shares, whichever database holds the rows (`store` for SQLite, `postgres`).

A store keeps the chain as rows (seq, body, hash), `body` being the hashed canonical JSON, and answers
the few queries the ledger needs. Only the SQL differs between databases (`Queries`); the code that runs
it, reads entries back, sums postings, appends and copies rows is here, once, so the stores cannot drift
apart in what they write, accept or report.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from welfare_offsets.ledger.audit import check_form
from welfare_offsets.ledger.chain import EMPTY_HEAD, GENESIS_HASH, Entry, Head, seal, utc_now
from welfare_offsets.ledger.errors import BrokenLedger, LedgerError, NotALedger, SchemaTooNew

if TYPE_CHECKING:
    from welfare_offsets.ledger.sessions import Sessions

SCHEMA_VERSION = 1
MAX_SEQ = 2**63 - 1  # the largest seq either store can hold (SQLite's INTEGER, PostgreSQL's bigint)
FORMAT_NAME = "welfare-offsets-ledger"
META = {"format": FORMAT_NAME, "schema_version": str(SCHEMA_VERSION), "genesis": GENESIS_HASH}

# Runs one statement with named parameters and returns its rows.
Run = Callable[[str, Mapping[str, Any]], Iterable[tuple]]


class WriteInterrupted(Exception):
    """The connection to the database was lost before a transaction committed, and after reconnecting
    the store found that nothing of it was written: the write may be run again from a fresh read."""


@dataclass(frozen=True)
class Queries:
    """One database's SQL for what every store answers, with named parameters in its own style."""

    head: str  # -> (seq, hash) of the last entry
    entry: str  # seq -> (seq, body, hash)
    select: str  # kind, session, since, until, corrects (each None: any) -> (seq, body, hash) in seq order
    postings: str  # -> (seq, account, amount) of every posting of every entry
    postings_of: str  # account -> (seq, amount) of each posting to it
    insert: str  # seq, body, hash
    chain: str  # -> (body as bytes, hash) in seq order
    seq_range: str  # rows -> (lowest, highest) seq of the rows a chain check walked
    misnumbered: str  # -> (seq,) of the first row whose seq column disagrees with its body


def entry_from_row(row: tuple[int, str, str]) -> Entry:
    """An entry read back, refused (BrokenLedger) unless it has the form verify accepts for its kind, so
    that nothing built on entries (balances, sessions, reports, corrections) meets a missing field or a
    wrong type: a command on a broken ledger says where it is broken instead of failing somewhere inside."""
    seq, body, hash_ = row
    try:
        return _checked_entry(body, hash_)
    except LedgerError as error:
        raise BrokenLedger(seq, str(error)) from None


def _checked_entry(body: str, hash_: str) -> Entry:
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        raise LedgerError("its stored body is not JSON") from None
    if (
        not isinstance(fields, dict)
        or fields.keys() != {"seq", "time", "kind", "payload", "prev_hash"}
        or isinstance(fields["seq"], bool)
        or not isinstance(fields["seq"], int)
        or not isinstance(fields["time"], str)
        or not isinstance(fields["prev_hash"], str)
    ):
        raise LedgerError("its stored body is not an object of seq, time, kind, payload and prev_hash")
    check_form(fields["kind"], fields["payload"], body)
    return Entry(fields["seq"], fields["time"], fields["kind"], fields["payload"], fields["prev_hash"], hash_)


def _amount(seq: int, account: object, amount: object) -> int:
    """A posting as read by SQL, to be summed: to a named account, in whole micro-hours (postings that are
    not an object come as rows whose account is not a name), else the ledger is broken at entry `seq`."""
    if not isinstance(account, str) or not account or isinstance(amount, bool) or not isinstance(amount, int):
        raise BrokenLedger(seq, "its postings are not an object of account names and whole micro-hours")
    return amount


class Reader:
    """Queries shared by a store and by its transactions (which see their own uncommitted entries)."""

    def __init__(self, run: Run, queries: Queries):
        self._run, self._queries = run, queries

    def _first(self, sql: str, params: Mapping[str, Any]) -> tuple | None:
        return next(iter(self._run(sql, params)), None)

    def head(self) -> Head:
        row = self._first(self._queries.head, {})
        return Head(*row) if row else EMPTY_HEAD

    def entry(self, seq: int) -> Entry | None:
        """Entry `seq`, or None if there is none (also where no store could hold one: beyond MAX_SEQ)."""
        if not 1 <= seq <= MAX_SEQ:
            return None
        row = self._first(self._queries.entry, {"seq": seq})
        return entry_from_row(row) if row else None

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
        filters = {"kind": kind, "session": session, "since": since, "until": until, "corrects": corrects}
        return [entry_from_row(row) for row in self._run(self._queries.select, filters)]

    def account_totals(self) -> dict[str, int]:
        """Every account's balance in micro-hours: the sum of all postings to it, summed in Python,
        whose integers never overflow."""
        totals: dict[str, int] = defaultdict(int)
        for seq, name, amount in self._run(self._queries.postings, {}):
            totals[name] += _amount(seq, name, amount)
        return dict(totals)

    def account_total(self, account: str) -> int | None:
        """One account's balance in micro-hours, or None if nothing was ever posted to it."""
        amounts = [
            _amount(seq, account, amount) for seq, amount in self._run(self._queries.postings_of, {"account": account})
        ]
        return sum(amounts) if amounts else None


class Transaction(Reader):
    """Appends under the store's write lock; the head is read once, after the lock was taken."""

    def __init__(self, run: Run, queries: Queries):
        super().__init__(run, queries)
        self._start = self._head = self.head()

    @property
    def appended_up_to(self) -> Head | None:
        """The head this transaction's appends lead to, or None if it appended nothing."""
        return None if self._head == self._start else self._head

    def append(self, kind: str, payload: dict[str, Any]) -> Entry:
        """Append an entry, refused unless verify would accept its form: a caller's mistake (text that is not
        UTF-8 in a result file's name, a wrong type) must never make the ledger unverifiable."""
        seq, time, prev_hash = self._head.seq + 1, utc_now(), self._head.hash
        body, hash_ = seal(seq, time, kind, payload, prev_hash)
        try:
            entry = _checked_entry(body, hash_)
        except LedgerError as error:
            raise LedgerError(
                f"the {kind} entry was not written, as verify would refuse it: {error}; correct that and write it again"
            ) from None
        self._insert(seq, body, hash_)
        return entry

    def extend(self, rows: Iterable[tuple[bytes, str]]) -> None:
        """Append another ledger's stored rows as they are (a copy): the same bodies, the same hashes."""
        for body, hash_ in rows:
            self._insert(self._head.seq + 1, body.decode("utf-8"), hash_)

    def _insert(self, seq: int, body: str, hash_: str) -> None:
        self._run(self._queries.insert, {"seq": seq, "body": body, "hash": hash_})
        self._head = Head(seq, hash_)


class Store(Reader, ABC):
    """A ledger's rows in one database, and how its sessions show that they are alive."""

    location: Path | str  # the SQLite file, or the server's URL without its password

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """Appends inside commit together or not at all, one writer at a time, each seeing the last head."""

    @abstractmethod
    def schema_problem(self) -> str | None:
        """What differs between the database's schema (and meta rows) and the one this code creates."""

    @abstractmethod
    def sessions(self) -> Sessions:
        """Where this ledger's sessions hold their liveness locks and note their progress."""

    @abstractmethod
    def copy_to(self, staging: Path) -> None:
        """Write one consistent snapshot of the ledger into the new, empty SQLite file `staging`."""

    @abstractmethod
    def remove_stale_staging(self) -> list[Path]:
        """Delete what processes killed while creating this ledger left behind; returns what was removed."""

    @abstractmethod
    def close(self) -> None: ...

    def chain_rows(self) -> Iterator[tuple[bytes, str]]:
        """Stored (body bytes, hash) rows in seq order, for verification."""
        return iter(self._run(self._queries.chain, {}))

    def first_misnumbered_seq(self, rows: int) -> int | None:
        """After a chain check walked `rows` rows whose bodies hold seqs 1..rows in order: the first row
        whose seq column disagrees with its body, if any. Distinct integers from 1 to `rows`, `rows` of
        them, are exactly 1..rows, so the usual answer costs no scan."""
        low, high = next(iter(self._run(self._queries.seq_range, {"rows": rows})))
        if rows == 0 or (low, high) == (1, rows):
            return None
        row = self._first(self._queries.misnumbered, {})
        return row[0] if row else None


def check_meta(meta: Mapping[str, str], where: str, how_to_fix: str) -> None:
    """Refuse what is not a ledger, or a ledger of a newer schema than this code reads."""
    if meta.get("format") != FORMAT_NAME:
        raise NotALedger(f"{where} is not a welfare-offsets ledger; {how_to_fix}")
    version = meta.get("schema_version", "")
    if not version.isdigit():
        raise NotALedger(f"{where} has an unreadable schema version {version!r}; {how_to_fix}")
    if int(version) > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{where} has ledger schema version {version}, newer than the {SCHEMA_VERSION} this "
            "welfare-offsets reads; upgrade welfare-offsets to read or write it"
        )


def schema_difference(
    expected: Mapping[tuple[str, str], str | None],
    found: Mapping[tuple[str, str], str | None],
    expected_meta: Mapping[str, str],
    found_meta: Mapping[str, str],
) -> str | None:
    """The first difference between the schema objects (kind, name) -> definition this code creates and
    those a database holds, then between the meta rows, said for an auditor; None if there is none."""
    for key in sorted(expected.keys() | found.keys()):
        if key not in found:
            return f"its {key[0]} {key[1]} is missing (the database schema was edited)"
        if key not in expected:
            return f"it has an extra {key[0]} {key[1]} (the database schema was edited)"
        if found[key] != expected[key]:
            return (
                f"its {key[0]} {key[1]} is defined as {found[key]!r}, not as this code creates it "
                "(the database schema was edited)"
            )
    if dict(found_meta) != dict(expected_meta):
        return f"its meta table holds {dict(found_meta)!r}, not {dict(expected_meta)!r} (the database was edited)"
    return None

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

from welfare_offsets.ledger.chain import EMPTY_HEAD, GENESIS_HASH, Entry, Head, seal, utc_now
from welfare_offsets.ledger.errors import NotALedger, SchemaTooNew

if TYPE_CHECKING:
    from welfare_offsets.ledger.sessions import Sessions

SCHEMA_VERSION = 1
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
    entry: str  # seq -> (body, hash)
    select: str  # kind, session, since, until, corrects (each None: any) -> (body, hash) in seq order
    postings: str  # -> (account, amount) of every posting of every entry
    postings_of: str  # account -> (amount,) of each posting to it
    insert: str  # seq, body, hash
    chain: str  # -> (body as bytes, hash) in seq order
    seq_range: str  # rows -> (lowest, highest) seq of the rows a chain check walked
    misnumbered: str  # -> (seq,) of the first row whose seq column disagrees with its body


def entry_from_row(row: tuple[str, str]) -> Entry:
    body, hash_ = row
    fields = json.loads(body)
    return Entry(fields["seq"], fields["time"], fields["kind"], fields["payload"], fields["prev_hash"], hash_)


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
        for name, amount in self._run(self._queries.postings, {}):
            totals[name] += amount
        return dict(totals)

    def account_total(self, account: str) -> int | None:
        """One account's balance in micro-hours, or None if nothing was ever posted to it."""
        amounts = [amount for (amount,) in self._run(self._queries.postings_of, {"account": account})]
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
        seq, time, prev_hash = self._head.seq + 1, utc_now(), self._head.hash
        body, hash_ = seal(seq, time, kind, payload, prev_hash)
        self._insert(seq, body, hash_)
        return entry_from_row((body, hash_))

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

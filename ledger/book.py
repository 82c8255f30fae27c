"""The ledger as the other packages use it: accelerator-hour accounts, session reservations,
wellbeing measurements, and the audit reads (balances, entries, head, verify, export, report)."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import secrets
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO, TypeVar

from welfare_offsets.ledger import accounts
from welfare_offsets.ledger.accounts import (
    check_hours,
    check_name,
    reserved_account,
    spent_account,
    to_hours,
    to_microhours,
)
from welfare_offsets.ledger.audit import Audit
from welfare_offsets.ledger.backup import publish, staged_copy
from welfare_offsets.ledger.chain import (
    EMPTY_HEAD,
    Entry,
    Head,
    VerifyResult,
    format_time,
    is_portable_text,
    verify_chain,
)
from welfare_offsets.ledger.errors import InsufficientHours, LedgerError, UnknownAccount, UnknownSession
from welfare_offsets.ledger.export import EXPORT_FORMATS, write_entries
from welfare_offsets.ledger.files import sha256_file
from welfare_offsets.ledger.location import is_server_url, resolve_ledger_path
from welfare_offsets.ledger.meter import check_device, check_processes
from welfare_offsets.ledger.postgres import PostgresStore
from welfare_offsets.ledger.report import MEASURES, Report, build_report
from welfare_offsets.ledger.sessions import SessionLock, UnreadableProgress
from welfare_offsets.ledger.signing import Keyring, SigningKey, SigningTransaction
from welfare_offsets.ledger.storage import Store, Transaction, WriteInterrupted
from welfare_offsets.ledger.store import SQLiteStore

T = TypeVar("T")
# How often a write is run again after a lost connection that is known to have written nothing.
WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class Balance:
    """An account in hours: what it can still reserve, what open sessions hold, what sessions spent."""

    account: str
    available_hours: float
    reserved_hours: float
    spent_hours: float


@dataclass(frozen=True)
class OpenSession:
    session: str
    account: str
    reserved_hours: float
    seq: int


@dataclass(frozen=True)
class RepairOutcome:
    session: str
    settlement: Entry | None  # None: its process is still running, so it was left open
    by_this_repair: bool = True  # False: another process settled it while this repair ran


def new_session_id() -> str:
    """A readable, sortable id: the UTC second, and 48 random bits, so ids made in one second do not collide."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(6)}"


class Ledger:
    """One open ledger (an SQLite file or a PostgreSQL database). Not shared between threads; open one
    per process."""

    def __init__(self, store: Store):
        self._store = store
        self._sessions = store.sessions()
        self._held: dict[str, SessionLock] = {}
        self._batch: Transaction | None = None

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = True) -> Ledger:
        """Open the ledger at `path`, a file or a postgresql:// URL (default: $WELFARE_LEDGER, then the
        user data directory)."""
        location = resolve_ledger_path(path)
        if is_server_url(location):
            return cls(PostgresStore.open(location, create=create))
        return cls(SQLiteStore.open(location, create=create))

    @property
    def path(self) -> Path | str:
        """The ledger's file, or its server's URL without the password."""
        return self._store.location

    def close(self) -> None:
        """Close the ledger. Sessions still open here become abandoned: `repair` settles them."""
        for lock in self._held.values():
            lock.release()
        self._held.clear()
        self._store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[Ledger]:
        """Make every write inside one transaction: one fsync for all, and all or none of them land."""
        if self._batch is not None:
            yield self
            return
        try:
            with self._store.transaction() as tx:
                self._batch = self._signing(tx)
                try:
                    yield self
                finally:
                    self._batch = None
        except WriteInterrupted as lost:
            raise LedgerError(f"{lost}: nothing of the batch was written; run it again") from None

    def _write(self, write: Callable[[Transaction], T]) -> T:
        """Run `write` in the open batch, or in a transaction of its own; run it again, from a fresh read
        of the ledger, when its connection was lost and the store found that nothing was written."""
        if self._batch is not None:
            return write(self._batch)
        for _ in range(WRITE_ATTEMPTS):
            try:
                with self._store.transaction() as tx:
                    return write(self._signing(tx))
            except WriteInterrupted as lost:
                interrupted = lost
        raise LedgerError(f"{interrupted}, {WRITE_ATTEMPTS} times over; check the server, then run it again")

    def _signing(self, tx: Transaction) -> Transaction:
        return tx if self._signer is None else SigningTransaction(tx, self._signer)

    @functools.cached_property
    def _signer(self) -> SigningKey | None:
        """The key of a writer that holds one ($WELFARE_LEDGER_KEY; ledger.signing), loaded at its first write
        only: reading a ledger never needs it."""
        return SigningKey.from_environment()

    def fund(self, account: str, hours: float, *, note: str = "") -> Entry:
        """An account receives hours from outside the ledger (a grant, an allocation)."""
        check_name(account, field="account")
        amount = to_microhours(check_hours(hours, field="hours"))
        payload = {
            "account": account,
            "note": _text(note, field="note"),
            "postings": accounts.fund_postings(account, amount),
        }
        return self._write(lambda tx: tx.append("fund", payload))

    def transfer(self, source: str, destination: str, hours: float, *, note: str = "") -> Entry:
        """Move hours between accounts; refused if the source cannot cover them."""
        check_name(source, field="source account")
        check_name(destination, field="destination account")
        if source == destination:
            raise LedgerError(f"transfer from {source!r} to itself moves nothing; name two different accounts")
        amount = to_microhours(check_hours(hours, field="hours"))
        payload = {
            "from": source,
            "to": destination,
            "note": _text(note, field="note"),
            "postings": accounts.transfer_postings(source, destination, amount),
        }

        def write(tx: Transaction) -> Entry:
            self._require_cover(tx, source, amount)
            return tx.append("transfer", payload)

        return self._write(write)

    def reserve(
        self,
        account: str,
        hours: float,
        *,
        session: str | None = None,
        device: str = "cpu",
        processes: int = 1,
        purpose: str = "",
        resumes: dict[str, Any] | None = None,
        wandb_run: str | None = None,
    ) -> Entry:
        """Admission: set hours aside for a new session; refused if the account cannot cover them.

        This process then holds the session's liveness lock until `settle`, so `repair` elsewhere
        leaves it alone while it runs. Most callers want `ledger.budget.BudgetSession` instead.
        """
        check_name(account, field="account")
        amount = to_microhours(check_hours(hours, field="hours"))
        session = check_name(session or new_session_id(), field="session")
        check_device(device)
        check_processes(processes)
        payload = {
            "account": account,
            "session": session,
            "device": device,
            "processes": processes,
            "purpose": _text(purpose, field="purpose"),
            "resumes": resumes,
            "wandb_run": wandb_run,
            "postings": accounts.reserve_postings(account, session, amount),
        }

        def write(tx: Transaction) -> Entry:
            if tx.select(kind="reserve", session=session):
                raise LedgerError(f"session {session!r} already has a reservation; each session reserves once")
            self._require_cover(tx, account, amount)
            return tx.append("reserve", payload)

        lock = self._sessions.hold(session)
        try:
            entry = self._write(write)
        except BaseException:
            lock.release(delete=True)
            raise
        self._held[session] = lock
        return entry

    def settle(
        self,
        session: str,
        spent_hours: float,
        *,
        energy_kwh: float | None = None,
        wall_seconds: float | None = None,
        basis: str = "metered",
        stopped_by_budget: bool = False,
    ) -> Entry:
        """Settlement: record what a session spent; the rest of its reservation goes back to its account."""
        spent = to_microhours(check_hours(spent_hours, field="spent_hours", allow_zero=True))
        _check_amount("energy_kwh", energy_kwh)
        _check_amount("wall_seconds", wall_seconds)
        entry = self._write(
            lambda tx: self._append_settlement(
                tx,
                self._open_reservation(tx, session),
                spent,
                basis=basis,
                energy_kwh=energy_kwh,
                wall_seconds=wall_seconds,
                stopped_by_budget=stopped_by_budget,
            )
        )
        self._sessions.remove(session)
        lock = self._held.pop(session, None)
        if lock is not None:
            lock.release()
        return entry

    def _append_settlement(
        self,
        tx: Transaction,
        reservation: Entry,
        spent: int,
        *,
        basis: str,
        energy_kwh: float | None = None,
        wall_seconds: float | None = None,
        stopped_by_budget: bool = False,
    ) -> Entry:
        session, account = reservation.payload["session"], reservation.payload["account"]
        reserved = reservation.payload["postings"][reserved_account(session)]
        return tx.append(
            "settle",
            {
                "session": session,
                "account": account,
                "basis": basis,
                "energy_kwh": energy_kwh,
                "wall_seconds": wall_seconds,
                "stopped_by_budget": stopped_by_budget,
                "postings": accounts.settle_postings(account, session, reserved, spent),
            },
        )

    def note_progress(self, session: str, spent_hours: float, energy_kwh: float | None = None) -> None:
        """Note a running session's spend so far (outside the chain) for `repair` to settle from.
        Only the process holding the session writes it; repair never charges more than was reserved."""
        if session not in self._held:
            raise LedgerError(
                f"session {session!r} is not held by this process; note progress from the "
                "process that reserved it (the Ledger whose reserve() started it)"
            )
        check_hours(spent_hours, field="spent_hours", allow_zero=True)
        _check_amount("energy_kwh", energy_kwh)
        self._sessions.write_progress(session, spent_hours, energy_kwh)

    def correct(self, seq: int, reason: str, *, postings: dict[str, float] | None = None) -> Entry:
        """Correct entry `seq` with a new entry that references it; entries themselves never change.

        Without `postings`, a fund, transfer or correction is reversed and a measurement is retracted.
        Reserve and settle entries belong to sessions and need explicit, zero-sum `postings` in hours.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise LedgerError("a correction needs a reason (e.g. --reason 'funded the wrong account')")
        _text(reason, field="reason")
        explicit = None if postings is None else accounts.correction_postings(postings, field="postings")

        def write(tx: Transaction) -> Entry:
            target = tx.entry(seq) if isinstance(seq, int) else None
            if target is None:
                raise LedgerError(f"there is no entry {seq!r} to correct; find its seq with `welfare ledger show`")
            earlier = tx.select(kind="correction", corrects=seq)
            if earlier:
                raise LedgerError(
                    f"entry {seq} was already corrected by entry {earlier[0].seq}; correct that one instead"
                )
            lines = explicit if explicit is not None else _default_correction(target)
            _refuse_overdraw(tx, seq, lines)
            payload = {"corrects": seq, "reason": reason, "postings": lines}
            if "session" in target.payload:
                payload["session"] = target.payload["session"]
            return tx.append("correction", payload)

        return self._write(write)

    def record_measurement(
        self,
        session: str,
        probe: str,
        *,
        wellbeing_before: float | None = None,
        wellbeing_after: float | None = None,
        recovered: float | None = None,
        debt: float | None = None,
        credit: float | None = None,
        results: Sequence[str | os.PathLike] = (),
        wandb_run: str | None = None,
        note: str = "",
    ) -> Entry:
        """A session's wellbeing measurement on one probe, citing its result files by sha256 and its W&B run.

        `debt` (created by dysphoric exposure) and `credit` (earned by an intervention) are >= 0 in
        the probe's units; the session's GPU-hours price them in `report`.
        """
        check_name(probe, field="probe")
        given = zip(MEASURES, (wellbeing_before, wellbeing_after, recovered, debt, credit), strict=True)
        measures = {name: _measure(name, value) for name, value in given if value is not None}
        if not measures:
            raise LedgerError(f"a measurement needs at least one of {', '.join(MEASURES)}")
        cited = [_cite(Path(path)) for path in results]
        payload = {
            "session": session,
            "probe": probe,
            **measures,
            "results": cited,
            "wandb_run": wandb_run,
            "note": _text(note, field="note"),
        }

        def write(tx: Transaction) -> Entry:
            if not tx.select(kind="reserve", session=session):
                raise UnknownSession(
                    f"session {session!r} has no reservation in {self.path}; "
                    "measure inside a BudgetSession and pass its id"
                )
            return tx.append("measurement", payload)

        return self._write(write)

    def repair(self) -> list[RepairOutcome]:
        """Settle every session whose process died without settling; leave running ones open; then
        delete session records no live process needs. Safe to run in several processes at once.

        A dead session is charged its last recorded progress (work after it went unmetered, and the
        settlement says so), or its whole reservation if it recorded none or its progress file is not
        believable (unreadable, or more than it reserved): repair never charges more than a reservation.
        A broken ledger is refused: nothing is settled on top of entries that cannot be trusted.
        """
        result = self.verify()
        if not result.ok:
            raise LedgerError(
                f"ledger {self.path} is broken at seq {result.first_bad_seq} ({result.reason}); repair settled "
                "nothing. Restore the ledger from a backup (welfare ledger backup DEST makes one) and repair that"
            )
        outcomes = [
            self._repair_session(open_session.session)
            for open_session in self.open_sessions()
            if open_session.session not in self._held
        ]
        self._sessions.remove_leftovers(
            settled={entry.payload["session"] for entry in self._store.select(kind="settle")},
            reserved={entry.payload["session"] for entry in self._store.select(kind="reserve")},
        )
        self._store.remove_stale_staging()
        return outcomes

    def _repair_session(self, session: str) -> RepairOutcome:
        lock = self._sessions.claim_if_dead(session)
        if lock is None:  # running, or another repair is settling it right now
            settled = self._store.select(kind="settle", session=session)
            return RepairOutcome(session, settled[0] if settled else None, by_this_repair=False)
        try:
            return self._settle_abandoned(session)
        finally:
            lock.release()

    def _settle_abandoned(self, session: str) -> RepairOutcome:
        """Settle a dead session whose lock the caller holds, unless another process settled it after
        this repair listed it: that is checked under the write lock, so each session settles once."""

        def write(tx: Transaction) -> RepairOutcome:
            settled = tx.select(kind="settle", session=session)
            if settled:
                return RepairOutcome(session, settled[0], by_this_repair=False)
            reservation = tx.select(kind="reserve", session=session)[0]
            reserved = reservation.payload["postings"][reserved_account(session)]
            spent, energy, basis = self._abandoned_charge(session, reserved)
            return RepairOutcome(
                session, self._append_settlement(tx, reservation, spent, basis=basis, energy_kwh=energy)
            )

        outcome = self._write(write)
        self._sessions.remove(session)
        return outcome

    def _abandoned_charge(self, session: str, reserved: int) -> tuple[int, float | None, str]:
        """What a dead session is charged, in micro-hours, with its energy and the basis stated."""
        whole = "whole reservation charged"
        try:
            progress = self._sessions.read_progress(session)
        except UnreadableProgress as why:
            return reserved, None, f"repair: {why}; {whole}"
        if progress is None:
            return reserved, None, f"repair: no progress recorded, {whole}"
        if progress.spent_hours > to_hours(reserved):
            return (
                reserved,
                None,
                (
                    f"repair: its progress file claims {progress.spent_hours:g} h, more than the "
                    f"{to_hours(reserved):g} h reserved, so it is not believed; {whole}"
                ),
            )
        return (
            to_microhours(progress.spent_hours),
            progress.energy_kwh,
            f"repair: progress recorded at {progress.updated_at}, later work unmetered",
        )

    # ---- reading -------------------------------------------------------------------------------

    def balances(self) -> dict[str, Balance]:
        """Every user account, by name."""
        totals = self._store.account_totals()
        reserved: dict[str, int] = defaultdict(int)
        spent: dict[str, int] = defaultdict(int)
        for entry in self._store.select(kind="reserve"):
            session, account = entry.payload["session"], entry.payload["account"]
            reserved[account] += totals.get(reserved_account(session), 0)
            spent[account] += totals.get(spent_account(session), 0)
        return {
            name: Balance(name, to_hours(total), to_hours(reserved[name]), to_hours(spent[name]))
            for name, total in sorted(totals.items())
            if not name.startswith("@")
        }

    def balance(self, account: str) -> Balance:
        check_name(account, field="account")
        found = self.balances().get(account)
        if found is None:
            raise UnknownAccount(_unknown_account(account))
        return found

    def entries(
        self,
        *,
        session: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Entry]:
        """Entries in seq order, filtered by session, kind, and time (since <= time < until)."""
        return self._store.select(
            kind=kind,
            session=session,
            since=None if since is None else format_time(since),
            until=None if until is None else format_time(until),
        )

    def run_spent_hours(self, run: str) -> float:
        """Accelerator-hours a training run has taken from its account: the spend of each of its settled
        sessions (corrections included) and the whole reservation of one still open. A run is its first
        session and every session that resumed it (its reservation's `resumes.run`), so a resume is charged
        against what the run really spent, not only what its checkpoint saw."""
        totals = self._store.account_totals()
        spent = 0
        for entry in self._store.select(kind="reserve"):
            session, resumes = entry.payload["session"], entry.payload.get("resumes") or {}
            if session == run or resumes.get("run") == run:
                spent += totals.get(spent_account(session), 0) + totals.get(reserved_account(session), 0)
        return to_hours(spent)

    def open_sessions(self) -> list[OpenSession]:
        """Sessions reserved and not yet settled, running or abandoned."""
        settled = {entry.payload["session"] for entry in self._store.select(kind="settle")}
        return [
            OpenSession(
                entry.payload["session"],
                entry.payload["account"],
                to_hours(entry.payload["postings"][reserved_account(entry.payload["session"])]),
                entry.seq,
            )
            for entry in self._store.select(kind="reserve")
            if entry.payload["session"] not in settled
        ]

    def abandoned_sessions(self) -> list[OpenSession]:
        """Open sessions whose process is gone: what `repair` would settle."""
        return [
            open_session
            for open_session in self.open_sessions()
            if open_session.session not in self._held and not self._sessions.is_alive(open_session.session)
        ]

    def head(self) -> Head:
        return self._store.head()

    def verify(self, anchor: Head | str | None = None, *, keyring: Keyring | None = None) -> VerifyResult:
        """Check the schema, the whole chain and its accounting (`ledger.audit`), that the chain still
        reaches an anchor kept elsewhere and, with a `keyring`, that every entry is signed by a key it holds
        in a role that allows it. `.ok` is what anything that settles or repairs must ask first; `.signed`
        counts the signed entries."""
        if isinstance(anchor, str):
            anchor = Head.parse(anchor)
        audit = Audit(keyring)
        result = dataclasses.replace(
            verify_chain(self._store.chain_rows(), anchor, audit.check_contents), signed=audit.signed
        )
        if not result.ok:
            return result
        misnumbered = self._store.first_misnumbered_seq(result.entries)
        if misnumbered is not None:
            return VerifyResult(
                False,
                misnumbered - 1,
                None,
                misnumbered,
                "its seq column disagrees with the seq its hash covers (rows were renumbered)",
            )
        problem = self._store.schema_problem()
        if problem is not None:
            return VerifyResult(False, 0, None, 0, problem)
        return result

    def export(self, out: TextIO, fmt: str = "jsonl", **filters: Any) -> int:
        """Write entries (optionally filtered as in `entries`) as jsonl or csv; returns how many."""
        if fmt not in EXPORT_FORMATS:
            raise LedgerError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        entries = self.entries(**filters)
        write_entries(entries, out, fmt)
        return len(entries)

    def report(self) -> Report:
        return build_report(self.entries())

    def backup(self, destination: str | os.PathLike) -> VerifyResult:
        """Write a consistent, self-contained SQLite copy of this ledger to `destination`, which must not
        exist, and return the copy's verification, run before the copy is put in place (a broken
        ledger is copied as it is, for whoever audits it)."""
        destination = Path(destination)
        with staged_copy(self._store, destination) as staging:
            with Ledger.open(staging, create=False) as copy:
                result = copy.verify()
            publish(staging, destination)
        return result

    def copy(self, destination: str | os.PathLike) -> VerifyResult:
        """Copy this ledger, every entry's stored bytes and hash as they are, to a new SQLite file or into
        an empty PostgreSQL database (its tables created if it has none): how a ledger moves between
        stores. A broken ledger is not copied (`backup` keeps one as it is): then its verification is
        returned. Else the copy's, made before the copy is kept; a copy is kept only if it verifies and
        ends at an entry this ledger holds, with the same hash: as every entry hashes the one before it,
        it then holds exactly this ledger's entries up to there."""
        source = self.verify()
        if not source.ok:
            return source
        target = resolve_ledger_path(destination)
        if not is_server_url(target):
            with staged_copy(self._store, target, what="copy destination") as staging:
                with Ledger.open(staging, create=False) as copy:
                    result = self._checked_copy(copy.verify(), target)
                publish(staging, target)
            return result
        with Ledger.open(target) as copy:
            return copy._write(lambda tx: self._fill(copy, tx))

    def _fill(self, copy: Ledger, tx: Transaction) -> VerifyResult:
        if tx.head() != EMPTY_HEAD:
            raise LedgerError(
                f"{copy.path} already holds a ledger ({tx.head().seq} entries); a copy never adds to a ledger: "
                "copy into a database of its own"
            )
        tx.extend(self._store.chain_rows())
        return self._checked_copy(copy.verify(), copy.path)  # inside the transaction, so it sees the rows

    def _checked_copy(self, result: VerifyResult, where: Path | str) -> VerifyResult:
        held = self._store.entry(result.head.seq) if result.ok else None
        if not result.ok or (result.head.seq and (held is None or held.hash != result.head.hash)):
            raise LedgerError(
                f"the copy at {where} does not reproduce {self.path} ({result.reason or 'its head differs'}); "
                "nothing was kept there: run the copy again"
            )
        return result

    # ---- checks shared by writers ----------------------------------------------------------------

    def _require_cover(self, tx: Transaction, account: str, amount: int) -> None:
        available = tx.account_total(account)
        if available is None:
            raise UnknownAccount(_unknown_account(account))
        if available < amount:
            raise InsufficientHours(
                f"account {account!r} has {to_hours(available):g} accelerator-hours available, less than "
                f"the {to_hours(amount):g} asked for; fund it (welfare ledger fund --account {account} "
                "--hours H) or ask for less"
            )

    def _open_reservation(self, tx: Transaction, session: str) -> Entry:
        reservations = tx.select(kind="reserve", session=session)
        if not reservations:
            raise UnknownSession(f"session {session!r} has no reservation in {self.path}; check the session id")
        settlements = tx.select(kind="settle", session=session)
        if settlements and session in self._held:
            raise LedgerError(
                f"session {session!r}, which this process runs, was settled by entry {settlements[0].seq} of "
                "another process: `welfare ledger repair` found it dead (for example while this process was cut off "
                "from the ledger server). The hours it spent after its last progress note are "
                "not in the ledger; an approver charges them by correcting that entry with explicit postings "
                "(docs/ledger.md)"
            )
        if settlements:
            raise LedgerError(
                f"session {session!r} was already settled by entry {settlements[0].seq}; "
                "a session settles once (use `correct` to fix its amounts)"
            )
        return reservations[0]


def _default_correction(target: Entry) -> accounts.Postings:
    if target.kind == "measurement":
        return {}
    if target.kind == "correction" and not target.payload["postings"]:
        raise LedgerError(f"entry {target.seq} retracts a measurement; record the measurement again instead")
    if target.kind in ("fund", "transfer", "correction"):
        return accounts.reversal(target.payload["postings"])
    raise LedgerError(
        f"entry {target.seq} is a {target.kind}; reversing it would reopen or unsettle a session, so pass "
        "explicit zero-sum postings in hours, e.g. {'@spent/SESSION': -0.1, 'lab': 0.1}"
    )


def _refuse_overdraw(tx: Transaction, seq: int, postings: accounts.Postings) -> None:
    """A correction cannot take back hours an account no longer holds (they were moved or spent since)."""

    def after(name: str) -> int:
        return (tx.account_total(name) or 0) + postings[name]

    overdrawn = accounts.first_overdrawn("correction", postings, after)
    if overdrawn is not None:
        raise InsufficientHours(
            f"correcting entry {seq} would leave account {overdrawn!r} at {to_hours(after(overdrawn)):g} "
            "accelerator-hours, below zero: its hours were moved or spent since. Correct the later entries "
            "that moved them first (welfare ledger show lists them), then this one"
        )


def _unknown_account(account: str) -> str:
    return (
        f"account {account!r} has never been funded; check the name (welfare ledger balance) or fund it "
        f"first: welfare ledger fund --account {account} --hours H"
    )


def _text(value: object, *, field: str) -> str:
    """Free text for an entry; text no PostgreSQL ledger can hold (bytes of another encoding than UTF-8, e.g.
    an argument typed under another locale, or a NUL) would make an entry verify refuses."""
    if not isinstance(value, str):
        raise LedgerError(f"{field} must be text, got {value!r}")
    if not is_portable_text(value):
        raise LedgerError(
            f"{field} {value!r} holds text a ledger cannot store: bytes of another encoding than UTF-8 (each "
            "shown as \\udcXX; give it in UTF-8, e.g. under LANG=C.UTF-8) or a NUL character. Nothing was written"
        )
    return value


def _check_amount(name: str, value: object) -> None:
    """An optional physical amount (energy, time): None, or a finite number >= 0."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
    ):
        raise LedgerError(f"{name} must be a finite number >= 0 or None, got {value!r}")


def _measure(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LedgerError(f"{name} must be a finite number, got {value!r}")
    if name in ("debt", "credit") and value < 0:
        raise LedgerError(f"{name} is an amount and must be >= 0, got {value!r}")
    return float(value)


def _cite(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LedgerError(f"result file {path} does not exist; record a measurement after writing its results")
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}

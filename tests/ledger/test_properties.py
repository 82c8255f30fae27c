"""Property-based (hypothesis): random sequences of fund, transfer, reserve, settle, correct, repair and
sessions killed by SIGKILL (or let go of without settling) keep the books exact. After every step the
ledger's balances equal a plain model's, funds = available + reserved + spent, no balance is negative,
and the chain verifies; on either store. Example counts are modest so the test runs in seconds on a
loaded CI machine."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.ledger.conftest import new_schema
from tests.ledger.helpers import connect, killed_session
from welfare_offsets.ledger import InsufficientHours, Ledger, UnknownAccount, postgres

ACCOUNTS = ("lab", "team")
amounts = st.integers(min_value=1, max_value=3_000_000)  # micro-hours
fractions = st.integers(min_value=0, max_value=100)  # percent of a reservation
shares = st.integers(min_value=1, max_value=120)  # percent of what an account has: above 100 is refused
PROGRESS = ("none", "within", "beyond", "garbage")


def hours(microhours: int) -> float:
    return microhours / 1_000_000


class LedgerBooks(RuleBasedStateMachine):
    """The ledger against a model in integer micro-hours: available per account, open sessions, spent."""

    @initialize()
    def open_ledger(self):
        self.folder = Path(tempfile.mkdtemp(prefix="ledger-properties-"))
        self.path = self._new_location()
        self.ledger = Ledger.open(self.path)
        self.funded = 0
        self.available: dict[str, int] = {}
        self.spent: dict[str, int] = {}
        self.held: dict[str, tuple[str, int]] = {}  # session -> (account, reserved), open in this process
        self.dead: dict[str, tuple[str, int, int]] = {}  # session -> (account, reserved, what repair charges)
        self.reversible: dict[int, dict[str, int]] = {}  # fund/transfer seq -> its postings to user accounts
        self.fund("lab", 10_000_000)

    def teardown(self):
        if hasattr(self, "ledger"):
            self.ledger.close()
            shutil.rmtree(self.folder, ignore_errors=True)

    @rule(account=st.sampled_from(ACCOUNTS), amount=amounts)
    def fund(self, account, amount):
        entry = self.ledger.fund(account, hours(amount))
        self.funded += amount
        self._move({account: amount})
        self.reversible[entry.seq] = {account: amount}

    @rule(source=st.sampled_from(ACCOUNTS), share=shares)
    def transfer(self, source, share):
        amount = self._share(source, share)
        destination = next(name for name in ACCOUNTS if name != source)
        if self.available.get(source, 0) < amount:
            self._refused(lambda: self.ledger.transfer(source, destination, hours(amount)), source)
            return
        entry = self.ledger.transfer(source, destination, hours(amount))
        self._move({source: -amount, destination: amount})
        self.reversible[entry.seq] = {source: -amount, destination: amount}

    @rule(account=st.sampled_from(ACCOUNTS), share=shares)
    def reserve(self, account, share):
        amount = self._share(account, share)
        if self.available.get(account, 0) < amount:
            self._refused(lambda: self.ledger.reserve(account, hours(amount)), account)
            return
        session = self.ledger.reserve(account, hours(amount)).payload["session"]
        self._move({account: -amount})
        self.held[session] = (account, amount)

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(min_value=0), percent=fractions)
    def settle(self, pick, percent):
        session = sorted(self.held)[pick % len(self.held)]
        account, reserved = self.held.pop(session)
        spent = reserved * percent // 100
        self.ledger.settle(session, hours(spent))
        self._move({account: reserved - spent})
        self.spent[account] = self.spent.get(account, 0) + spent

    @precondition(lambda self: self.reversible)
    @rule(pick=st.integers(min_value=0))
    def correct(self, pick):
        seq = sorted(self.reversible)[pick % len(self.reversible)]
        reversal = {name: -amount for name, amount in self.reversible[seq].items()}
        if any(self.available.get(name, 0) + amount < 0 for name, amount in reversal.items()):
            return  # the hours were spent or moved on since: reversing would overdraw, so it is not tried
        self.ledger.correct(seq, "property test")
        del self.reversible[seq]
        self.funded += sum(reversal.values())  # a fund reversed leaves the books; a transfer sums to 0
        self._move(reversal)

    @rule(
        account=st.sampled_from(ACCOUNTS),
        share=st.integers(min_value=1, max_value=100),
        percent=fractions,
        progress=st.sampled_from(PROGRESS),
        kill=st.booleans(),
    )
    def abandon(self, account, share, percent, progress, kill):
        """A session reserved elsewhere whose process dies (kill -9 in a child) or lets go without settling."""
        amount = self._share(account, share)
        if self.available.get(account, 0) < amount:
            return
        recorded = amount * percent // 100 if progress == "within" else amount * 500
        session = (self._reserve_and_die if kill else self._reserve_and_let_go)(
            account, amount, None if progress in ("none", "garbage") else recorded
        )
        if progress == "garbage":
            self._garble_progress(session)
        self._move({account: -amount})
        self.dead[session] = (account, amount, recorded if progress == "within" else amount)

    @rule()
    def repair(self):
        outcomes = {outcome.session: outcome for outcome in self.ledger.repair()}
        assert set(outcomes) == set(self.dead)  # this process's own sessions are not touched
        for session, (account, reserved, charged) in self.dead.items():
            postings = outcomes[session].settlement.payload["postings"]
            assert postings[f"@spent/{session}"] == charged <= reserved
            self._move({account: reserved - charged})
            self.spent[account] = self.spent.get(account, 0) + charged
        self.dead.clear()

    @invariant()
    def books_balance(self):
        if not hasattr(self, "ledger"):
            return
        balances = dict(self.ledger.balances())
        micro = {
            name: (round(b.available_hours * 1e6), round(b.reserved_hours * 1e6), round(b.spent_hours * 1e6))
            for name, b in balances.items()
        }
        reserved = dict.fromkeys(micro, 0)
        for account, amount in [*self.held.values(), *((a, r) for a, r, _ in self.dead.values())]:
            reserved[account] += amount
        for name, (available, held, spent) in micro.items():
            assert (available, held, spent) == (self.available.get(name, 0), reserved[name], self.spent.get(name, 0))
            assert available >= 0 and held >= 0 and spent >= 0
        assert sum(sum(parts) for parts in micro.values()) == self.funded
        assert self.ledger.verify().ok

    # ---- helpers ----------------------------------------------------------------------------------

    def _new_location(self):
        return self.folder / "ledger.sqlite"

    def _garble_progress(self, session: str) -> None:
        (self.folder / "ledger.sqlite.sessions" / f"{session}.progress.json").write_bytes(GARBAGE)

    def _share(self, account: str, percent: int) -> int:
        return max(1, self.available.get(account, 0) * percent // 100)

    def _move(self, changes: dict[str, int]) -> None:
        for name, amount in changes.items():
            self.available[name] = self.available.get(name, 0) + amount

    def _refused(self, write, account: str) -> None:
        head = self.ledger.head()
        expected = UnknownAccount if account not in self.available else InsufficientHours
        try:
            write()
        except expected:
            pass
        else:
            raise AssertionError(f"an uncovered write from {account!r} was accepted")
        assert self.ledger.head() == head

    def _reserve_and_let_go(self, account: str, amount: int, progress: int | None) -> str:
        with Ledger.open(self.path) as other:
            session = other.reserve(account, hours(amount)).payload["session"]
            if progress is not None:
                other.note_progress(session, hours(progress))
        return session

    def _reserve_and_die(self, account: str, amount: int, progress: int | None) -> str:
        return killed_session(self.path, hours(amount), None if progress is None else hours(progress), account=account)


class LedgerBooksOnAServer(LedgerBooks):
    """The same, on a PostgreSQL ledger: each example in a schema of its own."""

    server = None  # set by the test below

    def _new_location(self):
        return new_schema(self.server)

    def _garble_progress(self, session: str) -> None:
        db = connect(self.path)
        db.execute("INSERT INTO progress (session, body) VALUES (?, ?)", (session, GARBAGE.decode()))
        db.close()


GARBAGE = b'{"spent_hours": ['
LedgerBooks.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_random_operations_keep_the_books_exact = LedgerBooks.TestCase


def test_random_operations_keep_the_books_exact_on_postgresql(pg_server_session, monkeypatch):
    monkeypatch.setattr(postgres, "RESTART_GRACE_S", 0.0)
    monkeypatch.setattr(LedgerBooksOnAServer, "server", pg_server_session)
    run_state_machine_as_test(LedgerBooksOnAServer, settings=settings(LedgerBooks.TestCase.settings, max_examples=20))

"""A sweep's accelerator-hours in the ledger, through the same BudgetSession an offset session uses.

One run of `welfare sweep` with subjects to measure is one ledger session, `sweep: <out>` in its
reservation's purpose. The main process reserves the budget before the sweep writes anything; every rank
meters it (wall time x processes, as a session is billed); before each round of subjects (one per rank) the
ranks ask the SpendGuard together whether the round would cross the budget, the costliest round so far
standing for the next one (ranks take the biggest subjects first); leaving the block settles what was spent
and refunds the rest. Progress is noted before every round, so a sweep killed mid-round is settled by
`repair` at its spend when that round began. A run whose subjects are all cached reserves nothing.

Without budget_hours the budget is what the account has available once `repair` has settled dead sessions
(a killed sweep holds all it had): all of it is reserved, so neither the sweep nor a session beside it can
overdraw the account, and what the sweep did not spend goes back at settlement.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from welfare_offsets.eval.settings import setting
from welfare_offsets.ledger import BudgetSession, Ledger, LedgerError
from welfare_offsets.ledger.accounts import check_hours, spent_account, to_hours
from welfare_offsets.train.ledger_settings import LedgerSettings

NOTHING_RESERVED = {"session": None, "note": "every subject was already measured (cached): nothing was reserved"}


@dataclass(kw_only=True)
class SweepBudgetSettings(LedgerSettings):
    """Where a sweep's accelerator-hours are accounted and how many it may spend."""

    budget_hours: float | None = setting(
        None,
        "accelerator-hours (wall x processes) this run may spend; it stops between subjects before crossing "
        "them. Default: all the account has available, reserved while the sweep runs",
    )

    def check(self):
        try:
            if self.budget_hours is not None:
                check_hours(self.budget_hours, field="budget_hours")
        except LedgerError as err:
            raise ValueError(str(err)) from None


class SweepBudget:
    """The ledger session of one sweep run, on every rank; `with` settles it on leaving, also after an error.
    `session` is its id on every rank; `record` is what results.json says of it (main process, once settled)."""

    def __init__(self, settings: SweepBudgetSettings, state, out: Path, gpus: tuple[int, ...] = ()):
        self.settings, self.state, self.gpus = settings, state, gpus
        self.budget = None
        self.record: dict = {}
        self.ledger = Ledger.open(settings.ledger, create=False) if state.is_main_process else None
        try:
            hours = session = None
            try:
                if self.ledger is not None:
                    hours = self._budget_hours()
                    self.budget = self._start(hours, purpose=f"sweep: {out}")
                    session = self.budget.id
                    whole = "" if settings.budget_hours is not None else ", all it has (--budget_hours holds less)"
                    print(
                        f"welfare sweep: ledger session {session} reserves {hours:g} accelerator-hours of account "
                        f"{settings.account!r}{whole} in {self.ledger.path}"
                    )
            finally:  # every rank learns the outcome, so that all of them stop when the main process reserved nothing
                hours, self.session = _from_main_process(state, [hours, session])
            if hours is None:
                raise LedgerError("the main process reserved no budget for the sweep; its own error says why")
            if self.budget is None:
                self.budget = self._start(hours)
        except BaseException:
            self.close(failed=True)
            raise

    def _budget_hours(self) -> float:
        """budget_hours, or all the account has available once dead sessions (a killed sweep's) gave theirs back."""
        account, hours = self.settings.account, self.settings.budget_hours
        if hours is None:
            self.ledger.repair()
            hours = self.ledger.balance(account).available_hours
            if hours <= 0:
                raise LedgerError(
                    f"account {account!r} has no accelerator-hours available ({hours:g}) to measure the sweep's "
                    f"subjects; fund it (welfare ledger fund --account {account} --hours H --ledger "
                    f"{self.ledger.path}) or name another --account"
                )
        return hours

    def _start(self, hours: float, purpose: str = "") -> BudgetSession:
        return BudgetSession.start(
            self.ledger,
            account=self.settings.account,
            budget_hours=hours,
            device=self.state.device.type,
            processes=self.state.num_processes,
            gpus=self.gpus,
            purpose=purpose,
            is_main=self.ledger is not None,
            progress_interval_s=0.0,  # at every round: a killed sweep is charged its spend when its last round began
        )

    def rounds(self, count: int) -> Iterator[int]:
        """0, 1, ... count - 1, as long as the next round fits the budget (every rank asks together)."""
        self.budget.loop_started()
        for round_ in range(count):
            if self.budget.step_done():
                return
            yield round_

    @property
    def stopped(self) -> bool:
        return self.budget.guard.stopped_at_hours is not None

    def close(self, *, failed: bool = False) -> None:
        """Settle (every rank: the energy sum is collective, except after a failure) and close the ledger."""
        try:
            if self.budget is not None:
                settlement = self.budget.settle(collective=not failed)
                if settlement is not None:
                    self.record = self._record(settlement)
        finally:
            if self.ledger is not None:
                self.ledger.close()

    def _record(self, settlement) -> dict:
        spent = to_hours(settlement.payload["postings"][spent_account(self.session)])
        limit = self.budget.guard.limit_hours
        rest = "the rest refunded" if spent <= limit else f"{spent - limit:.6g} over it charged to the account"
        print(
            f"welfare sweep: ledger session {self.session} settled: {spent:.6g} of its {limit:g} accelerator-hours "
            f"spent, {rest}"
        )
        return {
            "ledger": str(self.ledger.path),
            "session": self.session,
            "account": self.settings.account,
            "budget_hours": self.settings.budget_hours,
            "reserved_hours": limit,
            "spent_hours": spent,
            "energy_kwh": settlement.payload["energy_kwh"],
            "stopped_by_budget": self.stopped,
            "settlement": {"seq": settlement.seq, "hash": settlement.hash},
            "head": str(self.ledger.head()),
            "verify": f"welfare ledger verify --ledger {self.ledger.path}",
        }

    def __enter__(self) -> SweepBudget:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(failed=exc_type is not None)


def _from_main_process(state, values: list) -> list:
    """The main process's values on every rank (as they are, in a single process)."""
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(values, from_process=0)
    return values

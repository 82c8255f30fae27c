"""Budgets that hold, in four layers: admission (reserve), in-loop (stop before the projected spend
would cross the budget, after saving a checkpoint, on all ranks together), a backstop (work that checks no
budget, such as an evaluation, is stopped when the reservation is used up: `BudgetExhausted`), and
settlement (refund the rest).

A budget covers a whole training run, across resumes: each checkpoint carries the run's id and its spend
so far (`ledger_spend.json`); a session resumed from it starts its count at what the run's sessions were
charged in the ledger (work after the checkpoint included: an evaluation, the last save, steps cut by
Ctrl-C), never less than the checkpoint says, and reserves only what is left; the ledger is charged only
what each session itself metered, so nothing is counted twice or left out.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from welfare_offsets.ledger.accounts import check_hours
from welfare_offsets.ledger.book import Ledger
from welfare_offsets.ledger.chain import Entry
from welfare_offsets.ledger.distributed import any_rank, is_main_process, sum_over_ranks, world_size
from welfare_offsets.ledger.errors import LedgerError
from welfare_offsets.ledger.files import read_json, write_json_atomic
from welfare_offsets.ledger.meter import SECONDS_PER_HOUR, Meter, detect_device_kind
from welfare_offsets.ledger.wandb_anchor import write_head_to_wandb_summary

SPEND_FILE = "ledger_spend.json"
# Wall seconds past the reservation the backstop lets a session run, for an orderly end (the last logs, a
# trainer's own clean-up, settling) when the in-loop guard stopped it close to the line; as a scheduler's
# time limit leaves a job its kill-wait. Work that runs on is stopped then.
BACKSTOP_GRACE_S = 30.0


class BudgetExhausted(LedgerError):
    """A session used up its reservation in work that does not check the budget, and was stopped there."""


class _Backstop:
    """Stops the main thread with BudgetExhausted BACKSTOP_GRACE_S wall seconds after the meter reaches
    `limit_hours`: an alarm (SIGALRM) set for then. The in-loop guard stops training before the limit; this
    is for the stages between checks (evaluations, building training data, a zero point). Armed only in the
    main thread of a process whose SIGALRM is free; the overrun it allows is the grace, the time the
    interrupted operation takes to return to Python (one forward pass or generation step) and settling. A
    checkpoint being saved is never cut: while `held`, the stop waits for `release`."""

    def __init__(self, meter: Meter, limit_hours: float, on_fire):
        self._on_fire = on_fire
        self._previous = None
        self.held = self._pending = False
        seconds = limit_hours * SECONDS_PER_HOUR / meter.accelerators - meter.seconds + BACKSTOP_GRACE_S
        self.armed = (
            threading.current_thread() is threading.main_thread()
            and hasattr(signal, "setitimer")
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN)
        )
        if self.armed:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-6))

    def _fire(self, signum, frame) -> None:
        if self.held:
            self._pending = True
        elif self.armed:
            self.disarm()
            raise self._on_fire()

    def hold(self) -> None:
        """Defer a stop until `release` (a checkpoint save under way)."""
        self.held = True

    def release(self) -> None:
        """End a hold; the stop it deferred, if the reservation ran out meanwhile, happens now."""
        self.held = False
        if self._pending and self.armed:
            self.disarm()
            raise self._on_fire()

    def disarm(self) -> None:
        if self.armed:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)


@dataclass(frozen=True)
class CheckpointSpend:
    """What a checkpoint says about the run that saved it."""

    run: str  # id of the run's first session: the same across resumes
    session: str  # the session that saved the checkpoint
    spent_hours: float  # the run's accelerator-hours up to the save, over all its sessions

    @classmethod
    def read(cls, checkpoint: Path) -> CheckpointSpend:
        path = Path(checkpoint) / SPEND_FILE
        if not path.is_file():
            raise LedgerError(
                f"{path} is missing: resume only from a checkpoint saved inside a BudgetSession, or start a new run"
            )
        try:
            data = read_json(path)
            run, session, spent = data["run"], data["session"], data["spent_hours"]
        except (ValueError, KeyError, TypeError) as error:
            raise LedgerError(f"{path} is unreadable ({error!r}); resume from another checkpoint") from None
        if not (isinstance(run, str) and run and isinstance(session, str) and session):
            raise LedgerError(f"{path}: run and session must be session ids; resume from another checkpoint")
        if isinstance(spent, bool) or not isinstance(spent, (int, float)) or not 0 <= spent < float("inf"):
            raise LedgerError(
                f"{path}: spent_hours must be a finite number of hours >= 0, got {spent!r}; resume from another "
                "checkpoint"
            )
        return cls(run, session, float(spent))

    def run_spent_hours(self, ledger: Ledger) -> float:
        """What the run spent before a resume: its sessions' charges in `ledger` (work after this checkpoint
        included), never less than this checkpoint's own count."""
        return max(self.spent_hours, ledger.run_spent_hours(self.run))

    def write(self, checkpoint: Path) -> None:
        write_json_atomic(
            Path(checkpoint) / SPEND_FILE, {"run": self.run, "session": self.session, "spent_hours": self.spent_hours}
        )


class SpendGuard:
    """Says stop when finishing one more step (and a checkpoint save) would cross the limit.

    The projection is: spent so far + the slowest of the recent steps + the last measured save
    (twice if a save is already due now). Until a save has been measured its cost is not known, so
    the Trainer callback saves after the first step; a plain loop should do the same (`save_measured`).
    """

    def __init__(self, meter: Meter, limit_hours: float, *, window: int = 16):
        self.meter, self.limit_hours = meter, limit_hours
        self._recent_steps: deque[float] = deque(maxlen=window)
        self._mark = meter.hours
        self.save_hours = 0.0
        self.save_measured = False
        self.last_step_hours = 0.0
        self.stopped_at_hours: float | None = None

    def restart_interval(self) -> None:
        """Start the next step's clock now, so setup before the loop is not taken for a step."""
        self._mark = self.meter.hours

    def step_done(self, *, save_due: bool = False) -> bool:
        now = self.meter.hours
        self.last_step_hours = now - self._mark
        self._recent_steps.append(self.last_step_hours)
        self._mark = now
        saves_ahead = 2 if save_due else 1
        projected = now + max(self._recent_steps) + saves_ahead * self.save_hours
        stop = any_rank(projected > self.limit_hours)
        if stop:
            self.stopped_at_hours = now
        return stop

    def save_done(self) -> None:
        """A checkpoint save finished after the last step: remember its cost, keep it out of the next step's."""
        now = self.meter.hours
        self.save_hours = now - self._mark
        self.save_measured = True
        self._mark = now


class BudgetSession:
    """One metered unit of work with a budget in the ledger. Use `start(...)` as a context manager;
    leaving it (normally or by an exception) settles the session and refunds the unused hours."""

    def __init__(
        self,
        ledger: Ledger | None,
        meter: Meter,
        guard: SpendGuard,
        *,
        session: str | None,
        run: str | None,
        spent_before_hours: float,
        progress_interval_s: float,
        wandb_run: Any,
    ):
        self.ledger, self.meter, self.guard = ledger, meter, guard
        self.id, self.run = session, run
        self.spent_before_hours = spent_before_hours
        self._progress_interval_s = progress_interval_s
        self._next_progress = time.monotonic() + progress_interval_s
        self._wandb_run = wandb_run
        self.settlement: Entry | None = None
        self._closed = False
        self.reserved_hours = guard.limit_hours  # the backstop's limit: the guard's is cut for later work
        self._backstop = _Backstop(meter, self.reserved_hours, self._exhausted)

    @classmethod
    def start(
        cls,
        ledger: Ledger | None,
        *,
        account: str,
        budget_hours: float,
        device: str | None = None,
        processes: int | None = None,
        gpus: Sequence[int] = (),
        purpose: str = "",
        resume_from: str | os.PathLike | None = None,
        wandb_run: Any = None,
        is_main: bool | None = None,
        progress_interval_s: float = 30.0,
    ) -> BudgetSession:
        """Admit a session: settle abandoned ones, reserve the budget (less what a resumed run already
        spent), then start metering. Only the main process writes; other ranks pass ledger=None or
        any ledger and just meter and guard. `budget_hours` is for the whole run, across resumes. `gpus`:
        the CUDA devices each process holds where it holds several; the reservation's `processes` records
        the accelerators billed (processes x devices each)."""
        check_hours(budget_hours, field="budget_hours")
        is_main = is_main_process(os.environ) if is_main is None else is_main
        device = device or detect_device_kind()
        processes = processes or world_size(os.environ)
        meter = Meter.for_device(device, processes, gpus)
        resumed = None if resume_from is None else CheckpointSpend.read(Path(resume_from))
        spent_before = resumed.spent_hours if resumed else 0.0
        session = run = None
        if is_main:
            if ledger is None:
                raise LedgerError("the main process needs a ledger to reserve the budget in")
            ledger.repair()
            if resumed:
                spent_before = resumed.run_spent_hours(ledger)
        limit = budget_hours - spent_before  # on other ranks, the checkpoint's count: the main process decides
        if limit <= 0:
            raise LedgerError(
                f"the run resumed from {resume_from} already spent {spent_before:g} of its {budget_hours:g}-hour "
                "budget (its sessions' charges in the ledger); pass a larger budget_hours to go on"
            )
        if is_main:
            reservation = ledger.reserve(
                account,
                limit,
                device=device,
                processes=meter.accelerators,
                purpose=purpose,
                resumes=None
                if resumed is None
                else {
                    "checkpoint": str(resume_from),
                    "session": resumed.session,
                    "run": resumed.run,
                    "spent_hours": spent_before,
                },
                wandb_run=getattr(wandb_run, "id", None),
            )
            session = reservation.payload["session"]
            run = resumed.run if resumed else session
            if wandb_run is not None:
                wandb_run.summary["ledger/session"] = session
        meter.start()
        return cls(
            ledger if is_main else None,
            meter,
            SpendGuard(meter, limit),
            session=session,
            run=run,
            spent_before_hours=spent_before,
            progress_interval_s=progress_interval_s,
            wandb_run=wandb_run,
        )

    def _exhausted(self) -> BudgetExhausted:
        self.guard.stopped_at_hours = self.meter.hours
        return BudgetExhausted(
            f"session {self.id or '(this rank)'} used up its {self.reserved_hours:.6g} reserved accelerator-hours "
            f"(and {BACKSTOP_GRACE_S:g} s of grace) in work that does not check the budget, and was stopped there "
            "(a budget is a hard limit); what it spent is settled in the ledger. Raise budget_hours (a checkpoint "
            "resumes with the run's spend), or make that work smaller"
        )

    @property
    def run_spent_hours(self) -> float:
        """The run's spend so far, over this session and those it resumed from."""
        return self.spent_before_hours + self.meter.hours

    def loop_started(self) -> None:
        """Call right before the training loop (the Trainer callback does), so setup is not a 'step'."""
        self.guard.restart_interval()

    def step_done(self, *, save_due: bool = False) -> bool:
        """Call after every optimizer step. True: save a checkpoint (between `saving_checkpoint` and
        `checkpoint_saved`), and stop. `save_due` says a checkpoint save is about to happen anyway."""
        stop = self.guard.step_done(save_due=save_due)
        if self.ledger is not None and time.monotonic() >= self._next_progress:
            self._note_progress()
        return stop

    def saving_checkpoint(self) -> None:
        """Call before each checkpoint save: the backstop lets it finish (a cut save would lose the steps
        since the last one), and stops the session at `checkpoint_saved` if the reservation ran out."""
        self._backstop.hold()

    def checkpoint_saved(self, checkpoint: str | os.PathLike) -> None:
        """Call after each checkpoint save: stores the run's spend with it, for a resume to continue."""
        self.guard.save_done()
        if self.ledger is not None:
            CheckpointSpend(self.run, self.id, self.run_spent_hours).write(Path(checkpoint))
            self._note_progress()
        self._backstop.release()

    def trainer_callback(self):
        """A transformers TrainerCallback enforcing this budget (imports transformers)."""
        from welfare_offsets.ledger.callbacks import BudgetCallback

        return BudgetCallback(self)

    def _note_progress(self) -> None:
        # Mid-run, only this rank's GPU energy is known (summing needs all ranks in step): record
        # energy only when this rank is the whole session, never a partial sum.
        energy = self.meter.energy_kwh() if self.meter.processes == 1 else None
        self.ledger.note_progress(self.id, self.meter.hours, energy)
        self._next_progress = time.monotonic() + self._progress_interval_s

    def settle(self, *, collective: bool = True) -> Entry | None:
        """Stop metering and settle: this session's metered hours are spent, the rest refunded.
        Every rank calls it (energy is summed across ranks); only the main process writes. On a failure path
        pass collective=False: the other ranks may never reach the sum, so energy is recorded only when this
        rank is the whole session (never a partial sum)."""
        if self._closed:
            return self.settlement
        self._closed = True
        self._backstop.disarm()
        self.meter.stop()
        if collective:
            energy = sum_over_ranks(self.meter.energy_kwh())
        else:
            energy = self.meter.energy_kwh() if self.meter.processes == 1 else None
        if self.ledger is not None:
            self.settlement = self.ledger.settle(
                self.id,
                self.meter.hours,
                energy_kwh=energy,
                wall_seconds=self.meter.seconds,
                stopped_by_budget=self.guard.stopped_at_hours is not None,
            )
            if self._wandb_run is not None:
                write_head_to_wandb_summary(self._wandb_run, self.ledger)
        return self.settlement

    def __enter__(self) -> BudgetSession:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.settle(collective=exc_type is None)

"""GPU-hour accounting for welfare-offsets: a tamper-evident ledger, a meter, and budgets that hold.

    ledger = Ledger.open(path)  # a file or postgresql:// URL; None: $WELFARE_LEDGER, then ~/.local/share/welfare-offsets/
    with BudgetSession.start(ledger, account="lab", budget_hours=2.0, wandb_run=run) as session:
        trainer.add_callback(session.trainer_callback())  # or session.step_done() in a plain loop
        trainer.train()
    ledger.record_measurement(session.id, "SR", wellbeing_before=-0.4, wellbeing_after=0.1,
                              recovered=0.5, results=[results_json], wandb_run=run.id)

Imports nothing else from the project, and neither torch nor transformers (only `ledger.callbacks`,
used by trainers, imports transformers).
"""

from welfare_offsets.ledger.book import Balance, Ledger, OpenSession, RepairOutcome
from welfare_offsets.ledger.budget import BudgetSession, CheckpointSpend, SpendGuard
from welfare_offsets.ledger.chain import GENESIS_HASH, Entry, Head, VerifyResult
from welfare_offsets.ledger.errors import (
    BrokenLedger,
    InsufficientHours,
    LedgerError,
    NotALedger,
    SchemaTooNew,
    UnknownAccount,
    UnknownSession,
)
from welfare_offsets.ledger.location import default_ledger_path
from welfare_offsets.ledger.meter import Meter
from welfare_offsets.ledger.wandb_anchor import write_head_to_wandb_summary

__all__ = [
    "GENESIS_HASH",
    "Balance",
    "BrokenLedger",
    "BudgetSession",
    "CheckpointSpend",
    "Entry",
    "Head",
    "InsufficientHours",
    "Ledger",
    "LedgerError",
    "Meter",
    "NotALedger",
    "OpenSession",
    "RepairOutcome",
    "SchemaTooNew",
    "SpendGuard",
    "UnknownAccount",
    "UnknownSession",
    "VerifyResult",
    "default_ledger_path",
    "write_head_to_wandb_summary",
]

"""The ledger head, kept in a W&B run's summary as an anchor outside the ledger's own file."""

from __future__ import annotations

from typing import Any

from welfare_offsets.ledger.chain import Head

SUMMARY_KEY = "ledger/head"


def write_head_to_wandb_summary(run: Any, ledger) -> Head:
    """Write `SEQ:HASH` of the ledger's head into `run.summary` (any object with a dict-like summary,
    such as an active `wandb.Run`); `welfare ledger verify --anchor` checks the ledger against it."""
    head = ledger.head()
    run.summary[SUMMARY_KEY] = str(head)
    return head

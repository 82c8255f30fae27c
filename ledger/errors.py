"""Errors a user can fix. Each message says what was wrong, where, and how to fix it.

The CLI prints any `LedgerError` and exits 2; every write that raises one is rolled back, so the
ledger is unchanged. A failed verification is not an error: `Ledger.verify` returns a result.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Bad input or state that the caller can fix; nothing was written."""


class NotALedger(LedgerError):
    """The file exists but is not a welfare-offsets ledger."""


class SchemaTooNew(LedgerError):
    """The ledger was written by a newer welfare-offsets than this one."""


class UnknownAccount(LedgerError):
    """An account that has never received hours."""


class UnknownSession(LedgerError):
    """A session id with no reservation in the ledger."""


class InsufficientHours(LedgerError):
    """An account cannot cover a reservation or transfer."""


class BrokenLedger(LedgerError):
    """An entry a command reads is not one this ledger writes: it stops there, and verify says more."""

    def __init__(self, seq: int, reason: str):
        super().__init__(
            f"the ledger is broken at entry {seq} ({reason}); the command stopped there: run "
            "`welfare ledger verify` and follow its advice"
        )
        self.seq = seq

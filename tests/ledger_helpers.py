"""Shared pieces of the ledger tests: a ledger in a temp folder, and forked writer processes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ledger import Ledger


def funded_ledger(path: Path, hours: float = 10.0, account: str = "lab") -> Ledger:
    ledger = Ledger.open(path)
    ledger.fund(account, hours)
    return ledger


def fork(child: Callable[[], None]) -> int:
    """Run `child` in a forked process that never returns into pytest; returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

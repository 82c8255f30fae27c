"""Shared pieces of the ledger tests: a ledger in a temp folder, forked writer processes, tampering."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.chain import Head, VerifyResult
from welfare_offsets.ledger.store import _expected_schema


def funded_ledger(path: Path, hours: float = 10.0, account: str = "lab") -> Ledger:
    ledger = Ledger.open(path)
    ledger.fund(account, hours)
    return ledger


def verify(path: Path, anchor: Head | str | None = None) -> VerifyResult:
    with Ledger.open(path, create=False) as ledger:
        return ledger.verify(anchor)


def tamper(path: Path, *statements) -> None:
    """What an attacker with write access does: drop the append-only triggers, edit rows, and put the
    triggers back as they were, so the schema check has nothing to see."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("DROP TRIGGER entries_no_delete")
    for statement in statements:
        db.execute(*statement) if isinstance(statement, tuple) else db.execute(statement)
    for (kind, _), sql in _expected_schema()[0].items():
        if kind == "trigger":
            db.execute(sql)
    db.close()


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


def run_at_once(count: int, work: Callable[[int], None]) -> None:
    """Start `count` forked processes at the same instant, each running work(index); each must exit 0."""
    go_read, go_write = os.pipe()
    pids = []
    for index in range(count):

        def child(index=index):
            os.read(go_read, 1)
            work(index)

        pids.append(fork(child))
    os.write(go_write, b"x" * count)
    exit_codes = [wait_exit_code(pid) for pid in pids]
    os.close(go_read)
    os.close(go_write)
    assert exit_codes == [0] * count


def killed_session(path: Path, hours: float = 1.0, progress_hours: float | None = None, *, account: str = "lab") -> str:
    """Reserve `hours` in a child process, record progress if given, and die by SIGKILL before settling."""
    read_end, write_end = os.pipe()

    def child():
        ledger = Ledger.open(path)
        session = ledger.reserve(account, hours, device="cpu").payload["session"]
        if progress_hours is not None:
            ledger.note_progress(session, progress_hours)
        os.write(write_end, session.encode())
        os.kill(os.getpid(), signal.SIGKILL)

    pid = fork(child)
    os.close(write_end)
    session = os.read(read_end, 100).decode()
    os.close(read_end)
    assert wait_exit_code(pid) == -signal.SIGKILL
    return session

"""Shared pieces of the ledger tests: a funded ledger, forked writer processes, the database underneath
a ledger (either store, as its owner), and tampering with it or appending forged entries."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.chain import Head, VerifyResult, seal, utc_now
from welfare_offsets.ledger.location import is_server_url
from welfare_offsets.ledger.store import _expected_schema

Location = Path | str  # an SQLite file, or a postgresql:// URL


def funded_ledger(path: Location, hours: float = 10.0, account: str = "lab") -> Ledger:
    ledger = Ledger.open(path)
    ledger.fund(account, hours)
    return ledger


def verify(path: Location, anchor: Head | str | None = None) -> VerifyResult:
    with Ledger.open(path, create=False) as ledger:
        return ledger.verify(anchor)


class _Server:
    """A PostgreSQL ledger's database as its owner, with sqlite3's qmark parameters."""

    def __init__(self, url: str):
        import psycopg

        self._db = psycopg.connect(url, autocommit=True)

    def execute(self, sql: str, params=()):
        return self._db.execute(sql.replace("?", "%s"), params or None)

    def close(self) -> None:
        self._db.close()


def connect(location: Location):
    """The database underneath a ledger, to read or write it behind the ledger's back (`execute`, `close`)."""
    return _Server(location) if is_server_url(location) else sqlite3.connect(location, isolation_level=None)


def tamper(location: Location, *statements) -> None:
    """What an attacker with the owner's rights does: take the append-only triggers out of the way, edit
    rows, and put the triggers back as they were, so the schema check has nothing to see."""
    db = connect(location)
    if is_server_url(location):
        db.execute("ALTER TABLE entries DISABLE TRIGGER USER")
    else:
        db.execute("DROP TRIGGER entries_no_update")
        db.execute("DROP TRIGGER entries_no_delete")
    for statement in statements:
        db.execute(*statement) if isinstance(statement, tuple) else db.execute(statement)
    if is_server_url(location):
        db.execute("ALTER TABLE entries ENABLE TRIGGER USER")
    else:
        for (kind, _), sql in _expected_schema()[0].items():
            if kind == "trigger":
                db.execute(sql)
    db.close()


def forge(location: Location, kind, payload, *, content: str | None = None, time: str | None = None) -> int:
    """Append an entry through the database, chained and hashed correctly (INSERT is not blocked by the
    append-only triggers), at `time` (default: now); `content` replaces the body's
    `{"kind":...,"payload":{...}` text as is. Returns its seq."""
    db = connect(location)
    seq, prev = db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    body, hash_ = seal(seq + 1, time or utc_now(), kind, payload, prev)
    if content is not None:
        body = content + body[body.rindex(',"prev_hash":"') :]
        hash_ = hashlib.sha256(body.encode()).hexdigest()
    db.execute("INSERT INTO entries (seq, body, hash) VALUES (?, ?, ?)", (seq + 1, body, hash_))
    db.close()
    return seq + 1


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


def killed_session(
    path: Location, hours: float = 1.0, progress_hours: float | None = None, *, account: str = "lab"
) -> str:
    """Reserve `hours` in a child process, record progress if given, and die by SIGKILL before settling;
    returns once the session looks abandoned (a server frees a dead client's locks a moment later)."""
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
    with Ledger.open(path, create=False) as ledger:
        deadline = time.monotonic() + 10
        while session not in {s.session for s in ledger.abandoned_sessions()}:
            assert time.monotonic() < deadline, f"session {session} still looks alive after its process died"
            time.sleep(0.01)
    return session


# A well-chained reservation missing its session id: a malformed entry for read commands to name.
RESERVE_WITHOUT_SESSION = {
    "account": "lab",
    "device": "cpu",
    "processes": 1,
    "purpose": "",
    "resumes": None,
    "wandb_run": None,
    "postings": {"lab": -1, "@reserved/s2": 1},
}

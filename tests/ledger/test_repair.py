"""`repair` is bounded, total and safe to run concurrently (known answers): it never charges a dead
session more than it reserved, no progress file makes it raise, several repairs and session starts at
once settle each dead session exactly once, it cleans up files no live process needs, and it refuses a
broken ledger."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger, killed_session, run_at_once, tamper
from welfare_offsets.ledger import BudgetSession, Ledger, LedgerError
from welfare_offsets.ledger.files import STALE_AFTER_S
from welfare_offsets.ledger.location import check_not_ledger, is_server_url
from welfare_offsets.ledger.sessions import MAX_PROGRESS_BYTES

RESERVED = 1_000_000  # micro-hours: the one hour each dead session reserved


def sessions_folder(path: Path) -> Path:
    return path.with_name(path.name + ".sessions")


def session_files(location) -> list[Path]:
    """What the ledger keeps beside itself for its sessions (nothing, for a ledger on a server)."""
    return [] if is_server_url(location) else list(sessions_folder(location).iterdir())


def progress_file(path: Path, session: str) -> Path:
    return sessions_folder(path) / f"{session}.progress.json"


def abandoned(path: Path) -> str:
    """A session whose process let go of it without settling (closing drops its lock, as dying does)."""
    ledger = Ledger.open(path)
    session = ledger.reserve("lab", 1.0, device="cpu").payload["session"]
    ledger.close()
    return session


def settlement_of(path: Path, session: str) -> dict:
    with Ledger.open(path, create=False) as ledger:
        [settle] = ledger.entries(kind="settle", session=session)
    return settle.payload


def test_progress_above_the_reservation_charges_the_reservation_and_says_so(tmp_path):
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path, hours=10.0).close()
    session = abandoned(path)
    progress_file(path, session).write_text(
        f'{{"session": "{session}", "spent_hours": 500, "energy_kwh": null, "updated_at": "now"}}'
    )
    with Ledger.open(path) as ledger:
        [outcome] = ledger.repair()
        assert outcome.settlement.payload["postings"] == {
            f"@reserved/{session}": -RESERVED,
            f"@spent/{session}": RESERVED,
            "lab": 0,
        }
        assert "claims 500 h, more than the 1 h reserved" in outcome.settlement.payload["basis"]
        assert "whole reservation charged" in outcome.settlement.payload["basis"]
        assert ledger.balance("lab").available_hours == 9.0
        assert ledger.verify().ok


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


BAD_PROGRESS = {
    "negative": (b'{"session": "S", "spent_hours": -3, "updated_at": "t"}', "not a finite number >= 0"),
    "nan": (b'{"session": "S", "spent_hours": NaN, "updated_at": "t"}', "not a finite number >= 0"),
    "infinite": (b'{"session": "S", "spent_hours": 1e999, "updated_at": "t"}', "not a finite number >= 0"),
    "huge integer": (
        b'{"session": "S", "spent_hours": 1' + b"0" * 400 + b', "updated_at": "t"}',
        "not a finite number >= 0",
    ),
    "text": (b'{"session": "S", "spent_hours": "0.1", "updated_at": "t"}', "not a finite number >= 0"),
    "bool": (b'{"session": "S", "spent_hours": true, "updated_at": "t"}', "not a finite number >= 0"),
    "bad energy": (b'{"session": "S", "spent_hours": 0.1, "energy_kwh": -1, "updated_at": "t"}', "energy_kwh"),
    "no time": (b'{"session": "S", "spent_hours": 0.1}', "updated_at"),
    "time not UTF-8": (b'{"session": "S", "spent_hours": 0.1, "updated_at": "\\udce9"}', "updated_at"),
    "missing": (b'{"session": "S"}', "not a finite number >= 0"),
    "other session": (b'{"session": "other", "spent_hours": 0.1, "updated_at": "t"}', "not this session"),
    "a list": (b"[0.1]", "not this session"),
    "truncated": (b'{"session": "S", "spent', "not JSON"),
    "binary": (b"\xff\xfe\x00garbage", "not JSON"),
    "deeply nested": (b"[" * 50_000, "not JSON"),
    "empty": (b"", "not JSON"),
    "huge": (b" " * (MAX_PROGRESS_BYTES + 1), "implausibly large"),
    "directory": (os.mkdir, "not a regular file"),
    "fifo": (_make_fifo, "not a regular file"),
    "symlink": (lambda path: path.symlink_to("/etc/hostname"), "cannot be opened"),
}


@pytest.mark.parametrize("kind", BAD_PROGRESS)
def test_an_unbelievable_progress_file_charges_the_reservation_and_the_next_session_starts(tmp_path, kind):
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path, hours=10.0).close()
    session = abandoned(path)
    content, reason = BAD_PROGRESS[kind]
    target = progress_file(path, session)
    if isinstance(content, bytes):
        target.write_bytes(content.replace(b'"S"', f'"{session}"'.encode()))
    else:
        content(target)
    with Ledger.open(path) as ledger:
        with BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu"):  # runs repair first
            pass
        settle = settlement_of(path, session)
        assert settle["postings"][f"@spent/{session}"] == RESERVED
        assert reason in settle["basis"] and "whole reservation charged" in settle["basis"]
        assert settle["energy_kwh"] is None
        assert ledger.open_sessions() == [] and ledger.verify().ok


def test_a_session_running_through_a_symlink_is_left_open_by_repair_through_the_real_path(tmp_path):
    """Its lock is beside the ledger's real file, whichever path reached the ledger."""
    real = tmp_path / "ledger.sqlite"
    funded_ledger(real).close()
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "l.sqlite"
    link.symlink_to(real)
    with Ledger.open(link) as runner:
        session = runner.reserve("lab", 1.0).payload["session"]
        assert [path.name for path in session_files(real)] == [f"{session}.lock"]
        with Ledger.open(real) as auditor:
            assert [(outcome.session, outcome.settlement) for outcome in auditor.repair()] == [(session, None)]
        runner.settle(session, 0.25)
    with Ledger.open(real) as ledger:
        assert ledger.balance("lab").available_hours == 9.75 and ledger.verify().ok
    assert not (tmp_path / "links" / "l.sqlite.sessions").exists()
    with pytest.raises(LedgerError, match="is a ledger file"):  # where its locks are is no output path
        check_not_ledger(sessions_folder(real) / "out.json", link)


def test_a_believable_progress_file_is_charged_as_recorded(location):
    funded_ledger(location, hours=10.0).close()
    session = killed_session(location, progress_hours=0.25)
    with Ledger.open(location) as ledger:
        [outcome] = ledger.repair()
    assert outcome.by_this_repair and outcome.settlement.payload["postings"][f"@spent/{session}"] == 250_000


def test_note_progress_refuses_values_repair_would_not_believe_and_sessions_it_does_not_hold(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = funded_ledger(path)
    session = ledger.reserve("lab", 1.0).payload["session"]
    for spent, energy in ((-1.0, None), (float("nan"), None), (0.1, -2.0), (0.1, float("inf"))):
        with pytest.raises(LedgerError):
            ledger.note_progress(session, spent, energy)
    with Ledger.open(path) as other, pytest.raises(LedgerError, match="not held by this process"):
        other.note_progress(session, 0.1)
    assert not progress_file(path, session).exists()
    ledger.note_progress(session, 0.1, 0.5)
    assert progress_file(path, session).exists()


def test_a_session_another_repair_settled_after_this_one_listed_it_is_skipped(location, monkeypatch):
    funded_ledger(location).close()
    session = abandoned(location)
    slow = Ledger.open(location)
    listed = slow.open_sessions()  # this repair lists the session, then another process settles it
    monkeypatch.setattr(slow, "open_sessions", lambda: listed)
    with Ledger.open(location) as fast:
        [first] = fast.repair()
    [second] = slow.repair()
    assert first.by_this_repair and first.settlement is not None
    assert not second.by_this_repair and second.settlement == first.settlement
    assert len(slow.entries(kind="settle", session=session)) == 1
    assert session_files(location) == []
    slow.close()


def test_repairs_and_session_starts_in_8_processes_at_once_settle_each_dead_session_once(location):
    funded_ledger(location, hours=100.0).close()
    dead = [killed_session(location, progress_hours=0.1 * k) for k in range(6)]

    def repair_or_start(index: int) -> None:
        with Ledger.open(location) as ledger:
            if index % 2:
                ledger.repair()
            else:
                with BudgetSession.start(ledger, account="lab", budget_hours=0.5, device="cpu"):
                    pass

    run_at_once(8, repair_or_start)  # every process exits 0
    with Ledger.open(location, create=False) as ledger:
        assert ledger.verify().ok and ledger.open_sessions() == []
        for k, session in enumerate(dead):
            [settle] = ledger.entries(kind="settle", session=session)
            assert settle.payload["postings"][f"@spent/{session}"] == round(0.1 * k * 1e6)
        assert len(ledger.entries(kind="settle")) == 6 + 4
    assert session_files(location) == []


def _age(path: Path) -> None:
    old = time.time() - 2 * STALE_AFTER_S
    os.utime(path, (old, old), follow_symlinks=False)


def test_repair_removes_files_no_live_process_needs_and_keeps_the_others(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = funded_ledger(path, hours=10.0)
    folder = sessions_folder(path)
    settled = ledger.reserve("lab", 1.0).payload["session"]
    ledger.settle(settled, 0.5)
    # killed after its settlement committed, before it removed its files
    (folder / f"{settled}.lock").touch()
    (folder / f"{settled}.progress.json").write_text("{}")
    never_reserved = folder / "killed-before-reserving.lock"  # killed between taking its lock and reserving
    never_reserved.touch()
    _age(never_reserved)
    dead_staging = folder / ".x.progress.json.4242.tmp"  # killed while writing progress
    dead_staging.write_text("{")
    _age(dead_staging)
    young_lock, young_staging = folder / "about-to-reserve.lock", folder / ".y.progress.json.4343.tmp"
    young_lock.touch()
    young_staging.touch()
    running = ledger.reserve("lab", 1.0).payload["session"]
    ledger.note_progress(running, 0.1)
    _age(folder / f"{running}.lock")  # a long run: old, but reserved and alive
    killed = killed_session(path, progress_hours=0.2)
    killed_creating = [tmp_path / f".ledger.sqlite.4444.0123abcd.new{suffix}" for suffix in ("", "-wal", "-shm")]
    for leftover in killed_creating:  # a process killed while creating the ledger
        leftover.touch()
        _age(leftover)
    creating_now = tmp_path / ".ledger.sqlite.4545.0123abcd.new"
    creating_now.touch()
    someone_elses = tmp_path / ".ledger.sqlite.notes"
    someone_elses.touch()
    _age(someone_elses)

    with Ledger.open(path) as auditor:
        outcomes = {outcome.session: outcome for outcome in auditor.repair()}
    assert outcomes[running].settlement is None and outcomes[killed].by_this_repair
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [young_lock.name, young_staging.name, f"{running}.lock", f"{running}.progress.json"]
    )
    assert not any(leftover.exists() for leftover in killed_creating)
    assert creating_now.exists() and someone_elses.exists()
    ledger.settle(running, 0.1)
    assert sorted(p.name for p in folder.iterdir()) == sorted([young_lock.name, young_staging.name])
    ledger.close()


def test_repair_refuses_a_broken_ledger_and_settles_nothing(location):
    funded_ledger(location).close()
    session = abandoned(location)
    with Ledger.open(location) as ledger:
        ledger.fund("lab", 1.0)
    tamper(location, "UPDATE entries SET body = replace(body, '1000000', '9000000') WHERE seq = 3")
    with Ledger.open(location) as ledger:
        with pytest.raises(LedgerError, match="broken at seq 3.*settled nothing.*backup"):
            ledger.repair()
        assert [entry.kind for entry in ledger.entries()] == ["fund", "reserve", "fund"]
        assert [s.session for s in ledger.open_sessions()] == [session]

"""Crash safety and concurrency (known answers): kill -9 at random instants never loses an
acknowledged entry or leaves a partial one, a backup made after a kill holds every acknowledged entry,
and writers in several processes keep one linear chain.

Only invariants are asserted: how many kills happen to land mid-write depends on the machine's load,
so it is reported (printed, and recorded as a junit property), never required."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.ledger.helpers import fork, funded_ledger, run_at_once, wait_exit_code
from welfare_offsets.ledger import BudgetSession, InsufficientHours, Ledger
from welfare_offsets.ledger.chain import utc_now
from welfare_offsets.ledger.cli import main

BATCH = 5


def _append_until_killed(path, ack_fd: int, trial: int) -> None:
    """Append single entries and batches of BATCH forever, acknowledging each after its commit."""
    ledger = Ledger.open(path)
    for round_ in range(10**9):
        batched = round_ % 3 == 2
        with ledger.batch():
            entries = [ledger.fund("lab", 0.001, note=f"t{trial}-r{round_}") for _ in range(BATCH if batched else 1)]
        os.write(ack_fd, "".join(f"{entry.seq} {entry.hash}\n" for entry in entries).encode())


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


@pytest.mark.slow  # writers killed at random instants, many times over
def test_kill_9_at_random_instants_loses_nothing_acknowledged_and_leaves_nothing_partial(tmp_path, record_property):
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path).close()
    instants = random.Random(20250601)
    acknowledged_total = killed_after_a_commit = 0
    for trial in range(200):
        started = utc_now()
        read_end, write_end = os.pipe()
        pid = fork(lambda write_end=write_end, trial=trial: _append_until_killed(path, write_end, trial))
        os.close(write_end)
        time.sleep(instants.uniform(0.0, 0.012))
        os.kill(pid, signal.SIGKILL)
        assert wait_exit_code(pid) == -signal.SIGKILL
        acknowledged = [line.split() for line in _read_all(read_end).decode().splitlines()]

        with Ledger.open(path, create=False) as ledger:
            result = ledger.verify()
            assert result.ok, f"trial {trial}: {result}"
            written = {entry.seq: entry for entry in ledger.entries(kind="fund") if entry.time >= started}
        for seq, hash_ in acknowledged:
            assert written[int(seq)].hash == hash_, f"trial {trial}: acknowledged entry {seq} lost"
        rounds: dict[str, int] = {}
        for entry in written.values():
            rounds[entry.payload["note"]] = rounds.get(entry.payload["note"], 0) + 1
        for note, count in rounds.items():  # a batch is all there or not there at all
            batched = int(note.rsplit("r", 1)[1]) % 3 == 2
            assert count == (BATCH if batched else 1), f"trial {trial}: {note} has {count} entries"
        acknowledged_total += len(acknowledged)
        killed_after_a_commit += bool(written)
    record_property("kills_after_a_commit", killed_after_a_commit)
    record_property("acknowledged_entries", acknowledged_total)
    print(
        f"kill -9: {killed_after_a_commit} of 200 kills landed after the writer had committed "
        f"({acknowledged_total} acknowledged entries checked)"
    )


def test_8_processes_appending_100_entries_each_make_exactly_800_in_one_chain(location):
    funded_ledger(location).close()

    def append_100(writer: int) -> None:
        with Ledger.open(location) as ledger:
            for index in range(100):
                ledger.fund("lab", 0.001, note=f"w{writer}-{index}")

    run_at_once(8, append_100)
    with Ledger.open(location, create=False) as ledger:
        assert ledger.verify().ok
        new = ledger.entries()[1:]
    assert len(new) == 800
    assert [entry.seq for entry in new] == list(range(2, 802))
    assert sorted(entry.payload["note"] for entry in new) == sorted(f"w{w}-{i}" for w in range(8) for i in range(100))


def test_8_processes_creating_the_same_new_ledger_get_one_ledger(tmp_path):
    path = tmp_path / "new" / "ledger.sqlite"
    run_at_once(8, lambda writer: Ledger.open(path).fund("lab", 1.0, note=f"w{writer}"))
    with Ledger.open(path, create=False) as ledger:
        assert ledger.verify().ok and len(ledger.entries()) == 8
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".new")] == []  # no staging files left


def test_concurrent_reservations_never_overdraw(location):
    funded_ledger(location, hours=5.0).close()

    def reserve_one_hour(writer: int) -> None:
        ledger = Ledger.open(location)
        try:
            session = ledger.reserve("lab", 1.0).payload["session"]
            ledger.settle(session, 1.0)
        except InsufficientHours:
            pass

    run_at_once(8, reserve_one_hour)
    with Ledger.open(location, create=False) as ledger:
        assert len(ledger.entries(kind="reserve")) == 5
        assert ledger.balance("lab").available_hours == 0.0
        assert ledger.verify().ok


def test_a_backup_after_a_writer_is_killed_holds_every_acknowledged_entry(tmp_path):
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path).close()
    read_end, write_end = os.pipe()

    def write_then_die():
        ledger = Ledger.open(path)
        for index in range(30):
            entry = ledger.fund("lab", 0.001, note=f"w{index}")
            os.write(write_end, f"{entry.seq} {entry.hash}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)  # no close, so no checkpoint: the entries live in the -wal

    pid = fork(write_then_die)
    os.close(write_end)
    assert wait_exit_code(pid) == -signal.SIGKILL
    acknowledged = [tuple(line.split()) for line in _read_all(read_end).decode().splitlines()]
    assert len(acknowledged) == 30 and Path(f"{path}-wal").stat().st_size > 0
    main_file_only = tmp_path / "cp" / "ledger.sqlite"
    main_file_only.parent.mkdir()
    shutil.copyfile(path, main_file_only)  # what `cp ledger.sqlite` copies
    with Ledger.open(main_file_only, create=False) as copied:
        assert len(copied.entries()) < 31  # the acknowledged entries in the -wal are missing

    backup = tmp_path / "backup" / "ledger.sqlite"
    backup.parent.mkdir()
    assert main(["--ledger", str(path), "backup", str(backup)]) == 0
    assert sorted(p.name for p in backup.parent.iterdir()) == ["ledger.sqlite"]  # one self-contained file
    assert main(["--ledger", str(backup), "verify"]) == 0
    moved = tmp_path / "moved.sqlite"
    shutil.copyfile(backup, moved)  # the backup alone is the whole ledger
    with Ledger.open(moved, create=False) as restored:
        assert restored.verify().ok
        held = {(str(entry.seq), entry.hash) for entry in restored.entries()}
    assert set(acknowledged) <= held and len(held) == 31


def _sessions_until_killed(path) -> None:
    """Start, meter, note progress and settle budget sessions forever."""
    ledger = Ledger.open(path)
    while True:
        with BudgetSession.start(
            ledger, account="lab", budget_hours=0.01, device="cpu", progress_interval_s=0.0
        ) as session:
            session.step_done()  # writes progress at every step


@pytest.mark.slow  # sessions killed at random instants, many times over
def test_sessions_killed_at_random_instants_are_repaired_and_leave_no_files_of_reserved_sessions(tmp_path):
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path, hours=100.0).close()
    instants = random.Random(20250602)
    for _ in range(60):
        pid = fork(lambda: _sessions_until_killed(path))
        time.sleep(instants.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        assert wait_exit_code(pid) == -signal.SIGKILL
        with Ledger.open(path, create=False) as ledger:
            ledger.repair()
            assert ledger.open_sessions() == [] and ledger.verify().ok
            reserved = {entry.payload["session"] for entry in ledger.entries(kind="reserve")}
        folder = path.with_name(path.name + ".sessions")
        left = [p.name for p in folder.iterdir()] if folder.exists() else []
        # only files of a session killed before it reserved, or a progress file being written, may stay
        # (until stale): a live writer could own them
        assert not [name for name in left if name.split(".")[0] in reserved], left

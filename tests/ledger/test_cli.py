"""`welfare ledger ...` as a contract: commands, output formats, exit codes, and a ledger left
byte-for-byte unchanged by bad input."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ledger.helpers import RESERVE_WITHOUT_SESSION, forge, tamper
from welfare_offsets.ledger import Ledger, LedgerError
from welfare_offsets.ledger.cli import main
from welfare_offsets.ledger.location import check_not_ledger, is_ledger_file


@pytest.fixture
def ledger_path(tmp_path):
    path = tmp_path / "ledger.sqlite"
    assert main(["--ledger", str(path), "fund", "--account", "lab", "--hours", "10"]) == 0
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(path):
    """Everything on disk that makes up the ledger."""
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.is_file() and p.name.startswith(path.name)}


def test_ledger_option_goes_before_or_after_the_command(ledger_path, capsys):
    assert run(capsys, "--ledger", str(ledger_path), "head")[1] == run(capsys, "head", "--ledger", str(ledger_path))[1]


def test_ledger_path_from_the_environment(ledger_path, capsys, monkeypatch):
    monkeypatch.setenv("WELFARE_LEDGER", str(ledger_path))
    code, out, _ = run(capsys, "head")
    assert code == 0 and out.startswith("1:")


def test_fund_balance_show_head_verify(ledger_path, capsys):
    path = str(ledger_path)
    code, out, _ = run(capsys, "fund", "--ledger", path, "--account", "lab", "--hours", "2.5", "--note", "grant")
    assert code == 0 and "available 12.5 h" in out
    code, out, _ = run(capsys, "balance", "--ledger", path)
    assert code == 0 and "lab" in out and "12.5" in out
    code, out, _ = run(capsys, "show", "--ledger", path, "--kind", "fund")
    assert code == 0 and len(out.splitlines()) == 2 and '"note":"grant"' in out
    code, head, _ = run(capsys, "head", "--ledger", path)
    seq, hash_ = head.strip().split(":")
    assert code == 0 and seq == "2" and len(hash_) == 64
    code, out, _ = run(capsys, "verify", "--ledger", path, "--anchor", head.strip())
    assert code == 0 and "intact: 2 entries" in out


def test_export_jsonl_has_one_entry_per_line_and_csv_a_header(ledger_path, capsys):
    with Ledger.open(ledger_path) as ledger:
        session = ledger.reserve("lab", 1.0).payload["session"]
        ledger.settle(session, 0.5)
    code, out, _ = run(capsys, "export", "--ledger", str(ledger_path), "--format", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["seq"] for line in lines] == [1, 2, 3]
    assert all({"seq", "kind", "hash", "prev_hash", "time", "payload"} <= set(line) for line in lines)
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    code, out, _ = run(capsys, "export", "--ledger", str(ledger_path), "--format", "csv", "--session", session)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [row["kind"] for row in rows] == ["reserve", "settle"]


def test_report_prints_tables_and_writes_the_png(ledger_path, capsys, tmp_path):
    with Ledger.open(ledger_path) as ledger:
        session = ledger.reserve("lab", 1.0, purpose="offset").payload["session"]
        ledger.settle(session, 0.5)
        ledger.record_measurement(session, "SR", wellbeing_before=-0.5, wellbeing_after=0.0, recovered=0.5)
    png = tmp_path / "plot.png"
    code, out, _ = run(capsys, "report", "--ledger", str(ledger_path), "--png", str(png))
    assert code == 0 and session in out and "-0.5 -> 0" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_correct_and_repair(ledger_path, capsys):
    code, out, _ = run(capsys, "correct", "--ledger", str(ledger_path), "--seq", "1", "--reason", "wrong grant")
    assert code == 0 and "entry 2 corrects entry 1" in out
    assert run(capsys, "repair", "--ledger", str(ledger_path))[1] == "no open sessions\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fund", "--account", "lab", "--hours", "-3"], "more than zero"),
        (["fund", "--account", "lab", "--hours", "nan"], "finite number"),
        (["fund", "--account", "lab", "--hours", "lots"], "finite number"),
        (["fund", "--account", "bad name", "--hours", "1"], "not a valid name"),
        (["transfer", "--from", "ghost", "--to", "lab", "--hours", "1"], "'ghost' has never been funded"),
        (["balance", "--account", "ghost"], "'ghost' has never been funded"),
        (["transfer", "--from", "lab", "--to", "team", "--hours", "11"], "less than the 11 asked for"),
        (["correct", "--seq", "99", "--reason", "x"], "no entry 99"),
        (["verify", "--anchor", "1:zz"], "SEQ:HASH"),
        (["show", "--since", "yesterday"], "not an ISO date"),
        (
            ["fund", "--account", "lab", "--hours", "1", "--note", "caf\udce9"],
            "note 'caf\\udce9' holds text a ledger cannot store",
        ),
        (["correct", "--seq", "1", "--reason", "caf\udce9"], "reason 'caf\\udce9' holds text a ledger cannot store"),
        (["correct", "--seq", "99999999999999999999", "--reason", "x"], "no entry 99999999999999999999"),
        (["show", "--since", "0001-01-01T00:00+01:00"], "outside the years 1 to 9999"),
        (["export", "--until", "9999-12-31T23:59-01:00"], "outside the years 1 to 9999"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message_and_the_ledger_unchanged(ledger_path, capsys, argv, message):
    before = snapshot(ledger_path)
    code, _, err = run(capsys, *argv, "--ledger", str(ledger_path))
    assert code == 2 and message in err
    assert snapshot(ledger_path) == before


def test_times_before_the_year_1000_filter_as_times(ledger_path, capsys):
    """--since 0999-01-01 is before every entry (written now), not after: years are compared padded to 4 digits."""
    assert len(run(capsys, "show", "--since", "0999-01-01", "--ledger", str(ledger_path))[1].splitlines()) == 1
    assert run(capsys, "show", "--until", "0999-01-01", "--ledger", str(ledger_path))[1] == ""


@pytest.mark.parametrize(
    "argv",
    [["balance"], ["show"], ["report", "--png", "PNG"], ["export"], ["correct", "--seq", "2", "--reason", "x"]],
)
def test_a_command_reading_a_malformed_entry_exits_2_naming_it(ledger_path, capsys, tmp_path, argv):
    """A well-chained entry that verify refuses (here a reservation without its session) stops any command
    that reads it with one line saying where, never with a traceback; nothing is printed or written."""
    forge(ledger_path, "reserve", RESERVE_WITHOUT_SESSION)
    argv = [str(tmp_path / "plot.png") if arg == "PNG" else arg for arg in argv]
    before = snapshot(ledger_path)
    code, out, err = run(capsys, *argv, "--ledger", str(ledger_path))
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert err.startswith(
        "welfare ledger: error: the ledger is broken at entry 2 (its reserve payload lacks ['session']"
    )
    assert "run `welfare ledger verify`" in err
    assert snapshot(ledger_path) == before and not (tmp_path / "plot.png").exists()
    assert run(capsys, "verify", "--ledger", str(ledger_path))[0] == 1


def test_head_of_a_ledger_with_a_malformed_entry_prints_the_head_and_notes_the_break(ledger_path, capsys):
    """head reads no entry's content: it prints the head, and only the check for abandoned sessions after
    it, which reads the reservations, notes where the ledger is broken."""
    forge(ledger_path, "reserve", RESERVE_WITHOUT_SESSION)
    code, out, err = run(capsys, "head", "--ledger", str(ledger_path))
    assert code == 0 and out.startswith("2:") and len(out.split(":")[1].strip()) == 64
    assert "could not check for sessions" in err and "broken at entry 2" in err


def test_a_file_that_is_not_a_ledger_exits_2_untouched(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    for argv in (["fund", "--account", "lab", "--hours", "1"], ["verify"], ["export"]):
        code, _, err = run(capsys, *argv, "--ledger", str(notes))
        assert code == 2 and "not a welfare-offsets ledger" in err
    assert notes.read_text() == "hello\n"


def test_a_newer_schema_version_exits_2_untouched(ledger_path, capsys):
    db = sqlite3.connect(ledger_path)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = snapshot(ledger_path)
    code, _, err = run(capsys, "fund", "--account", "lab", "--hours", "1", "--ledger", str(ledger_path))
    assert code == 2 and "schema version 2" in err and "upgrade welfare-offsets" in err
    assert snapshot(ledger_path) == before


def test_reading_commands_do_not_create_a_ledger(tmp_path, capsys):
    code, _, err = run(capsys, "verify", "--ledger", str(tmp_path / "typo.sqlite"))
    assert code == 2 and "no ledger at" in err and not (tmp_path / "typo.sqlite").exists()


def test_verify_of_a_tampered_ledger_exits_1_with_the_first_bad_seq(ledger_path, capsys):
    with Ledger.open(ledger_path) as ledger:
        for _ in range(4):
            ledger.fund("lab", 1.0)
    tamper(ledger_path, "UPDATE entries SET body = replace(body, '1000000', '9000000') WHERE seq = 3")
    code, _, err = run(capsys, "verify", "--ledger", str(ledger_path))
    assert code == 1 and "BROKEN at seq 3" in err and "edited" in err


def test_abandoned_sessions_are_reported_until_repaired(ledger_path, capsys):
    ledger = Ledger.open(ledger_path)
    session = ledger.reserve("lab", 1.0).payload["session"]
    ledger.close()  # the session's process let go without settling
    _, _, err = run(capsys, "balance", "--ledger", str(ledger_path))
    assert session in err and "welfare ledger repair" in err
    code, out, _ = run(capsys, "repair", "--ledger", str(ledger_path))
    assert code == 0 and f"{session}: settled by entry 3" in out
    assert run(capsys, "balance", "--ledger", str(ledger_path))[2] == ""


def test_the_welfare_console_script(ledger_path):
    script = Path(sys.executable).with_name("welfare")
    assert script.exists(), "install the project (pip install -e .) to get the `welfare` command"

    def welfare(*argv):
        command = [str(script), "ledger", *argv, "--ledger", str(ledger_path)]
        return subprocess.run(command, capture_output=True, text=True)

    head = welfare("head")
    assert head.returncode == 0 and head.stdout.startswith("1:")
    assert welfare("verify", "--anchor", head.stdout.strip()).returncode == 0
    bad = welfare("fund", "--account", "lab", "--hours", "-1")
    assert bad.returncode == 2 and "more than zero" in bad.stderr


# ---- a ledger is never an output ------------------------------------------------------------------


def _spellings(ledger_path):
    """Paths that name the ledger or a part of it, each spelled differently."""
    folder = ledger_path.parent
    (folder / "link").symlink_to(ledger_path.name)
    os.link(ledger_path, folder / "hardlink")
    (folder / "sub").mkdir()
    return {
        "ledger": str(ledger_path),
        "wal": f"{ledger_path}-wal",
        "shm": f"{ledger_path}-shm",
        "symlink": str(folder / "link"),
        "symlinked wal": str(folder / "link") + "-wal",
        "hard link": str(folder / "hardlink"),
        "other spelling": str(folder / "sub" / ".." / ledger_path.name),
        "sessions folder": f"{ledger_path}.sessions",
        "in the sessions folder": f"{ledger_path}.sessions/x.lock",
    }


SPELLINGS = [
    "ledger",
    "wal",
    "shm",
    "symlink",
    "symlinked wal",
    "hard link",
    "other spelling",
    "sessions folder",
    "in the sessions folder",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("command", [["export", "--output"], ["report", "--png"], ["backup"]])
def test_export_report_and_backup_never_write_over_the_ledger(ledger_path, capsys, command, spelling):
    target = _spellings(ledger_path)[spelling]
    before = snapshot(ledger_path)
    code, _, err = run(capsys, *command, target, "--ledger", str(ledger_path))
    assert code == 2 and "is a ledger file" in err and "nothing was written" in err
    assert snapshot(ledger_path) == before
    assert run(capsys, "verify", "--ledger", str(ledger_path))[0] == 0


def test_the_wal_of_a_ledger_in_use_is_never_an_output(ledger_path, capsys):
    writer = Ledger.open(ledger_path)
    for _ in range(5):
        writer.fund("lab", 1.0)  # committed, still only in the -wal while the writer has it open
    wal = Path(f"{ledger_path}-wal")
    parts = {name: (ledger_path.parent / name).read_bytes() for name in (ledger_path.name, wal.name)}
    code, _, err = run(capsys, "export", "--output", str(wal), "--ledger", str(ledger_path))
    assert code == 2 and "is a ledger file" in err
    assert {name: (ledger_path.parent / name).read_bytes() for name in parts} == parts
    writer.close()
    with Ledger.open(ledger_path, create=False) as ledger:
        assert ledger.verify().ok and len(ledger.entries()) == 6


def test_any_welfare_ledger_is_recognised_and_other_files_are_not(ledger_path, tmp_path):
    other = tmp_path / "elsewhere" / "other.sqlite"
    other.parent.mkdir()
    Ledger.open(other).close()
    assert is_ledger_file(other, ledger_path) and is_ledger_file(f"{other}-wal", ledger_path)
    assert is_ledger_file(f"{other}.sessions/results", ledger_path)
    plain = sqlite3.connect(tmp_path / "plain.sqlite")
    plain.execute("CREATE TABLE t (x)")
    plain.close()
    for path in (tmp_path / "plain.sqlite", tmp_path / "out.jsonl", tmp_path / "run" / "results.json"):
        assert not is_ledger_file(path, ledger_path)
        check_not_ledger(path, ledger_path)
    with pytest.raises(LedgerError, match="output folder .* is a ledger file"):
        check_not_ledger(ledger_path, what="output folder")  # without `ledger=`: known by its content
    os.mkfifo(tmp_path / "fifo")
    assert not is_ledger_file(tmp_path / "fifo", ledger_path)  # looked at without blocking


# ---- backup ----------------------------------------------------------------------------------------


def test_backup_writes_a_copy_that_verifies_and_holds_every_entry(ledger_path, capsys, tmp_path):
    with Ledger.open(ledger_path) as ledger:
        session = ledger.reserve("lab", 1.0).payload["session"]
        ledger.settle(session, 0.5)
    copy = tmp_path / "backups" / "ledger-copy.sqlite"
    copy.parent.mkdir()
    code, out, _ = run(capsys, "backup", str(copy), "--ledger", str(ledger_path))
    assert code == 0 and "backed up 3 entries" in out
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no staging file, no -wal: one file
    assert run(capsys, "verify", "--ledger", str(copy))[0] == 0
    assert run(capsys, "export", "--ledger", str(copy))[1] == run(capsys, "export", "--ledger", str(ledger_path))[1]


def test_backup_refuses_a_destination_that_exists_or_is_special(ledger_path, capsys, tmp_path):
    existing = tmp_path / "existing.sqlite"
    existing.write_text("keep me")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = {
        existing: "already exists",
        tmp_path / "fifo": "already exists",
        tmp_path / "folder": "already exists",
        tmp_path / "dangling": "already exists",
        tmp_path / "missing" / "copy.sqlite": "does not exist",
    }
    before = snapshot(ledger_path)
    for destination, message in cases.items():
        code, _, err = run(capsys, "backup", str(destination), "--ledger", str(ledger_path))
        assert code == 2 and message in err, destination
    assert existing.read_text() == "keep me" and not (tmp_path / "nowhere").exists()
    assert snapshot(ledger_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".backup")]


def test_export_and_report_refuse_special_outputs_and_never_follow_links(ledger_path, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    (tmp_path / "link").symlink_to(target)
    for name, kind in (("fifo", "special file"), ("folder", "folder"), ("link", "symbolic link")):
        for command in (["export", "--output"], ["report", "--png"]):
            # a FIFO opened for writing blocks until a reader comes: the timeout turns a hang into a failure
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "welfare_offsets.ledger.cli",
                    *command,
                    str(tmp_path / name),
                    "--ledger",
                    str(ledger_path),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2 and kind in done.stderr and "Traceback" not in done.stderr, (name, command)
    assert target.read_text() == "keep me" and (tmp_path / "link").is_symlink()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_export_replaces_a_file_whole_and_report_writes_a_png_without_a_suffix(ledger_path, capsys, tmp_path):
    out, png = tmp_path / "entries.jsonl", tmp_path / "plot"
    out.write_text("an older export\n")
    assert run(capsys, "export", "--output", str(out), "--ledger", str(ledger_path))[0] == 0
    assert [json.loads(line)["kind"] for line in out.read_text().splitlines()] == ["fund"]
    assert run(capsys, "report", "--png", str(png), "--ledger", str(ledger_path))[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ledger.sqlite")) == [
        "entries.jsonl",
        "plot",
    ]


# ---- bad ledger paths and I/O errors -------------------------------------------------------------------


def test_an_empty_ledger_path_is_an_error_not_the_default_ledger(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WELFARE_LEDGER", str(tmp_path / "default.sqlite"))
    code, _, err = run(capsys, "fund", "--ledger", "", "--account", "lab", "--hours", "1")
    assert code == 2 and "--ledger '' is an empty path" in err
    assert not (tmp_path / "default.sqlite").exists()


def test_a_fifo_as_the_ledger_exits_2_at_once(tmp_path):
    fifo = tmp_path / "ledger.sqlite"
    os.mkfifo(fifo)
    for command in (["verify"], ["fund", "--account", "lab", "--hours", "1"]):
        # opening the FIFO would block forever: the timeout turns that into a failure
        done = subprocess.run(
            [sys.executable, "-m", "welfare_offsets.ledger.cli", *command, "--ledger", str(fifo)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2 and "FIFO" in done.stderr and "Traceback" not in done.stderr


def test_ledger_paths_that_cannot_be_a_ledger_exit_2_with_a_clear_message(tmp_path, capsys):
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone.sqlite")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "folder").mkdir()
    cases = {
        "loop": "symbolic links",
        "dangling": "symlink to the missing",
        "a-file/ledger.sqlite": "Not a directory",
        "folder": "is a directory",
    }
    for name, message in cases.items():
        for command in (["verify"], ["fund", "--account", "lab", "--hours", "1"]):
            code, _, err = run(capsys, *command, "--ledger", str(tmp_path / name))
            assert code == 2 and message in err and len(err.splitlines()) == 1, (name, err)
    assert not (tmp_path / "gone.sqlite").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes any file")
def test_an_unreadable_ledger_or_unwritable_folder_exits_2(ledger_path, tmp_path, capsys):
    ledger_path.chmod(0)
    code, _, err = run(capsys, "verify", "--ledger", str(ledger_path))
    assert code == 2 and "not readable" in err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run(capsys, "fund", "--account", "lab", "--hours", "1", "--ledger", str(locked / "l.sqlite"))
    assert code == 2 and "cannot create a ledger" in err


def test_io_errors_during_a_command_exit_2_with_one_line(ledger_path, capsys, monkeypatch, tmp_path):
    code, _, err = run(capsys, "export", "--output", "/dev/full", "--ledger", str(ledger_path))  # a device
    assert code == 2 and "special file" in err and len(err.splitlines()) == 1

    def full_disk(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("welfare_offsets.ledger.files.fsync_path", full_disk)
    out = tmp_path / "x.jsonl"
    code, _, err = run(capsys, "export", "--output", str(out), "--ledger", str(ledger_path))
    assert code == 2 and "No space left on device" in err and len(err.splitlines()) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    monkeypatch.undo()
    missing = tmp_path / "missing" / "x.jsonl"
    code, _, err = run(capsys, "export", "--output", str(missing), "--ledger", str(ledger_path))
    assert code == 2 and "No such file or directory" in err and len(err.splitlines()) == 1

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Ledger, "fund", disk_full)
    before = snapshot(ledger_path)
    code, _, err = run(capsys, "fund", "--account", "lab", "--hours", "1", "--ledger", str(ledger_path))
    assert code == 2 and "database or disk is full" in err and len(err.splitlines()) == 1
    assert snapshot(ledger_path) == before

"""The ledger on PostgreSQL (known answers), beyond what every ledger test checks on both stores: what the
database enforces itself (a writer role that can only insert, triggers that refuse edits and broken
links, a schema edit found by verify), copies between stores with every hash kept, the CLI on a URL,
session liveness through the server, and faults: 16 writer processes at once, writers killed by SIGKILL
mid-transaction, the server crashed (`pg_ctl stop -m immediate`) and restarted mid-run."""

from __future__ import annotations

import io
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.ledger import pg_server
from tests.ledger.conftest import new_schema, started_server
from tests.ledger.helpers import connect, forge, fork, funded_ledger, run_at_once, verify, wait_exit_code
from welfare_offsets.ledger import Ledger, LedgerError, NotALedger, SchemaTooNew, postgres
from welfare_offsets.ledger.chain import seal, utc_now
from welfare_offsets.ledger.cli import main

WRITER_GRANTS = [
    "CREATE ROLE {role} LOGIN",
    "GRANT USAGE ON SCHEMA {schema} TO {role}",
    "GRANT SELECT, INSERT ON {schema}.entries, {schema}.progress TO {role}",
    "GRANT SELECT ON {schema}.meta TO {role}",
]


def schema_of(url: str) -> str:
    return url.rsplit("%3D", 1)[1]


def with_role(url: str, role: str) -> str:
    return url.replace(f"//{pg_server.SUPERUSER}@", f"//{role}@")


def exported(location) -> str:
    out = io.StringIO()
    with Ledger.open(location, create=False) as ledger:
        ledger.export(out, "jsonl")
    return out.getvalue()


# ---- what the database enforces ------------------------------------------------------------------------


def test_a_writer_role_with_insert_and_select_only_writes_the_ledger_and_nothing_else(pg_url):
    schema, role = schema_of(pg_url), f"writer_{schema_of(pg_url)}"
    funded_ledger(pg_url).close()  # the owner creates the ledger
    db = connect(pg_url)
    for grant in WRITER_GRANTS:
        db.execute(grant.format(role=role, schema=schema))
    writer_url = with_role(pg_url, role)
    with Ledger.open(writer_url) as writer:
        session = writer.reserve("lab", 1.0).payload["session"]
        writer.note_progress(session, 0.25)
        writer.settle(session, 0.5)
        assert writer.verify().ok and writer.balance("lab").available_hours == 9.5
    writer_db = connect(writer_url)
    for statement, refusal in [
        ("UPDATE entries SET hash = 'x'", "permission denied"),
        ("DELETE FROM progress", "permission denied"),
        ("INSERT INTO meta VALUES ('k', 'v')", "permission denied"),
        ("DROP TRIGGER entries_chain ON entries", "must be owner"),
    ]:
        with pytest.raises(Exception, match=refusal):
            writer_db.execute(statement)
    # an entry that does not extend the chain is refused by the database, whoever inserts it
    last_seq, last_hash = writer_db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    payload = {"account": "lab", "note": "", "postings": {"@external": -1, "lab": 1}}
    for seq, prev in [(last_seq + 2, last_hash), (last_seq + 1, "0" * 64)]:
        body, hash_ = seal(seq, utc_now(), "fund", payload, prev)
        with pytest.raises(Exception, match="does not extend the chain"):
            writer_db.execute("INSERT INTO entries (seq, body, hash) VALUES (?, ?, ?)", (seq, body, hash_))
    body, _ = seal(last_seq + 1, utc_now(), "fund", payload, last_hash)
    with pytest.raises(Exception, match="does not extend the chain"):
        writer_db.execute("INSERT INTO entries (seq, body, hash) VALUES (?, ?, ?)", (last_seq + 1, body, "0" * 64))
    writer_db.close()
    # the writer may not create a ledger where there is none, and is told who can
    db.execute(f"CREATE SCHEMA empty_{schema}")
    db.execute(f"GRANT USAGE ON SCHEMA empty_{schema} TO {role}")
    db.close()
    with pytest.raises(LedgerError, match="permission denied.*only the database's owner creates them"):
        Ledger.open(with_role(pg_url, role).replace(f"%3D{schema}", f"%3Dempty_{schema}"))
    assert verify(pg_url).ok


SCHEMA_EDITS = {
    "trigger disabled": ("ALTER TABLE entries DISABLE TRIGGER entries_append_only", "(disabled)"),
    "trigger dropped": ("DROP TRIGGER entries_chain ON entries", "its trigger entries_chain is missing"),
    "function replaced": (
        "CREATE OR REPLACE FUNCTION welfare_ledger_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NULL; END $$",
        "its function welfare_ledger_refuse is defined as",
    ),
    "extra trigger": (
        "CREATE TRIGGER sneaky BEFORE INSERT ON entries FOR EACH ROW EXECUTE FUNCTION welfare_ledger_chain()",
        "it has an extra trigger sneaky",
    ),
    "row security": (
        "ALTER TABLE entries ENABLE ROW LEVEL SECURITY",
        "its table entries is defined as 'row security on'",
    ),
    "a rule": ("CREATE RULE hide AS ON INSERT TO progress DO INSTEAD NOTHING", "it has an extra rule hide"),
    "a column": ("ALTER TABLE entries ADD COLUMN kind text", "it has an extra column entries.kind"),
    "meta edited": (
        [
            "ALTER TABLE meta DISABLE TRIGGER USER",
            "UPDATE meta SET value = 'x' WHERE key = 'genesis'",
            "ALTER TABLE meta ENABLE TRIGGER USER",
        ],
        "its meta table holds",
    ),
}


@pytest.mark.parametrize("while_open", [False, True], ids=["before opening", "between two writes"])
@pytest.mark.parametrize("edit", SCHEMA_EDITS)
def test_a_schema_edit_by_the_owner_fails_verify_and_every_write(pg_url, edit, while_open):
    """Also when the edit lands between two writes of one open ledger, whose first write's check passed
    (later writes rerun the full check only when the catalog's fingerprint changed)."""
    statements, reason = SCHEMA_EDITS[edit]
    writer = funded_ledger(pg_url)
    if not while_open:
        writer.close()
    db = connect(pg_url)
    for statement in [statements] if isinstance(statements, str) else statements:
        db.execute(statement)
    db.close()
    with writer if while_open else Ledger.open(pg_url, create=False) as ledger:
        with pytest.raises(LedgerError, match="cannot be written"):
            ledger.fund("lab", 1.0)
        result = ledger.verify()
        assert (result.ok, result.first_bad_seq) == (False, 0) and reason in result.reason, result.reason
        assert len(ledger.entries()) == 1


def test_a_schema_edit_waits_for_a_write_in_flight_to_commit(pg_url):
    """A write holds the entries table from its schema check to its commit: an owner's ALTER TABLE queues
    behind it, so a write is never checked against one schema and committed under another."""
    import psycopg

    with funded_ledger(pg_url) as ledger, ledger.batch():
        ledger.fund("lab", 1.0)
        db = connect(pg_url)
        db.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            db.execute("ALTER TABLE entries DISABLE TRIGGER entries_append_only")
        db.close()
    assert verify(pg_url).ok


def test_what_is_not_a_ledger_or_is_newer_is_refused_and_reading_creates_nothing(pg_server_session):
    empty = new_schema(pg_server_session)
    with pytest.raises(LedgerError, match="no ledger in .*run by the database's owner, creates one"):
        Ledger.open(empty, create=False)
    assert connect(empty).execute("SELECT to_regclass('meta')").fetchone() == (None,)  # nothing created
    for table in ("meta (key text, value text)", "entries (x int)"):
        other = new_schema(pg_server_session)
        connect(other).execute(f"CREATE TABLE {table}")
        with pytest.raises(NotALedger, match="not a welfare-offsets ledger"):
            Ledger.open(other)
    newer = new_schema(pg_server_session)
    Ledger.open(newer).close()
    db = connect(newer)
    db.execute("ALTER TABLE meta DISABLE TRIGGER USER")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaTooNew, match="schema version 99, newer than the 1"):
        Ledger.open(newer)


def test_8_processes_creating_one_ledger_in_an_empty_database_get_one(pg_server_session, monkeypatch):
    url = new_schema(pg_server_session)
    run_at_once(8, lambda writer: Ledger.open(url).fund("lab", 1.0, note=f"w{writer}"))
    with Ledger.open(url, create=False) as ledger:
        assert ledger.verify().ok and len(ledger.entries()) == 8


# ---- moving a ledger between stores -------------------------------------------------------------------


def _a_ledger_of_every_kind(location, results) -> None:
    with funded_ledger(location) as ledger:
        ledger.transfer("lab", "team", 2.0, note="caf\u00e9 \U0001f642")  # beyond ASCII: escapes both stores hold
        session = ledger.reserve("lab", 1.0).payload["session"]
        ledger.settle(session, 0.5)
        ledger.record_measurement(session, "SR", recovered=0.2, results=[results])
        ledger.correct(ledger.fund("lab", 3.0).seq, "funded twice")
        with ledger.batch():
            for _ in range(50):
                ledger.fund("team", 0.01)


def test_copy_moves_a_ledger_between_stores_with_every_hash_kept(tmp_path, pg_server_session, capsys):
    source, results = tmp_path / "ledger.sqlite", tmp_path / "results.json"
    results.write_text("{}")
    _a_ledger_of_every_kind(source, results)
    server, back = new_schema(pg_server_session), tmp_path / "back.sqlite"
    assert main(["copy", str(source), server]) == 0
    assert "copied 57 entries" in capsys.readouterr().out
    assert main(["copy", server, str(back)]) == 0
    assert exported(source) == exported(server) == exported(back)  # every entry's bytes and hash
    with Ledger.open(server, create=False) as ledger:
        assert ledger.verify(str(Ledger.open(source).head())).ok
        assert ledger.balances() == Ledger.open(back).balances()
        ledger.fund("lab", 1.0)  # the copy goes on as a ledger of its own
    # a copy never adds to a ledger, nor replaces a file
    head = Ledger.open(server).head()
    assert main(["copy", str(source), server]) == 2
    assert "already holds a ledger (58 entries)" in capsys.readouterr().err
    assert Ledger.open(server).head() == head
    assert main(["copy", str(source), str(back)]) == 2
    assert f"copy destination '{back}' is a ledger file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["copy", str(source), str(tmp_path / "notes.txt")]) == 2
    assert "already exists; a copy never overwrites anything" in capsys.readouterr().err
    # `backup` of a ledger on a server writes one SQLite file that verifies
    assert main(["--ledger", server, "backup", str(tmp_path / "backup.sqlite")]) == 0
    assert exported(tmp_path / "backup.sqlite") == exported(server)


def test_copy_refuses_a_broken_ledger_and_leaves_nothing(tmp_path, pg_server_session, capsys):
    source = tmp_path / "ledger.sqlite"
    funded_ledger(source).fund("lab", 1.0)
    from tests.ledger.helpers import tamper

    tamper(source, "UPDATE entries SET body = replace(body, '1000000', '9000000') WHERE seq = 2")
    server = new_schema(pg_server_session)
    assert main(["copy", str(source), server]) == 1
    assert "BROKEN at seq 2" in capsys.readouterr().err
    assert connect(server).execute("SELECT to_regclass('meta')").fetchone() == (None,)
    assert main(["copy", str(source), str(tmp_path / "copy.sqlite")]) == 1
    assert not (tmp_path / "copy.sqlite").exists()


@pytest.mark.parametrize("note", ["caf\udce9", "nul\x00"])
def test_copy_refuses_text_a_server_cannot_store_and_leaves_nothing(tmp_path, pg_server_session, capsys, note):
    """Bytes of another encoding than UTF-8, or a NUL, in an entry (an older version wrote them): verify finds
    it, so the copy stops before it starts, instead of on the server halfway."""
    source = tmp_path / "ledger.sqlite"
    funded_ledger(source).close()
    seq = forge(source, "fund", {"account": "lab", "note": note, "postings": {"@external": -1, "lab": 1}})
    server = new_schema(pg_server_session)
    assert main(["copy", str(source), server]) == 1
    err = capsys.readouterr().err
    assert f"BROKEN at seq {seq}: its field 'note' holds text a PostgreSQL ledger cannot store" in err
    assert connect(server).execute("SELECT to_regclass('meta')").fetchone() == (None,)


# ---- the CLI on a URL ----------------------------------------------------------------------------------


def test_the_cli_works_on_a_url_from_the_option_or_the_environment_and_never_shows_a_password(
    pg_url, capsys, monkeypatch
):
    with_password = pg_url.replace(f"{pg_server.SUPERUSER}@", f"{pg_server.SUPERUSER}:s3cret-pw@")
    assert main(["--ledger", with_password, "fund", "--account", "lab", "--hours", "2"]) == 0
    monkeypatch.setenv("WELFARE_LEDGER", with_password)
    for command in (["balance"], ["show"], ["verify"], ["head"], ["repair"]):
        assert main(command) == 0
    out, err = capsys.readouterr()
    assert "ledger intact: 1 entries" in out and "postgresql://welfare@" in out
    assert "s3cret-pw" not in out + err
    with Ledger.open(with_password) as ledger:
        assert "s3cret-pw" not in str(ledger.path)


def test_an_unreachable_server_exits_2_with_one_clear_line(tmp_path, capsys):
    pytest.importorskip("psycopg")
    nowhere = f"postgresql://nobody:pw@/welfare?host={tmp_path}"
    assert main(["--ledger", nowhere, "balance"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("welfare ledger: error: cannot connect to the ledger server postgresql://nobody@/welfare")
    assert "pw" not in err.replace("pgpass", "") and len(err.splitlines()) == 1


def test_without_psycopg_a_url_exits_2_with_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    assert main(["--ledger", f"postgresql://nobody@/welfare?host={tmp_path}", "balance"]) == 2
    assert "pip install 'welfare-offsets[postgres]'" in capsys.readouterr().err


# ---- sessions across hosts -------------------------------------------------------------------------------


BAD_NOTES = {
    "not JSON": ("{", "not JSON"),
    "another session's": ('{"session": "other", "spent_hours": 0.1, "updated_at": "t"}', "not this session"),
    "too much": ('{"session": "S", "spent_hours": 500, "energy_kwh": null, "updated_at": "t"}', "claims 500 h"),
    "huge": (" " * (70 * 1024), "implausibly large"),
}


@pytest.mark.parametrize("kind", BAD_NOTES)
def test_an_unbelievable_progress_note_charges_the_whole_reservation(pg_url, kind):
    funded_ledger(pg_url).close()
    with Ledger.open(pg_url) as gone:
        session = gone.reserve("lab", 1.0).payload["session"]
        gone.note_progress(session, 0.1)
    note, reason = BAD_NOTES[kind]
    connect(pg_url).execute(
        "INSERT INTO progress (session, body) VALUES (?, ?)", (session, note.replace('"S"', f'"{session}"'))
    )
    with Ledger.open(pg_url) as ledger:
        [outcome] = ledger.repair()
    basis = outcome.settlement.payload["basis"]
    assert reason in basis and "whole reservation charged" in basis
    assert outcome.settlement.payload["postings"][f"@spent/{session}"] == 1_000_000


def test_a_session_id_held_by_a_live_process_elsewhere_cannot_be_reused(pg_url):
    running = funded_ledger(pg_url)
    running.reserve("lab", 1.0, session="eval-1")
    with Ledger.open(pg_url) as other:
        with pytest.raises(LedgerError, match="already in use"):
            other.reserve("lab", 1.0, session="eval-1")
        assert other.abandoned_sessions() == [] and other.repair()[0].settlement is None
    running.close()  # the process lets go without settling: now it is abandoned
    with Ledger.open(pg_url) as other:
        assert [s.session for s in other.abandoned_sessions()] == ["eval-1"]


def _cut_off(ledger: Ledger, pg_url: str) -> None:
    """The server ends the ledger's connection, as after a long network failure: its session locks go."""
    admin = connect(pg_url)
    admin.execute("SELECT pg_terminate_backend(?)", (ledger._store._conn.info.backend_pid,))
    admin.close()


def test_a_session_cut_off_while_another_process_claims_it_stops_at_its_reconnection(pg_url):
    runner = funded_ledger(pg_url)
    session = runner.reserve("lab", 1.0).payload["session"]
    _cut_off(runner, pg_url)
    with Ledger.open(pg_url) as other:
        assert other._sessions.claim_if_dead(session) is not None  # as repair does, before it settles
        with pytest.raises(LedgerError, match=f"another process took over its session.*'{session}'.*Stop this run"):
            runner.note_progress(session, 0.1)
    runner.close()


def test_a_session_that_repair_settled_while_it_was_cut_off_is_refused_its_own_settlement(pg_url):
    runner = funded_ledger(pg_url)
    session = runner.reserve("lab", 1.0).payload["session"]
    runner.note_progress(session, 0.25)
    _cut_off(runner, pg_url)
    with Ledger.open(pg_url) as other:
        [outcome] = other.repair()
    settle_seq = outcome.settlement.seq
    with pytest.raises(LedgerError, match=f"which this process runs, was settled by entry {settle_seq} of another"):
        runner.settle(session, 0.5)
    runner.close()
    with Ledger.open(pg_url) as ledger:  # charged once, from the last progress note
        assert ledger.verify().ok and [e.kind for e in ledger.entries()] == ["fund", "reserve", "settle"]
        assert ledger.entries()[-1].payload["postings"][f"@spent/{session}"] == 250_000


# ---- faults ----------------------------------------------------------------------------------------------


def _cut_connection(monkeypatch, pg_url, when: str) -> None:
    """Break the ledger's connection once: `before` its first INSERT of an entry (the server ends the backend,
    so the transaction never commits), or `after` the server committed, before the client hears back."""
    real, cut = postgres.PostgresStore._execute, []

    def execute(self, sql, params):
        if not cut and when == "before" and sql.startswith("INSERT INTO entries"):
            cut.append(sql)
            admin = connect(pg_url)
            admin.execute("SELECT pg_terminate_backend(?)", (self._conn.info.backend_pid,))
            admin.close()
        if not cut and when == "after" and sql == "COMMIT":
            cut.append(sql)
            real(self, sql, params)
            self._conn.close()
            raise postgres._Lost("the connection broke after the commit")
        return real(self, sql, params)

    monkeypatch.setattr(postgres.PostgresStore, "_execute", execute)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_write_whose_connection_breaks_lands_exactly_once(pg_url, monkeypatch, when):
    ledger = funded_ledger(pg_url)
    _cut_connection(monkeypatch, pg_url, when)
    entry = ledger.fund("lab", 1.0, note="once")  # retried when nothing landed; done when it had
    assert [e.payload["note"] for e in ledger.entries()] == ["", "once"] and ledger.entries()[1] == entry
    _cut_connection(monkeypatch, pg_url, when)
    if when == "after":
        with ledger.batch():
            ledger.fund("lab", 1.0, note="batch")
    else:  # a batch cannot be run again by the ledger: its caller hears so, and nothing of it landed
        refused = pytest.raises(LedgerError, match="was lost .* nothing of the batch was written; run it again")
        with refused, ledger.batch():
            ledger.fund("lab", 1.0, note="batch")
    assert [e.payload["note"] for e in ledger.entries()][2:] == (["batch"] if when == "after" else [])
    assert ledger.verify().ok


@pytest.fixture(scope="module")
def own_server():
    """A server of this module's own, for the tests that crash it."""
    yield from started_server()


def _acknowledge(folder: Path, name: str, entries) -> None:
    """Say `seq hash note` of each entry after its commit returned, in a file of the writer's own (what
    write() put there survives the writer's SIGKILL)."""
    fd = os.open(folder / f"{name}.ack", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, "".join(f"{e.seq} {e.hash} {e.payload['note']}\n" for e in entries).encode())
    os.close(fd)


def _acknowledged(folder: Path) -> list[list[str]]:
    return [line.split() for path in sorted(folder.glob("*.ack")) for line in path.read_text().splitlines()]


def _acknowledging_writer(url: str, folder: Path, name: str, rounds: int) -> None:
    """Append single entries and batches of 3, acknowledging each after its commit."""
    with Ledger.open(url) as ledger:
        for round_ in range(rounds):
            with ledger.batch():
                entries = [ledger.fund("lab", 0.001, note=f"{name}-{round_}-{k}") for k in range(1 + 2 * (round_ % 2))]
            _acknowledge(folder, name, entries)


def _check_books(url: str, acknowledged: list[list[str]]) -> list:
    """Every acknowledged entry is there as acknowledged, no note twice, batches whole, balance exact."""
    with Ledger.open(url, create=False) as ledger:
        result = ledger.verify()
        assert result.ok, result
        funds = ledger.entries(kind="fund")[1:]
        by_seq = {entry.seq: entry for entry in funds}
        for seq, hash_, note in acknowledged:
            assert by_seq[int(seq)].hash == hash_ and by_seq[int(seq)].payload["note"] == note, f"lost {note}"
        notes = [entry.payload["note"] for entry in funds]
        assert len(notes) == len(set(notes)), "an append landed twice"
        per_round: dict[str, int] = {}
        for note in notes:
            per_round[note.rsplit("-", 1)[0]] = per_round.get(note.rsplit("-", 1)[0], 0) + 1
        assert all(count == 1 + 2 * (int(r.rsplit("-", 1)[1]) % 2) for r, count in per_round.items()), "a torn batch"
        assert round(ledger.balance("lab").available_hours * 1e6) == 10_000_000 + 1000 * len(funds)
    return funds


def test_16_writer_processes_at_once_make_one_chain_with_every_entry_once(pg_url, tmp_path):
    funded_ledger(pg_url).close()
    run_at_once(16, lambda writer: _acknowledging_writer(pg_url, tmp_path, f"w{writer}", 30))
    acknowledged = _acknowledged(tmp_path)
    funds = _check_books(pg_url, acknowledged)
    assert len(acknowledged) == len(funds) == 16 * 30 // 2 * 4  # every round acknowledged: 1 or 3 entries
    assert [entry.seq for entry in funds] == list(range(2, 2 + len(funds)))


def test_writers_killed_by_sigkill_mid_transaction_lose_nothing_acknowledged(pg_url, tmp_path, record_property):
    funded_ledger(pg_url).close()
    instants = random.Random(20261206)
    steady = [fork(lambda w=w: _acknowledging_writer(pg_url, tmp_path, f"steady{w}", 150)) for w in range(3)]
    for trial in range(40):
        pid = fork(lambda trial=trial: _acknowledging_writer(pg_url, tmp_path, f"killed{trial}", 10**6))
        time.sleep(instants.uniform(0.005, 0.04))
        os.kill(pid, signal.SIGKILL)
        assert wait_exit_code(pid) == -signal.SIGKILL
    assert [wait_exit_code(pid) for pid in steady] == [0, 0, 0]  # the others never noticed
    acknowledged = _acknowledged(tmp_path)
    funds = _check_books(pg_url, acknowledged)
    landed_kills = len(
        {note.rsplit("-", 2)[0] for note in (f.payload["note"] for f in funds) if note.startswith("killed")}
    )
    record_property("killed_writers_that_had_committed", landed_kills)
    assert sum(1 for *_, note in acknowledged if note.startswith("steady")) == 3 * (150 // 2 * 4)


ROUNDS = 100


def _sessions_and_appends(url: str, folder: Path, name: str, rounds: int) -> None:
    """What a running job does across the crash: hold a session, note progress, append, settle."""
    with Ledger.open(url) as ledger:
        session = ledger.reserve("lab", 0.5).payload["session"]
        for round_ in range(rounds):
            ledger.note_progress(session, 0.001 * round_)
            _acknowledge(folder, name, [ledger.fund("lab", 0.001, note=f"{name}-{round_}-0")])
            time.sleep(0.005)
        ledger.settle(session, 0.25)


def test_a_server_crash_and_restart_mid_run_loses_nothing_and_writers_carry_on(own_server, tmp_path, monkeypatch):
    monkeypatch.setattr(postgres, "RESTART_GRACE_S", 30.0)  # long enough for the writers to reconnect
    url = new_schema(own_server)
    funded_ledger(url, hours=10.0).close()
    writers = [fork(lambda w=w: _sessions_and_appends(url, tmp_path, f"w{w}", ROUNDS)) for w in range(16)]
    time.sleep(0.4)
    own_server.stop("immediate")  # a crash: every connection is cut, mid-transaction or not
    before_the_crash = len(_acknowledged(tmp_path))
    own_server.start()
    with Ledger.open(url, create=False) as auditor:
        # just restarted: a free lock may be a writer still reconnecting, so repair settles none of them
        assert all(outcome.settlement is None for outcome in auditor.repair())
    exit_codes = [wait_exit_code(pid) for pid in writers]
    acknowledged = _acknowledged(tmp_path)
    assert 0 < before_the_crash < 16 * ROUNDS  # the crash came mid-run
    assert exit_codes == [0] * 16  # every writer retried its way through
    assert len(acknowledged) == 16 * ROUNDS
    _check_books_with_sessions(url, acknowledged)


def _check_books_with_sessions(url: str, acknowledged: list[list[str]]) -> None:
    with Ledger.open(url, create=False) as ledger:
        assert ledger.verify().ok and ledger.open_sessions() == []
        settles = ledger.entries(kind="settle")
        assert len(settles) == 16 and all(s.payload["basis"] == "metered" for s in settles)
        funds = ledger.entries(kind="fund")[1:]
        assert sorted(f.payload["note"] for f in funds) == sorted(note for *_, note in acknowledged)
        by_seq = {entry.seq: entry.hash for entry in funds}
        assert all(by_seq[int(seq)] == hash_ for seq, hash_, _ in acknowledged)
        expected = 10_000_000 + 1000 * len(funds) - 16 * 250_000
        assert round(ledger.balance("lab").available_hours * 1e6) == expected


def test_connections_send_keepalives_unless_the_url_sets_its_own(pg_url):
    import psycopg

    with Ledger.open(pg_url) as ledger:
        assert ledger._store._conn.info.get_parameters().get("application_name") == "welfare-offsets ledger"
        assert psycopg.conninfo.conninfo_to_dict(ledger._store._conn.info.dsn)["keepalives_idle"] == "30"
    own = postgres._connection_defaults(psycopg, pg_url + "&keepalives_idle=5&application_name=mine")
    assert "keepalives_idle" not in own and "application_name" not in own and own["keepalives_count"] == "3"

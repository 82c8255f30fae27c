"""`verify` proves the accounting and the schema, not only the chain: each forgery below keeps the hash
chain intact (entries appended straight through the database, hashed and chained as the ledger would: on
PostgreSQL what a writer role may do), so only the new checks can catch it. Also: corrections cannot overdraw, amounts are bounded, sums never overflow,
and a broken ledger is never answered with advice to repair."""

from __future__ import annotations

import re
import sqlite3

import pytest

from tests.ledger.helpers import RESERVE_WITHOUT_SESSION, connect, forge, funded_ledger, verify
from welfare_offsets.ledger import BrokenLedger, InsufficientHours, Ledger, LedgerError
from welfare_offsets.ledger.accounts import MAX_HOURS_PER_ENTRY, MAX_MICROHOURS_PER_ENTRY
from welfare_offsets.ledger.chain import canonical_json, seal
from welfare_offsets.ledger.cli import main


def rewrite_schema(path, name, old, new):
    """Edit an object's CREATE text in sqlite_master, as `PRAGMA writable_schema` allows; no entry changes."""
    db = sqlite3.connect(path, isolation_level=None)
    version = db.execute("PRAGMA schema_version").fetchone()[0]
    db.execute("PRAGMA writable_schema=ON")
    db.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE name = ?", (old, new, name))
    db.execute(f"PRAGMA schema_version={version + 1}")
    db.close()


def settled_session(path) -> str:
    """A ledger holding: 1 fund lab 10 h, 2 reserve 1 h, 3 settle 0.5 h; returns the session id."""
    with funded_ledger(path) as ledger:
        session = ledger.reserve("lab", 1.0, session="s1").payload["session"]
        ledger.settle(session, 0.5)
    return session


def fund_payload(postings, account="lab"):
    return {"account": account, "note": "", "postings": postings}


def test_every_kind_of_honest_entry_verifies(location, tmp_path):
    results = tmp_path / "results.json"
    results.write_text("{}")
    with funded_ledger(location, hours=10.0) as ledger:
        ledger.transfer("lab", "team", 2.0)
        over = ledger.reserve("lab", 1.0).payload["session"]
        ledger.settle(over, 1.5)  # an overrun: lab is charged 0.5 h more than it reserved
        measured = ledger.record_measurement(over, "SR", recovered=0.2, results=[results])
        ledger.correct(measured.seq, "wrong checkpoint")
        extra = ledger.fund("lab", 3.0)
        ledger.correct(extra.seq, "funded twice")
        settle = ledger.settle(ledger.reserve("team", 2.0).payload["session"], 0.5)
        ledger.correct(settle.seq, "overcharged", postings={f"@spent/{settle.payload['session']}": -0.25, "team": 0.25})
        result = ledger.verify(ledger.head())
        assert (result.ok, result.entries) == (True, 11)
        assert ledger.balance("lab").available_hours == pytest.approx(6.5)
        assert ledger.balance("team").available_hours == pytest.approx(1.75)


def test_redefining_a_generated_column_is_caught_and_nothing_is_written(tmp_path):
    path = tmp_path / "ledger.sqlite"
    session = settled_session(path)
    rewrite_schema(
        path,
        "entries",
        "(json_extract(body, '$.kind'))",
        "(replace(json_extract(body, '$.kind'), 'settle', 'settled'))",
    )
    with Ledger.open(path, create=False) as ledger:
        assert [s.session for s in ledger.open_sessions()] == [session]  # what the issue found: it looks open
        result = ledger.verify()
        assert (result.ok, result.first_bad_seq) == (False, 0)
        assert "table entries is defined as" in result.reason and "schema was edited" in result.reason
        with pytest.raises(LedgerError, match="cannot be written: its table entries"):
            ledger.fund("lab", 1.0)
        with pytest.raises(LedgerError, match="broken"):
            ledger.repair()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (3,)


@pytest.mark.parametrize(
    "edit, reason",
    [
        ("DROP TRIGGER entries_no_update", "its trigger entries_no_update is missing"),
        ("CREATE INDEX entries_by_session ON entries(session)", "it has an extra index entries_by_session"),
        ("UPDATE meta SET value = 'x' WHERE key = 'genesis'", "its meta table holds"),
    ],
)
def test_schema_and_meta_must_be_what_the_code_creates(tmp_path, edit, reason):
    path = tmp_path / "ledger.sqlite"
    settled_session(path)
    sqlite3.connect(path, isolation_level=None).execute(edit)
    result = verify(path)
    assert not result.ok and reason in result.reason


def test_a_trigger_that_no_longer_guards_is_caught(tmp_path):
    path = tmp_path / "ledger.sqlite"
    settled_session(path)
    rewrite_schema(path, "entries_no_delete", "BEFORE DELETE", "BEFORE INSERT")
    result = verify(path)
    assert not result.ok and "its trigger entries_no_delete is defined as" in result.reason


def test_a_duplicate_key_with_a_correct_hash_is_caught_as_not_canonical(location):
    funded_ledger(location).close()
    small, large = canonical_json({"@external": -1, "lab": 1}), canonical_json({"@external": -(10**12), "lab": 10**12})
    seq = forge(
        location,
        "fund",
        {},
        content=f'{{"kind":"fund","payload":{{"account":"lab","note":"","postings":{small},"postings":{large}}}',
    )
    result = verify(location)
    assert (result.ok, result.first_bad_seq) == (False, seq) and "not canonical JSON" in result.reason


@pytest.mark.parametrize(
    "content",
    [
        '{"kind":"fund", "payload":{"account":"lab","note":"","postings":{"@external":-1,"lab":1}}',  # a space
        '{"kind":"fund","payload":{"note":"","account":"lab","postings":{"@external":-1,"lab":1}}',  # key order
        '{"kind":"fund","payload":{"account":"l\\u0061b","note":"","postings":{"@external":-1,"lab":1}}',  # escape
        '{"kind":"fund","payload":{"account":"lab","note":"","postings":{"@external":-1,"lab":1.0}}',  # 1.0 for 1
    ],
)
def test_any_other_spelling_of_an_entry_is_caught(location, content):
    funded_ledger(location).close()
    seq = forge(location, "fund", {}, content=content)
    result = verify(location)
    assert (result.ok, result.first_bad_seq) == (False, seq)


@pytest.mark.parametrize(
    "kind, payload, reason",
    [
        ("fund", fund_payload({"@external": -1_000_000, "lab": 2_000_000}), "sum to 1000000 micro-hours, not zero"),
        ("fund", fund_payload({"@external": -1, "team": 1}), "not what its kind makes"),
        ("fund", fund_payload({"@external": 1, "lab": -1}), "not what its kind makes"),
        (
            "fund",
            fund_payload({"@external": -(MAX_MICROHOURS_PER_ENTRY + 1), "lab": MAX_MICROHOURS_PER_ENTRY + 1}),
            "at most 1000000000000000",
        ),
        ("fund", {"account": "lab", "postings": {"@external": -1, "lab": 1}}, "lacks ['note']"),
        ("mint", {"postings": {}}, "its kind 'mint' is not one of"),
        (["fund"], {"postings": {}}, "its kind ['fund'] is not one of"),
        (
            "transfer",
            {"from": "lab", "to": "team", "note": "", "postings": {"lab": -11_000_000, "team": 11_000_000}},
            "leaves account 'lab' at -1.5 h, below zero",
        ),
        (
            "settle",
            {
                "session": "s1",
                "account": "lab",
                "basis": "metered",
                "energy_kwh": None,
                "wall_seconds": None,
                "stopped_by_budget": False,
                "postings": {"@reserved/s1": -1_000_000, "@spent/s1": 0, "lab": 1_000_000},
            },
            "settles session 's1' a second time",
        ),
        (
            "settle",
            {
                "session": "s9",
                "account": "lab",
                "basis": "metered",
                "energy_kwh": None,
                "wall_seconds": None,
                "stopped_by_budget": False,
                "postings": {"@reserved/s9": -1, "@spent/s9": 1, "lab": 0},
            },
            "settles session 's9', which has no earlier reservation",
        ),
        (
            "reserve",
            {
                "account": "lab",
                "session": "s1",
                "device": "cpu",
                "processes": 1,
                "purpose": "",
                "resumes": None,
                "wandb_run": None,
                "postings": {"lab": -1, "@reserved/s1": 1},
            },
            "reserved a second time",
        ),
        (
            "correction",
            {"corrects": 1, "reason": "x", "postings": {"lab": -10_000_000, "@external": 10_000_000}},
            "leaves account 'lab' at -0.5 h, below zero",
        ),
        ("correction", {"corrects": 9, "reason": "x", "postings": {"lab": -1, "@external": 1}}, "not an earlier entry"),
        (
            "measurement",
            {"session": "s9", "probe": "SR", "recovered": 0.1, "results": [], "wandb_run": None, "note": ""},
            "measures session 's9', which has no earlier reservation",
        ),
    ],
)
def test_a_re_chained_forgery_that_breaks_the_accounting_is_caught(location, kind, payload, reason):
    settled_session(location)  # lab: 10 h funded, 0.5 h spent; s1 reserved and settled
    seq = forge(location, kind, payload)
    result = verify(location)
    assert (result.ok, result.first_bad_seq) == (False, seq)
    assert reason in result.reason


def test_a_second_correction_of_one_entry_is_caught(location):
    with funded_ledger(location) as ledger:
        ledger.fund("lab", 1.0)
        ledger.correct(2, "funded twice")
    seq = forge(
        location,
        "correction",
        {"corrects": 2, "reason": "again", "postings": {"lab": -1_000_000, "@external": 1_000_000}},
    )
    result = verify(location)
    assert (result.ok, result.first_bad_seq) == (False, seq) and "corrects entry 2 a second time" in result.reason


def test_a_time_that_is_not_fixed_width_utc_is_caught(location):
    path = location
    funded_ledger(path).close()
    db = connect(path)
    prev = db.execute("SELECT hash FROM entries WHERE seq = 1").fetchone()[0]
    body, hash_ = seal(2, "2026-12-02 10:00:00.000000Z", "fund", fund_payload({"@external": -1, "lab": 1}), prev)
    db.execute("INSERT INTO entries (seq, body, hash) VALUES (2, ?, ?)", (body, hash_))
    db.close()
    result = verify(path)
    assert (result.ok, result.first_bad_seq) == (False, 2) and "fixed-width UTC" in result.reason


@pytest.mark.parametrize(
    "time",
    [
        "9999-99-99T99:99:99.999999Z",
        "2026-02-29T10:00:00.000000Z",
        "2026-12-02T24:00:00.000000Z",
        "2026-12-02T10:60:00.000000Z",
        "2026-12-02T10:00:60.000000Z",
        "0000-12-02T10:00:00.000000Z",
    ],
)
def test_a_time_that_cannot_exist_is_caught(location, time):
    funded_ledger(location).close()
    seq = forge(location, "fund", fund_payload({"@external": -1, "lab": 1}), time=time)
    result = verify(location)
    assert (result.ok, result.first_bad_seq) == (False, seq)
    assert (
        result.reason == f"its time {time!r} is not a possible time (a month, day, hour, minute or second out of range)"
    )


@pytest.mark.parametrize(
    "kind, payload, field",
    [
        ("fund", fund_payload({"@external": -1, "lab": 1}) | {"note": "caf\udce9"}, "'note'"),
        ("fund", fund_payload({"@external": -1, "lab": 1}) | {"note": "nul\x00"}, "'note'"),
        (
            "reserve",
            {
                "account": "lab",
                "session": "s2",
                "device": "cpu",
                "processes": 1,
                "purpose": "",
                "resumes": {"step\udce9": 1},
                "wandb_run": None,
                "postings": {"lab": -1, "@reserved/s2": 1},
            },
            "'resumes.step\\udce9'",
        ),
    ],
)
def test_text_a_server_cannot_store_is_caught(tmp_path, kind, payload, field):
    """SQLite keeps a lone surrogate (bytes of another encoding than UTF-8) or a NUL as a JSON escape; a
    PostgreSQL ledger cannot hold either, so the entry could never be copied there."""
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path).close()
    seq = forge(path, kind, payload)
    result = verify(path)
    assert (result.ok, result.first_bad_seq) == (False, seq)
    assert result.reason.startswith(f"its field {field} holds text a PostgreSQL ledger cannot store")


MALFORMED = {
    "a reservation without its session": (
        "reserve",
        RESERVE_WITHOUT_SESSION,
        "its reserve payload lacks ['session']",
    ),
    "a posting in text": ("fund", fund_payload({"@external": -5, "lab": "5"}), "whole number of micro-hours"),
    "postings in a list": ("fund", fund_payload([["lab", 5], ["@external", -5]]), "are not an object"),
}


@pytest.mark.parametrize("malformed", MALFORMED)
def test_reading_a_malformed_entry_names_it_instead_of_failing_inside(location, malformed):
    """Each read refuses the well-chained entry verify refuses, at its seq (BrokenLedger), before anything
    built on it meets a missing field or a wrong type."""
    kind, payload, reason = MALFORMED[malformed]
    funded_ledger(location).close()
    seq = forge(location, kind, payload)
    assert verify(location).first_bad_seq == seq
    with Ledger.open(location, create=False) as ledger:
        for read in (ledger.balances, ledger.entries, ledger.report, lambda: ledger.correct(seq, "x")):
            with pytest.raises(BrokenLedger, match=f"^the ledger is broken at entry {seq} ") as broken:
                read()
            assert broken.value.seq == seq and "run `welfare ledger verify`" in str(broken.value)
        with pytest.raises(BrokenLedger, match=re.escape(reason)):
            ledger.entries()
        assert ledger.entries(kind="transfer") == []  # a read that does not reach the entry is unaffected


def test_a_correction_cannot_take_back_hours_already_moved_away(location):
    with funded_ledger(location, hours=10.0) as ledger:
        ledger.transfer("lab", "team", 9.0)
        with pytest.raises(InsufficientHours, match="would leave account 'lab' at -9 accelerator-hours, below zero"):
            ledger.correct(1, "funded the wrong account")
        assert len(ledger.entries()) == 2
        ledger.correct(2, "wrong transfer")  # undoing the later move first is what the message asks
        ledger.correct(1, "funded the wrong account")
        assert ledger.balance("lab").available_hours == 0.0 and ledger.verify().ok


def test_a_correction_cannot_post_to_a_reservation(tmp_path):
    with funded_ledger(tmp_path / "ledger.sqlite") as ledger:
        reserve = ledger.reserve("lab", 1.0, session="s1")
        with pytest.raises(LedgerError, match="@reserved/s1' cannot be corrected"):
            ledger.correct(reserve.seq, "too much", postings={"@reserved/s1": -0.5, "lab": 0.5})


@pytest.mark.parametrize("hours", [MAX_HOURS_PER_ENTRY * 1.5, 9e9])
def test_a_fund_larger_than_one_entry_may_move_is_refused(tmp_path, hours):
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        with pytest.raises(LedgerError, match="more than one entry may move"):
            ledger.fund("lab", hours)
        assert ledger.entries() == []


def test_ten_thousand_funds_at_the_bound_sum_exactly(tmp_path):
    """10,000 x 1e15 micro-hours is past SQLite's int64 SUM (9.2e18); balances must still be exact."""
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        with ledger.batch():
            for _ in range(10_000):
                ledger.fund("lab", MAX_HOURS_PER_ENTRY)
        assert ledger.balance("lab").available_hours == 1e13
        ledger.transfer("lab", "team", MAX_HOURS_PER_ENTRY)
        assert ledger.balances()["team"].available_hours == MAX_HOURS_PER_ENTRY
        assert ledger.verify().ok


def test_a_failed_verify_never_advises_repair(tmp_path, capsys):
    path = tmp_path / "ledger.sqlite"
    with funded_ledger(path) as ledger:
        ledger.reserve("lab", 1.0, session="dead")  # closed unsettled: abandoned, which repair would settle
    rewrite_schema(path, "entries", "'$.payload.session'", "'$.payload.sessio'")
    assert main(["--ledger", str(path), "verify"]) == 1
    err = capsys.readouterr().err
    assert "BROKEN outside its entries" in err and "restore it from a backup" in err
    assert "welfare ledger repair" not in err
    assert main(["--ledger", str(path), "balance"]) == 0  # another command on it: the warning does not advise it
    err = capsys.readouterr().err
    assert "look unsettled (dead)" in err and "restore it from a backup" in err
    assert "welfare ledger repair" not in err


@pytest.mark.parametrize("moved, first_bad_seq", [(4_099_000, None), (4_101_000, 4_101)])
def test_balances_hold_across_thousands_of_alike_entries(tmp_path, moved, first_bad_seq):
    """4,100 identical funds are added up a chunk at a time; a forged transfer after them is judged on
    exactly their sum (4.1 h): 4.099 h passes, 4.101 h leaves lab below zero."""
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path) as ledger, ledger.batch():
        for _ in range(4_100):
            ledger.fund("lab", 0.001)
    forge(path, "transfer", {"from": "lab", "to": "team", "note": "", "postings": {"lab": -moved, "team": moved}})
    result = verify(path)
    assert (result.ok, result.first_bad_seq) == (first_bad_seq is None, first_bad_seq)
    if first_bad_seq is not None:
        assert "leaves account 'lab' at -0.001 h, below zero" in result.reason

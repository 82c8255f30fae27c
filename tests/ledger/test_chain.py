"""The hash chain: every hash is sha256 of the canonical JSON of the entry without its hash, and
`verify` names the first bad seq for each way of tampering (known answers)."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.ledger.helpers import connect, funded_ledger, tamper, verify
from welfare_offsets.ledger import GENESIS_HASH, Head, Ledger, LedgerError
from welfare_offsets.ledger.chain import canonical_json, format_time, seal
from welfare_offsets.ledger.location import is_server_url


@pytest.fixture
def ten_entries(location):
    """A ledger of 10 fund entries (seq n funds n hours), in either store: its location, and its head."""
    path = location
    with Ledger.open(path) as ledger:
        with ledger.batch():
            for hours in range(1, 11):
                ledger.fund("lab", hours)
        head = ledger.head()
    return path, head


def test_hash_is_sha256_of_the_canonical_entry_without_its_hash(ten_entries):
    path, head = ten_entries
    out = io.StringIO()
    with Ledger.open(path) as ledger:
        ledger.export(out, "jsonl")
    previous = GENESIS_HASH
    for seq, line in enumerate(out.getvalue().splitlines(), start=1):
        entry = json.loads(line)
        stored = entry.pop("hash")
        assert set(entry) == {"seq", "time", "kind", "payload", "prev_hash"}
        assert entry["seq"] == seq and entry["prev_hash"] == previous
        assert hashlib.sha256(canonical_json(entry).encode()).hexdigest() == stored
        previous = stored
    assert Head(10, previous) == head


def test_canonical_json_is_sorted_compact_ascii_and_refuses_nan():
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"\\u00e9"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_times_are_fixed_width_utc_with_the_year_in_four_digits():
    """strftime's %Y gives '999' on glibc, which sorts after '2026' as text."""
    assert format_time(datetime(999, 1, 2, 3, 4, 5, 6)) == "0999-01-02T03:04:05.000006Z"
    assert format_time(datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))) == "2025-12-31T22:00:00.000000Z"


def test_intact_ledger_verifies_with_and_without_its_anchor(ten_entries):
    path, head = ten_entries
    assert verify(path) == verify(path, head)
    result = verify(path, str(head))
    assert result.ok and result.entries == 10 and result.head == head


def test_empty_ledger_verifies_against_the_genesis_anchor(location):
    with Ledger.open(location) as ledger:
        assert str(ledger.head()) == f"0:{GENESIS_HASH}"
        assert ledger.verify(ledger.head()).ok


def test_entries_cannot_be_updated_or_deleted_through_the_database(ten_entries):
    path, head = ten_entries
    db = connect(path)
    statements = ["UPDATE entries SET hash = 'x' WHERE seq = 1", "DELETE FROM entries WHERE seq = 1"]
    if is_server_url(path):  # refused by the database for its owner too; SQLite has no TRUNCATE
        statements += ["TRUNCATE entries", "DELETE FROM meta", "TRUNCATE progress"]
    for statement in statements:
        with pytest.raises(Exception, match="append-only"):
            db.execute(statement)
    db.close()
    assert verify(path, head).ok


def test_changing_one_number_in_an_old_entry_is_caught_at_that_entry(ten_entries):
    path, head = ten_entries
    tamper(path, "UPDATE entries SET body = replace(body, '\"lab\":3000000', '\"lab\":9000000') WHERE seq = 3")
    result = verify(path)
    assert not result.ok and result.first_bad_seq == 3 and "edited" in result.reason


def test_deleting_an_entry_is_caught_where_it_is_missing(ten_entries):
    path, _ = ten_entries
    tamper(path, "DELETE FROM entries WHERE seq = 4")
    result = verify(path)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "entry 5 is stored where entry 4 belongs" in result.reason


def test_swapping_two_entries_is_caught_at_the_first_of_them(ten_entries):
    path, _ = ten_entries
    tamper(
        path,
        "UPDATE entries SET seq = -1 WHERE seq = 2",
        "UPDATE entries SET seq = 2 WHERE seq = 7",
        "UPDATE entries SET seq = 7 WHERE seq = -1",
    )
    result = verify(path)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_truncating_the_tail_is_caught_by_the_anchor(ten_entries):
    path, head = ten_entries
    tamper(path, "DELETE FROM entries WHERE seq > 6")
    assert verify(path).ok  # a shorter chain is still a chain: only an anchor kept elsewhere tells
    result = verify(path, head)
    assert (result.ok, result.first_bad_seq) == (False, 7)
    assert "truncated" in result.reason


def test_a_re_chained_forgery_passes_alone_but_not_against_the_anchor(ten_entries):
    path, head = ten_entries
    db = connect(path)
    rows = db.execute("SELECT seq, body FROM entries WHERE seq >= 3 ORDER BY seq").fetchall()
    previous = db.execute("SELECT hash FROM entries WHERE seq = 2").fetchone()[0]
    db.close()
    forged = []
    for seq, body in rows:  # rewrite history from seq 3 on, re-hashing every entry after it
        entry = json.loads(body)
        if seq == 3:
            entry["payload"]["postings"] = {"@external": -1, "lab": 1}
        new_body, new_hash = seal(seq, entry["time"], entry["kind"], entry["payload"], previous)
        forged.append(("UPDATE entries SET body = ?, hash = ? WHERE seq = ?", (new_body, new_hash, seq)))
        previous = new_hash
    tamper(path, *forged)
    assert verify(path).ok
    result = verify(path, head)
    assert (result.ok, result.first_bad_seq) == (False, 10)
    assert "anchor" in result.reason


def test_renumbering_rows_is_caught(ten_entries):
    path, _ = ten_entries
    tamper(path, "UPDATE entries SET seq = seq + 100")
    result = verify(path)
    assert (result.ok, result.first_bad_seq) == (False, 101)
    assert "renumbered" in result.reason


def test_anchor_must_be_seq_colon_hash():
    with pytest.raises(LedgerError, match="SEQ:HASH"):
        Head.parse("12:not-a-hash")
    assert Head.parse(f" 3:{'a' * 64}\n") == Head(3, "a" * 64)


def test_funded_ledger_entries_chain_in_order(location):
    ledger = funded_ledger(location)
    second = ledger.fund("lab", 1.0)
    assert second.prev_hash == ledger.entries()[0].hash and second.seq == 2


def _rows(count):
    prev, rows = GENESIS_HASH, []
    for seq in range(1, count + 1):
        payload = {"account": "lab", "note": str(seq), "postings": {"@external": -1, "lab": 1}}
        body, hash_ = seal(seq, "2026-01-01T00:00:00.000000Z", "fund", payload, prev)
        rows.append((body.encode(), hash_))
        prev = hash_
    return rows


@pytest.mark.parametrize("bad_seq", [1, 4096, 4097, 6000, 10_000])
def test_a_bad_entry_in_any_chunk_is_found_at_its_seq(bad_seq):
    from welfare_offsets.ledger.chain import verify_chain

    rows = _rows(10_000)
    assert verify_chain(rows).ok and verify_chain(rows).head == Head(10_000, rows[-1][1])
    body, hash_ = rows[bad_seq - 1]
    rows[bad_seq - 1] = (body.replace(b'"lab":1', b'"lab":2'), hash_)
    result = verify_chain(rows)
    assert not result.ok and result.first_bad_seq == bad_seq and result.entries == bad_seq - 1
    assert "content does not match its hash" in result.reason


@pytest.mark.parametrize("anchor_seq", [1, 4096, 6000])
def test_an_anchor_inside_any_chunk_is_checked(anchor_seq):
    from welfare_offsets.ledger.chain import verify_chain

    rows = _rows(8_000)
    assert verify_chain(rows, Head(anchor_seq, rows[anchor_seq - 1][1])).ok
    result = verify_chain(rows, Head(anchor_seq, "0" * 64))
    assert not result.ok and result.first_bad_seq == anchor_seq and "anchor" in result.reason

"""The library API: double-entry accounts, corrections, measurements, batches, and the file itself."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger
from welfare_offsets.ledger import (
    InsufficientHours,
    Ledger,
    LedgerError,
    NotALedger,
    SchemaTooNew,
    UnknownAccount,
    UnknownSession,
    default_ledger_path,
)


def postings_sum_to_zero(ledger: Ledger) -> bool:
    return all(sum(entry.payload.get("postings", {}).values()) == 0 for entry in ledger.entries())


def test_fund_reserve_settle_balance_exactly(location):
    ledger = funded_ledger(location, hours=10.0)
    session = ledger.reserve("lab", 3.0, device="cuda", processes=8).payload["session"]
    assert ledger.balance("lab") == ledger.balances()["lab"]
    assert (ledger.balance("lab").available_hours, ledger.balance("lab").reserved_hours) == (7.0, 3.0)
    settle = ledger.settle(session, 1.1, energy_kwh=0.4, wall_seconds=495.0)
    assert settle.payload["postings"] == {
        f"@reserved/{session}": -3_000_000,
        f"@spent/{session}": 1_100_000,
        "lab": 1_900_000,
    }
    balance = ledger.balance("lab")
    assert (balance.available_hours, balance.reserved_hours, balance.spent_hours) == (8.9, 0.0, 1.1)
    assert postings_sum_to_zero(ledger)


def test_overrun_is_charged_to_the_account_not_hidden(location):
    ledger = funded_ledger(location, hours=1.0)
    session = ledger.reserve("lab", 1.0).payload["session"]
    ledger.settle(session, 1.25)
    assert ledger.balance("lab").available_hours == -0.25


def test_reserve_is_refused_when_the_account_cannot_cover_it(location):
    ledger = funded_ledger(location, hours=1.0)
    with pytest.raises(InsufficientHours, match="'lab' has 1 accelerator-hours available, less than the 2 asked for"):
        ledger.reserve("lab", 2.0)
    with pytest.raises(UnknownAccount, match="'ghost' has never been funded"):
        ledger.reserve("ghost", 0.1)
    assert [entry.kind for entry in ledger.entries()] == ["fund"]
    assert ledger.open_sessions() == []


@pytest.mark.parametrize("hours", [-1.0, 0.0, float("nan"), float("inf"), "2", True, 1e-9])
def test_bad_hours_are_refused_with_the_field_named(tmp_path, hours):
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with pytest.raises(LedgerError, match="hours"):
        ledger.fund("lab", hours)
    assert ledger.entries() == []


@pytest.mark.parametrize("name", ["", "has space", "@external", "x" * 65, None])
def test_bad_account_names_are_refused(tmp_path, name):
    with pytest.raises(LedgerError, match="not a valid name"):
        Ledger.open(tmp_path / "ledger.sqlite").fund(name, 1.0)


def test_transfer_moves_hours_and_refuses_overdraw(location):
    ledger = funded_ledger(location, hours=2.0)
    ledger.transfer("lab", "team", 0.5)
    assert (ledger.balance("lab").available_hours, ledger.balance("team").available_hours) == (1.5, 0.5)
    with pytest.raises(InsufficientHours):
        ledger.transfer("team", "lab", 0.6)
    with pytest.raises(LedgerError, match="to itself"):
        ledger.transfer("lab", "lab", 0.1)


def test_settling_twice_or_an_unknown_session_is_refused(location):
    ledger = funded_ledger(location)
    session = ledger.reserve("lab", 1.0).payload["session"]
    ledger.settle(session, 0.5)
    with pytest.raises(LedgerError, match="already settled by entry 3"):
        ledger.settle(session, 0.5)
    with pytest.raises(UnknownSession):
        ledger.settle("nope", 0.5)


def test_a_session_id_is_reserved_once(location):
    ledger = funded_ledger(location)
    ledger.reserve("lab", 1.0, session="eval-1")
    with pytest.raises(LedgerError, match="already in use"):
        ledger.reserve("lab", 1.0, session="eval-1")


def test_corrections_reverse_a_fund_without_touching_it(location):
    ledger = funded_ledger(location, hours=5.0)
    wrong = ledger.fund("lab", 50.0, note="typo: meant 5")
    correction = ledger.correct(wrong.seq, "funded 50 instead of 5")
    assert correction.payload["corrects"] == wrong.seq
    assert correction.payload["postings"] == {"lab": -50_000_000, "@external": 50_000_000}
    assert ledger.balance("lab").available_hours == 5.0
    assert ledger.entries()[1] == wrong  # the corrected entry is still there, unchanged
    with pytest.raises(LedgerError, match="already corrected by entry 3"):
        ledger.correct(wrong.seq, "again")
    assert ledger.verify().ok


def test_settlements_are_corrected_only_with_explicit_balanced_postings(location):
    ledger = funded_ledger(location)
    session = ledger.reserve("lab", 1.0).payload["session"]
    settle = ledger.settle(session, 1.0)
    with pytest.raises(LedgerError, match="explicit zero-sum postings"):
        ledger.correct(settle.seq, "overcharged")
    with pytest.raises(LedgerError, match="sum to zero"):
        ledger.correct(settle.seq, "overcharged", postings={f"@spent/{session}": -0.2, "lab": 0.1})
    ledger.correct(settle.seq, "overcharged", postings={f"@spent/{session}": -0.2, "lab": 0.2})
    assert ledger.balance("lab").spent_hours == pytest.approx(0.8)
    assert ledger.report().sessions[0].spent_hours == pytest.approx(0.8)


def test_measurements_cite_result_files_by_sha256_and_can_be_retracted(location, tmp_path):
    ledger = funded_ledger(location)
    session = ledger.reserve("lab", 1.0).payload["session"]
    ledger.settle(session, 0.5)
    results = tmp_path / "results.json"
    results.write_text('{"sr": 0.1}')
    entry = ledger.record_measurement(
        session,
        "SR",
        wellbeing_before=-0.4,
        wellbeing_after=0.1,
        recovered=0.5,
        credit=0.5,
        results=[results],
        wandb_run="abc123",
    )
    assert entry.payload["results"] == [
        {"path": str(results), "bytes": 11, "sha256": hashlib.sha256(b'{"sr": 0.1}').hexdigest()}
    ]
    assert entry.payload["wandb_run"] == "abc123"
    report = ledger.report()
    assert report.measurements[0].recovered_per_gpu_hour == pytest.approx(1.0)
    assert report.recovery_curves() == {"SR": [(0.0, 0.0), (0.5, 0.5)]}
    ledger.correct(entry.seq, "wrong checkpoint evaluated")
    assert ledger.report().measurements == []


def test_measurements_need_a_session_a_value_and_finite_numbers(location, tmp_path):
    ledger = funded_ledger(location)
    with pytest.raises(UnknownSession):
        ledger.record_measurement("nope", "SR", recovered=0.1)
    session = ledger.reserve("lab", 1.0).payload["session"]
    with pytest.raises(LedgerError, match="at least one"):
        ledger.record_measurement(session, "SR")
    with pytest.raises(LedgerError, match="finite"):
        ledger.record_measurement(session, "SR", recovered=float("nan"))
    with pytest.raises(LedgerError, match="debt is an amount"):
        ledger.record_measurement(session, "SR", debt=-1.0)
    with pytest.raises(LedgerError, match="does not exist"):
        ledger.record_measurement(session, "SR", recovered=0.1, results=[tmp_path / "missing.json"])


def test_text_a_server_cannot_store_never_reaches_the_ledger(location, tmp_path):
    """Bytes of another encoding than UTF-8 (a lone surrogate such as \\udce9) or a NUL would make an entry no
    PostgreSQL ledger can hold: free text is refused where it is given, anything else before it is written."""
    results = tmp_path / "r\udce9.json"  # a file name in Latin-1, as Python sees it
    results.write_text("{}")
    with funded_ledger(location) as ledger:
        session = ledger.reserve("lab", 1.0, purpose="ok").payload["session"]
        with pytest.raises(LedgerError, match=r"^note 'caf\\udce9' holds text a ledger cannot store"):
            ledger.fund("lab", 1.0, note="caf\udce9")
        with pytest.raises(LedgerError, match=r"^note 'nul\\x00' holds text a ledger cannot store"):
            ledger.fund("lab", 1.0, note="nul\x00")
        with pytest.raises(LedgerError, match=r"^reason 'caf\\udce9' holds text a ledger cannot store"):
            ledger.correct(1, "caf\udce9")
        with pytest.raises(LedgerError, match=r"^purpose 'caf\\udce9' holds text a ledger cannot store"):
            ledger.reserve("lab", 1.0, purpose="caf\udce9")
        with pytest.raises(LedgerError, match=r"measurement entry was not written.*field 'results\[0\]\.path'"):
            ledger.record_measurement(session, "SR", recovered=0.1, results=[results])
        with pytest.raises(LedgerError, match=r"reserve entry was not written.*field 'resumes\.step\\udce9'"):
            ledger.reserve("lab", 1.0, resumes={"step\udce9": 1})
        ledger.fund("lab", 1.0, note="caf\u00e9 \U0001f642")  # UTF-8 beyond ASCII, written as escapes
        assert [entry.kind for entry in ledger.entries()] == ["fund", "reserve", "fund"]
        assert ledger.entries()[2].payload["note"] == "caf\u00e9 \U0001f642" and ledger.verify().ok


def test_report_prices_debt_and_credit_in_gpu_hours(location):
    ledger = funded_ledger(location)
    exposure = ledger.reserve("lab", 1.0, purpose="dysphoric exposure").payload["session"]
    ledger.settle(exposure, 0.25)
    ledger.record_measurement(exposure, "SR", wellbeing_before=0.0, wellbeing_after=-0.6, debt=0.6)
    offset = ledger.reserve("lab", 1.0, purpose="offset fine-tune").payload["session"]
    ledger.settle(offset, 0.75)
    ledger.record_measurement(offset, "SR", wellbeing_before=-0.6, wellbeing_after=-0.2, recovered=0.4, credit=0.4)
    report = ledger.report()
    assert (report.reserved_hours, report.spent_hours, report.energy_kwh) == (2.0, 1.0, None)
    assert report.probes["SR"].open_debt == pytest.approx(0.2)
    assert report.recovery_curves()["SR"] == [(0.0, 0.0), (0.25, 0.0), (1.0, 0.4)]


def test_a_batch_lands_whole_or_not_at_all(location):
    ledger = funded_ledger(location, hours=1.0)
    with pytest.raises(InsufficientHours), ledger.batch():
        ledger.fund("lab", 1.0)
        ledger.transfer("lab", "team", 5.0)
    assert [entry.kind for entry in ledger.entries()] == ["fund"]
    with ledger.batch():
        for _ in range(100):
            ledger.fund("lab", 0.01)
    assert len(ledger.entries()) == 101 and ledger.verify().ok


def test_entries_filter_by_session_kind_and_time(location):
    from datetime import datetime, timedelta, timezone

    ledger = funded_ledger(location)
    session = ledger.reserve("lab", 1.0).payload["session"]
    ledger.settle(session, 0.1)
    assert [entry.kind for entry in ledger.entries(session=session)] == ["reserve", "settle"]
    assert [entry.seq for entry in ledger.entries(kind="fund")] == [1]
    now = datetime.now(timezone.utc)
    assert len(ledger.entries(since=now - timedelta(hours=1))) == 3
    assert ledger.entries(until=now - timedelta(hours=1)) == []


def test_a_file_that_is_not_a_ledger_is_refused_untouched(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    before = text.read_bytes()
    with pytest.raises(NotALedger, match="is not a welfare-offsets ledger"):
        Ledger.open(text)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(NotALedger):
        Ledger.open(other)
    with pytest.raises(NotALedger, match="directory"):
        Ledger.open(tmp_path)
    assert text.read_bytes() == before


def test_a_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew, match="schema version 99, newer than the 1 this welfare-offsets reads"):
        Ledger.open(path)


def test_reading_a_missing_ledger_does_not_create_one(tmp_path):
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger.open(tmp_path / "nope.sqlite", create=False)
    assert not (tmp_path / "nope.sqlite").exists()


def test_default_location_is_env_then_user_data_dir(tmp_path):
    assert default_ledger_path({"WELFARE_LEDGER": "/x/l.sqlite"}) == Path("/x/l.sqlite")
    assert default_ledger_path({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "welfare-offsets" / "ledger.sqlite"


def test_ledger_and_its_cli_import_neither_torch_nor_transformers():
    code = (
        "import sys, welfare_offsets.ledger, welfare_offsets.ledger.cli, welfare_offsets.ledger.budget; "
        "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'rich') if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"

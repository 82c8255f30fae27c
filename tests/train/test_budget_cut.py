"""The after-evaluation budget cut (train/session.py): once the "before" evaluation is measured, the
intervention's budget is cut by AFTER_EVAL_MARGIN times its cost, so the "after" evaluation is paid for
before training starts; a budget that leaves nothing after the cut is refused (exit 2).

Real soft-prompt sessions on a tiny untrained model (seconds each). A resumed session reuses its saved
"before" evaluation and the cost recorded with it, which makes the cut exact: editing that recorded cost
moves the session across the line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger, verify
from tests.train.helpers import SOFT_PROMPT_BUDGET, soft_prompt_argv
from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.budget import SPEND_FILE
from welfare_offsets.train.cli import main as welfare_main
from welfare_offsets.train.session import AFTER_EVAL_MARGIN


def soft_prompt(tiny, ledger: Path, out: Path, *extra) -> int:
    """`welfare offset soft-prompt` on the tiny model, two steps, a checkpoint after each: its exit code."""
    return welfare_main(soft_prompt_argv(tiny, ledger, out, "--report_to", "none", "--save_steps", "1", *extra))


def settlement(out: Path) -> dict:
    """The session's settlement entry, as the ledger holds it (located through the folder's ledger.json)."""
    record = json.loads((out / "ledger.json").read_text())
    with Ledger.open(record["ledger"], create=False) as ledger:
        (entry,) = [e for e in ledger.entries(kind="settle") if e.seq == record["settlement"]["seq"]]
        measured = [e for e in ledger.entries(kind="measurement") if e.payload["session"] == record["session"]]
    return {**entry.payload, "measurements": len(measured)}


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished two-step session (checkpoint-1 and -2 with its spend) and the ledger that paid for it."""
    root = tmp_path_factory.mktemp("budget-cut")
    ledger = root / "ledger.sqlite"
    funded_ledger(ledger, hours=100.0).close()
    out = root / "session"
    assert soft_prompt(tiny, ledger, out) == 0
    return ledger, out


@pytest.fixture
def resumable(finished, tmp_path):
    """A copy of the finished session to resume (each test edits its own), and its run's spend so far: what
    the ledger charged its sessions (a resume counts from there), more than its last checkpoint saw."""
    ledger, out = finished
    copy = tmp_path / "session"
    shutil.copytree(out, copy, symlinks=True)
    run = json.loads((copy / "checkpoint-2" / SPEND_FILE).read_text())["run"]
    with Ledger.open(ledger, create=False) as book:
        spent = book.run_spent_hours(run)
    return ledger, copy, spent


def record_before_cost(out: Path, hours: float) -> None:
    """Say, in the saved "before" evaluation, that measuring it cost `hours`."""
    path = out / "eval-before" / "results.json"
    saved = json.loads(path.read_text())
    assert "metered_hours" in saved and saved["metered_hours"] > 0  # the session recorded what it cost
    path.write_text(json.dumps({**saved, "metered_hours": hours}))


def test_a_budget_that_the_evaluations_alone_use_up_is_refused_after_the_first(capsys, tiny, tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "session"
    code = soft_prompt(tiny, ledger, out, "--budget_hours", "1e-5")  # 36 ms
    err = capsys.readouterr().err
    assert code == 2, err
    assert "leaves nothing for the intervention" in err and "raise budget_hours or lower eval_max_items" in err
    assert "Traceback" not in err
    assert (out / "eval-before" / "results.json").exists() and not (out / "eval-after").exists()
    assert not list(out.glob("checkpoint-*"))  # no training step was taken
    cut = settlement(out)
    assert cut["measurements"] == 0 and not cut["stopped_by_budget"]  # refused, settled, nothing measured
    assert verify(ledger).ok


def test_a_resume_cuts_by_the_recorded_cost_of_its_reused_evaluation(capsys, tiny, resumable):
    ledger, out, spent = resumable
    left = SOFT_PROMPT_BUDGET - spent  # what the resumed run may still spend
    record_before_cost(out, left / AFTER_EVAL_MARGIN * 1.001)  # the cut takes a little more than is left
    code = soft_prompt(tiny, ledger, out, "--resume_from_checkpoint", "last", "--max_steps", "4")
    err = capsys.readouterr().err
    assert code == 2 and "leaves nothing for the intervention" in err, err
    assert not (out / "checkpoint-3").exists() and settlement(out)["measurements"] == 0


def test_a_resume_with_a_sliver_left_after_the_cut_stops_at_once_and_still_measures(capsys, tiny, resumable):
    ledger, out, spent = resumable
    left = SOFT_PROMPT_BUDGET - spent
    record_before_cost(out, left / AFTER_EVAL_MARGIN * 0.999999)  # leaves ~2 ms for training
    code = soft_prompt(tiny, ledger, out, "--resume_from_checkpoint", "last", "--max_steps", "4")
    err = capsys.readouterr().err
    assert code == 0, err
    stopped = settlement(out)
    assert stopped["stopped_by_budget"] and stopped["measurements"] > 0  # "after" measured, recovery recorded
    assert not (out / "checkpoint-4").exists()  # stopped before the planned steps were done
    assert verify(ledger).ok


def test_a_resume_with_room_left_after_the_cut_trains_to_the_end(capsys, tiny, resumable):
    ledger, out, spent = resumable
    code = soft_prompt(tiny, ledger, out, "--resume_from_checkpoint", "last", "--max_steps", "4")
    err = capsys.readouterr().err
    assert code == 0, err
    done = settlement(out)
    assert not done["stopped_by_budget"] and done["measurements"] > 0
    assert (out / "checkpoint-4" / SPEND_FILE).exists()

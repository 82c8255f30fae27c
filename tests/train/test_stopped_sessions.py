"""Sessions stopped from outside or by their budget's hard limit, on the tiny model: SIGTERM during an
exposure still records the debt of the episodes lived, and work that checks no budget (an evaluation) is cut
at the reservation rather than charged many times over it."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.ledger.helpers import funded_ledger
from tests.train.helpers import soft_prompt_argv
from welfare_offsets.ledger import Ledger
from welfare_offsets.train import exposure
from welfare_offsets.train.cli import main as welfare_main


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture
def unhandled_sigterm_fails():
    """Should the command not handle SIGTERM itself, fail the test rather than terminate the test runner."""

    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the test: the command did not handle it")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, previous)


def _entries(ledger_path, kind):
    with Ledger.open(ledger_path, create=False) as ledger:
        assert ledger.verify().ok
        return [e.payload for e in ledger.entries(kind=kind)]


def test_sigterm_during_an_exposure_records_the_episodes_lived_and_settles(
    tiny, tmp_path, monkeypatch, capsys, unhandled_sigterm_fails
):
    import welfare_offsets.interventions.exposure as lived

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    real, calls = lived.live_through, []

    def live_through(*args, **kwargs):  # the neutral zero point, one chunk of 2 episodes, then SIGTERM
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(lived, "live_through", live_through)
    monkeypatch.setattr(lived, "episodes_per_step", lambda model: 2)
    out = tmp_path / "exposure"
    argv = ["--model", tiny["model"], "--stimuli", tiny["stimuli"], "--ledger", ledger, "--account", "lab"]
    argv += ["--budget_hours", "0.5", "--max_episodes", "6", "--eval_max_items", "4", "--eval_probes", "self_report"]
    argv += ["--eval_bootstrap", "100", "--output_dir", out, "--progress", "false", "--report_to", "none"]
    assert exposure.main([str(a) for a in argv]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] is True and results["stopped_by_budget"] is False
    assert (results["completed"], results["planned"]) == (2, 6)
    measurements = _entries(ledger, "measurement")  # one balance per in-context probe, of those 2 episodes
    assert {m["probe"] for m in measurements} == {"self_report", "stop"}
    assert all("debt" in m and "2 episodes" in m["note"] for m in measurements)
    (settle,) = _entries(ledger, "settle")
    assert (out / "ledger.json").exists()
    assert settle["stopped_by_budget"] is False


def test_an_evaluation_that_outlasts_the_reservation_is_cut_there(tiny, tmp_path, capsys, monkeypatch):
    """A budget far below what the "before" evaluation costs: the backstop stops it at the reservation (its
    grace set to 0 here, to keep the test short); the session is settled as stopped by its budget, and no
    results are written."""
    from welfare_offsets.ledger import budget

    monkeypatch.setattr(budget, "BACKSTOP_GRACE_S", 0.0)
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "soft"
    capsys.readouterr()
    code = welfare_main(soft_prompt_argv(tiny, ledger, out, "--budget_hours", "0.000002", "--report_to", "none"))
    err = capsys.readouterr().err
    assert code == 2 and "used up its 2e-06 reserved accelerator-hours" in err, err
    (settle,) = _entries(ledger, "settle")
    assert settle["stopped_by_budget"] is True
    assert not (out / "results.json").exists()

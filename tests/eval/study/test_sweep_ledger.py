"""Every metered sweep hour is in the ledger: a sweep run is one ledger session (reserved before anything is
written, settled when its subjects are measured), a budget too small for every subject stops between subjects
with the measured ones reported, a rerun pays only for what it measures, and bad budget or account input exits
2 with nothing reserved and nothing written. Tiny untrained subjects: the plumbing, not the readings."""

from __future__ import annotations

import json
import time

import pytest

from tests.ledger.helpers import funded_ledger, killed_session
from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.meter import Meter
from welfare_offsets.train.cli import main as welfare

SUBJECT_SECONDS = 36.0  # what each subject costs on the budget's clock in the stopping test: 0.01 h


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def subjects(tiny, tmp_path_factory) -> list[str]:
    """Three tiny subjects with weights of their own (so three cache keys), named s0, s1, s2."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("sweep-ledger-subjects")
    config, tokenizer = AutoConfig.from_pretrained(tiny["model"]), AutoTokenizer.from_pretrained(tiny["model"])
    names = []
    for k in range(3):
        torch.manual_seed(k + 1)
        AutoModelForCausalLM.from_config(config).save_pretrained(root / f"s{k}")
        tokenizer.save_pretrained(root / f"s{k}")
        names.append(json.dumps({"model": str(root / f"s{k}"), "name": f"s{k}"}))
    return names


@pytest.fixture
def ledger(tmp_path):
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path, 10.0, account="lab").close()
    return path


def _sweep(capsys, tiny, subjects, out, ledger, *extra) -> tuple[int, str, str]:
    argv = ["sweep", "--subjects", *subjects, "--stimuli", str(tiny["stimuli"]), "--out", str(out)]
    argv += ["--ledger", str(ledger), "--account", "lab", "--max_items", "2", "--probes", "self_report"]
    argv += ["--bootstrap", "100", "--progress", "false", *map(str, extra)]
    capsys.readouterr()
    code = welfare(argv)
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def _entries(ledger, kind: str) -> list:
    with Ledger.open(ledger, create=False) as book:
        return book.entries(kind=kind)


def _cache(out) -> dict:
    return {p.name: p.read_bytes() for p in (out / "cache").glob("*.json")}


def test_a_sweep_is_one_ledger_session_settled_verified_and_in_the_report_totals(
    capsys, tiny, subjects, ledger, tmp_path
):
    out = tmp_path / "out"
    code, printed, err = _sweep(capsys, tiny, subjects, out, ledger)
    assert code == 0, err
    (reserve,) = _entries(ledger, "reserve")
    (settle,) = _entries(ledger, "settle")
    session = reserve.payload["session"]
    # No budget_hours: everything the account had is reserved while the sweep runs, the unspent rest refunded.
    assert reserve.payload["purpose"] == f"sweep: {out}" and reserve.payload["account"] == "lab"
    assert reserve.payload["postings"]["lab"] == -10_000_000 and reserve.payload["processes"] == 1
    assert settle.payload["session"] == session and settle.payload["basis"] == "metered"
    assert not settle.payload["stopped_by_budget"]
    spent = settle.payload["postings"][f"@spent/{session}"] / 1e6
    assert 0 < spent < 0.01 and settle.payload["postings"]["lab"] == 10_000_000 - round(spent * 1e6)
    assert f"ledger session {session} reserves 10 accelerator-hours of account 'lab'" in printed

    with Ledger.open(ledger, create=False) as book:
        assert book.verify().ok
        assert book.balance("lab").available_hours == pytest.approx(10.0 - spent)
        report = book.report()
    (line,) = report.sessions
    assert (line.session, line.purpose, line.spent_hours) == (session, f"sweep: {out}", spent)
    assert report.spent_hours == spent and report.reserved_hours == 10.0

    results = json.loads((out / "results.json").read_text())
    account = results["cost"]["ledger"]
    assert (account["session"], account["spent_hours"], account["unmeasured"]) == (session, spent, [])
    assert account["settlement"] == {"seq": settle.seq, "hash": settle.hash} and account["budget_hours"] is None
    assert [s["name"] for s in results["subjects"]] == ["s0", "s1", "s2"]
    assert all(s["cost"]["ledger_session"] == session for s in results["subjects"])
    assert results["config"]["resolved"]["account"] == "lab"

    capsys.readouterr()
    assert welfare(["ledger", "report", "--ledger", str(ledger), "--png", str(tmp_path / "report.png")]) == 0
    rows = {row.split("│")[1].strip(): row for row in capsys.readouterr().out.splitlines() if row.count("│") > 5}
    assert "sweep:" in rows[session] and f"{spent:.6g}" in rows[session]
    assert f"{spent:.6g}" in rows["total"]  # the report's totals count the sweep


def test_a_sweep_after_a_killed_one_settles_it_at_its_progress_before_taking_the_account(
    capsys, tiny, subjects, ledger, tmp_path
):
    # A sweep without a budget killed mid-round holds the whole account until repair settles it at its progress.
    dead = killed_session(ledger, 10.0, progress_hours=0.5, account="lab")
    code, printed, err = _sweep(capsys, tiny, subjects[:1], tmp_path / "out", ledger)
    assert code == 0, err
    killed, settled = _entries(ledger, "settle")
    assert killed.payload["session"] == dead and killed.payload["basis"].startswith("repair: progress recorded")
    assert killed.payload["postings"][f"@spent/{dead}"] == 500_000  # charged its progress, not its reservation
    assert "reserves 9.5 accelerator-hours of account 'lab'" in printed and settled.payload["basis"] == "metered"


@pytest.fixture
def slow_subjects(monkeypatch):
    """Each subject costs SUBJECT_SECONDS more on the budget's meter than it took: a deterministic budget."""
    import welfare_offsets.eval.study.sweep as sweep
    import welfare_offsets.ledger.budget as budget

    extra = [0.0]

    class Clocked(Meter):
        @classmethod
        def for_device(cls, device, processes=1, gpus=()):
            return cls(device, processes, clock=lambda: time.perf_counter() + extra[0])

    measure = sweep.measure_subject

    def costly(*args, **kwargs):
        extra[0] += SUBJECT_SECONDS
        yield from measure(*args, **kwargs)

    monkeypatch.setattr(budget, "Meter", Clocked)
    monkeypatch.setattr(sweep, "measure_subject", costly)


def test_a_budget_too_small_stops_between_subjects_settles_and_a_rerun_pays_only_for_the_rest(
    capsys, tiny, subjects, ledger, tmp_path, slow_subjects
):
    out = tmp_path / "out"
    # 0.025 h: two subjects of 0.01 h fit; a third, estimated at the costliest so far, would cross it.
    code, printed, err = _sweep(capsys, tiny, subjects, out, ledger, "--budget_hours", 0.025)
    assert code == 0, err
    assert "stopped by its budget before s2" in printed and printed.count("] measured ") == 2
    (first,) = _entries(ledger, "settle")
    assert first.payload["stopped_by_budget"]
    session = first.payload["session"]
    spent = first.payload["postings"][f"@spent/{session}"] / 1e6
    assert 0.02 <= spent < 0.025 and first.payload["postings"]["lab"] == 25_000 - round(spent * 1e6)
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["subjects"]] == ["s0", "s1"]  # the measured ones, summarised
    assert results["cost"]["ledger"]["unmeasured"] == ["s2"] and results["cost"]["ledger"]["stopped_by_budget"]
    assert results["interpretation"][0].startswith("Not measured, the sweep's budget ran out first: s2;")
    assert "Not measured, the sweep's budget ran out first: s2" in (out / "report.md").read_text()
    cached = _cache(out)
    assert len(cached) == 2

    code, printed, err = _sweep(capsys, tiny, subjects, out, ledger, "--budget_hours", 0.05)
    assert code == 0, err
    assert "2 already measured" in printed and printed.count("] measured ") == 1
    assert {name: data for name, data in _cache(out).items() if name in cached} == cached  # not measured again
    first_reserve, second_reserve = _entries(ledger, "reserve")
    _, second = _entries(ledger, "settle")
    again = second.payload["session"]
    assert again == second_reserve.payload["session"] != session and not second.payload["stopped_by_budget"]
    assert 0.01 <= second.payload["postings"][f"@spent/{again}"] / 1e6 < 0.02  # one subject's worth
    results = json.loads((out / "results.json").read_text())
    paid_by = {s["name"]: s["cost"]["ledger_session"] for s in results["subjects"]}
    assert paid_by == {"s0": session, "s1": session, "s2": again} and results["cost"]["ledger"]["unmeasured"] == []

    code, printed, err = _sweep(capsys, tiny, subjects, out, ledger, "--budget_hours", 0.05)
    assert code == 0 and "0 to measure" in printed, err
    assert len(_entries(ledger, "reserve")) == 2  # every subject cached: nothing reserved, nothing billed
    assert json.loads((out / "results.json").read_text())["cost"]["ledger"]["session"] is None
    with Ledger.open(ledger, create=False) as book:
        assert book.verify().ok and not book.open_sessions()


def test_a_round_the_backstop_cuts_leaves_its_subject_unmeasured_and_the_rest_reported(
    capsys, tiny, subjects, ledger, tmp_path, monkeypatch
):
    """The budget's alarm goes off while the second subject is measured (sent here, so the test does not
    depend on timing): that subject and the next are left unmeasured, the first is reported, the session
    settles as stopped by its budget, and a rerun measures only the rest."""
    import os
    import signal

    import welfare_offsets.eval.study.sweep as sweep

    measure, calls = sweep.measure_subject, []

    def alarmed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGALRM)
        yield from measure(*args, **kwargs)

    monkeypatch.setattr(sweep, "measure_subject", alarmed)
    out = tmp_path / "out"
    code, printed, err = _sweep(capsys, tiny, subjects, out, ledger, "--budget_hours", 0.5)
    assert code == 0, err
    assert "stopped by its budget before s1, s2: a round ran past its reservation and was cut" in printed
    (settle,) = _entries(ledger, "settle")
    assert settle.payload["stopped_by_budget"]
    results = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in results["subjects"]] == ["s0"]
    assert results["cost"]["ledger"]["unmeasured"] == ["s1", "s2"]
    monkeypatch.setattr(sweep, "measure_subject", measure)
    code, printed, err = _sweep(capsys, tiny, subjects, out, ledger, "--budget_hours", 0.5)
    assert code == 0 and "1 already measured" in printed, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budget_hours", "-1"], "budget_hours must be more than zero accelerator-hours"),
        (["--budget_hours", "0"], "budget_hours must be more than zero accelerator-hours"),
        (["--budget_hours", "nan"], "budget_hours: expected a finite number"),
        (["--budget_hours", "2e9"], "more than one entry may move"),
        (["--budget_hours", "abc"], "budget_hours"),
        (["--budget_hours", "20"], "account 'lab' has 10 accelerator-hours available, less than the 20 asked for"),
        (["--account", "no such account"], "account 'no such account' is not a valid name"),
        (["--account", "nobody"], "account 'nobody' has never been funded"),
        (["--account", "drained"], "account 'drained' has no accelerator-hours available"),
        (["--ledger", "{tmp}/none.sqlite"], "no ledger at"),
        (["--config", "{tmp}/list.yaml"], "budget_hours"),
        (["--config", "{tmp}/mapping.yaml"], "account"),
        (["--config", "{tmp}/bool.yaml"], "budget_hours"),
    ],
)
def test_bad_budget_or_account_input_exits_2_with_nothing_reserved_or_written(
    capsys, tiny, subjects, ledger, tmp_path, extra, message
):
    with Ledger.open(ledger, create=False) as book:
        book.fund("drained", 1.0)
        book.transfer("drained", "elsewhere", 1.0)
    (tmp_path / "list.yaml").write_text("budget_hours: [1]\n")
    (tmp_path / "mapping.yaml").write_text("account: {lab: 1}\n")
    (tmp_path / "bool.yaml").write_text("budget_hours: true\n")
    out = tmp_path / "out"
    extra = [part.format(tmp=tmp_path) for part in extra]
    code, _, err = _sweep(capsys, tiny, subjects, out, ledger, *extra)  # a later flag wins over --ledger
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and not out.exists()
    assert not _entries(ledger, "reserve")

"""The capability gate: each session recipe states the capability retention it requires
(`max_perplexity_ratio`, held-out perplexity after / before), a session beyond it is marked "capability
lost" everywhere it is reported, and `welfare plan` counts none of its credit, nor that of the sessions
run with its artifact; nor does it schedule repayment of debt, or count credit, that is not a reliable reading.

The marked session is a real soft-prompt session on the tiny untrained model (seconds), whose prompt is
made to destroy capability: the prompted subject's measured perplexity is scaled x30.7 (a real 40-step
soft prompt does x12 or more to the synthetic subject: tests/interventions/test_offsets.py, slow). The
plan's ledgers are built by code.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger, verify
from tests.train.helpers import soft_prompt_argv
from tests.wandb_log import record_bytes
from welfare_offsets.eval.capability import capability_gate
from welfare_offsets.eval.common.results import SessionResult, write_result
from welfare_offsets.ledger import Ledger
from welfare_offsets.train import plan_cmd
from welfare_offsets.train.cli import main as welfare_main

DESTROYED = 30.7  # the prompted subject's held-out perplexity, as a multiple of the bare subject's


def test_the_gate_passes_up_to_the_recipes_ratio_and_fails_beyond_it():
    def gate(ratio, limit=1.25):
        return capability_gate({"heldout_neutral_perplexity": {"ratio": ratio}}, max_perplexity_ratio=limit)

    assert gate(1.25) == {
        "passed": True,
        "criterion": "heldout perplexity ratio <= 1.25",
        "measured": {"heldout_perplexity_ratio": 1.25},
        "reason": "held-out neutral perplexity x1.25 of before",
    }
    lost = gate(DESTROYED)
    assert not lost["passed"] and lost["measured"]["heldout_perplexity_ratio"] == DESTROYED
    assert lost["reason"].endswith("beyond the recipe's heldout perplexity ratio <= 1.25: capability lost")
    assert gate(DESTROYED, limit=40)["passed"] and not gate(math.nan)["passed"]  # a model that no longer scores


@pytest.fixture(scope="module")
def lost_session(tiny, tmp_path_factory):
    """A soft-prompt session whose prompt destroys capability, logged to W&B offline: folder, ledger, stdout."""
    import welfare_offsets.eval.capability as capability

    root = tmp_path_factory.mktemp("capability-lost")
    ledger = root / "ledger.sqlite"
    funded_ledger(ledger, hours=10.0).close()
    real = capability.perplexity

    def destroyed_by_the_prompt(subject, experiences, **kwargs):
        measured = real(subject, experiences, **kwargs)
        scale = 1.0 if subject.soft_prompt is None else DESTROYED
        return {**measured, "perplexity": measured["perplexity"] * scale}

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(capability, "perplexity", destroyed_by_the_prompt)
        patch.setenv("WANDB_MODE", "offline")
        patch.delenv("WANDB_API_KEY", raising=False)
        assert welfare_main(soft_prompt_argv(tiny, ledger, root / "soft", "--report_to", "wandb")) == 0
    return root / "soft", ledger, printed.getvalue()


def test_a_session_beyond_the_gate_is_marked_capability_lost_everywhere(lost_session):
    out, ledger, printed = lost_session
    results = json.loads((out / "results.json").read_text())
    gate = results["capability_gate"]
    ratio = results["capability"]["heldout_neutral_perplexity"]["ratio"]
    assert ratio == pytest.approx(DESTROYED, rel=0.01)  # the prompt itself barely moves an untrained model
    assert gate["passed"] is False and gate["measured"] == {"heldout_perplexity_ratio": ratio}
    assert gate["criterion"] == "heldout perplexity ratio <= 1.25"  # the default, stated in the recipe

    assert "capability gate (heldout perplexity ratio <= 1.25): CAPABILITY LOST" in printed

    with Ledger.open(ledger, create=False) as book:
        assert book.verify().ok
        (measured,) = book.entries(kind="measurement")
    assert "capability gate heldout perplexity ratio <= 1.25: CAPABILITY LOST" in measured.payload["note"]

    (run,) = out.rglob("offline-run-*/*.wandb")
    logged = record_bytes(run)
    assert re.search(rb"capability_lost.{0,16}true", logged, re.DOTALL)
    assert b"heldout perplexity ratio <= 1.25" in logged


def test_an_exposure_run_with_the_artifact_records_the_digest_the_plan_links_it_by(lost_session, tiny):
    out, ledger, _ = lost_session
    lived = out.parent / "euphoric-with-lost-prompt"
    argv = ["--model", tiny["model"], "--stimuli", tiny["stimuli"], "--ledger", ledger, "--account", "lab"]
    argv += ["--budget_hours", "0.5", "--output_dir", lived, "--adapter", out / "soft_prompt", "--report_to", "none"]
    argv += ["--valence", "euphoric", "--max_episodes", "2", "--eval_max_items", "2", "--reply_tokens", "4"]
    assert welfare_main(["offset", "exposure", *map(str, argv)]) == 0
    offset, exposure = (json.loads((folder / "results.json").read_text()) for folder in (out, lived))
    assert exposure["subject"]["adapter_sha256"] == offset["artifact_sha256"] is not None


def test_an_offset_that_keeps_capability_passes_the_gate(tiny, tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=10.0).close()
    assert welfare_main(soft_prompt_argv(tiny, ledger, tmp_path / "soft", "--report_to", "none")) == 0
    results = json.loads((tmp_path / "soft" / "results.json").read_text())
    assert results["capability_gate"]["passed"] is True
    assert "capability gate (heldout perplexity ratio <= 1.25): passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, expected",
    [
        ("[1.5]", "expected a number, got list"),
        ("'1.5'", "expected a number, got str"),
        ("0.5", "expected a finite number > 1.0, got 0.5"),
        ("1", "expected a finite number > 1.0, got 1"),
    ],
)
def test_a_bad_max_perplexity_ratio_in_a_recipe_exits_2_and_writes_nothing(tiny, tmp_path, capsys, value, expected):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=10.0).close()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"max_perplexity_ratio: {value}\n")
    out = tmp_path / "soft"
    assert welfare_main(soft_prompt_argv(tiny, ledger, out, "--report_to", "none", "--config", recipe)) == 2
    err = capsys.readouterr().err
    assert "max_perplexity_ratio" in err and expected in err and str(recipe) in err, err
    assert not out.exists()
    with Ledger.open(ledger, create=False) as book:
        assert [e.kind for e in book.entries()] == ["fund"]


# -- welfare plan ------------------------------------------------------------------------------------

MODEL = "tiny-subject"


def settled_session(book: Ledger, folder: Path, *, spent: float, measure: dict, **fields) -> str:
    """A settled session in `book` whose results.json (in `folder`) holds `fields`, measured on self_report."""
    session = book.reserve("lab", 1.0, purpose=f"test: {folder.name}").payload["session"]
    valence = fields.pop("valence", "euphoric")
    folder.mkdir()
    result = SessionResult(
        kind=fields.pop("kind", f"{valence}-exposure"),
        session=session,
        subject={"model_id": MODEL, "adapter": fields.pop("adapter", None), **fields.pop("subject", {})},
        stimuli={},
        config={"passed": {}, "resolved": {"session": {"model": MODEL}, "exposure": {"valence": valence}}},
        **fields,
    )
    path = write_result(folder / "results.json", result)
    book.record_measurement(session, "self_report", results=[path], **measure)
    book.settle(session, spent)
    return session


def balance(debt: float = 0.0, credit: float = 0.0, reliable: bool = True) -> dict:
    return {"self_report": {"debt": debt, "credit": credit, "reliable": reliable}}


def debt_session(book: Ledger, folder: Path, debt: float, reliable: bool = True) -> str:
    """A settled dysphoric exposure that recorded `debt` on self_report."""
    return settled_session(
        book,
        folder,
        spent=0.1,
        measure={"debt": debt},
        valence="dysphoric",
        balance=balance(debt=debt, reliable=reliable),
    )


def plan_of(ledger: Path, capsys, tmp_path) -> tuple[plan_cmd.Plan, int, str]:
    """The plan for the tiny subject's self-report debt, and what `welfare plan` prints for it."""
    with Ledger.open(ledger, create=False) as book:
        plan = plan_cmd.make_plan(plan_cmd.ledger_sessions(book), probe="self_report", model=MODEL, funds=9.0)
    capsys.readouterr()
    argv = ["--ledger", str(ledger), "--account", "lab", "--launcher", "python", "--out", str(tmp_path / "plan")]
    code = plan_cmd.main(argv)
    return plan, code, capsys.readouterr().out


def test_plan_counts_no_credit_of_a_capability_lost_session_or_one_run_with_its_artifact(tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    destroyed = {"heldout_neutral_perplexity": {"ratio": DESTROYED}}
    with funded_ledger(ledger, hours=10.0) as book:
        debt_session(book, tmp_path / "d", 2.0)
        lost = settled_session(
            book,
            tmp_path / "lost",
            spent=0.1,
            measure={"recovered": 1.0},
            kind="soft-prompt",
            capability=destroyed,
            capability_gate=capability_gate(destroyed, max_perplexity_ratio=1.25),
            artifact_sha256="a" * 64,
        )
        with_lost = settled_session(  # a big, cheap credit, earned by the broken subject
            book,
            tmp_path / "with-lost",
            spent=0.01,
            measure={"credit": 5.0},
            adapter="lost/soft_prompt",
            subject={"adapter_sha256": "a" * 64},
            balance=balance(credit=5.0),
        )
        fine = settled_session(book, tmp_path / "fine", spent=0.1, measure={"credit": 0.5}, balance=balance(credit=0.5))

    plan, code, printed = plan_of(ledger, capsys, tmp_path)
    assert plan.debt == pytest.approx(1.5)  # 2.0 debt - 0.5 credit of the sound session only
    assert plan.option.recipe.session == fine and plan.option.sessions == 1 and plan.sessions == 3
    assert code == 0
    (lost_line,) = [line for line in printed.splitlines() if f"session {lost} " in line]
    assert lost_line.startswith("Not counted:") and "capability lost" in lost_line
    (with_lost_line,) = [line for line in printed.splitlines() if f"session {with_lost} " in line]
    assert with_lost_line.startswith("Not counted:") and f"artifact of session {lost}" in with_lost_line
    assert "its recovery and credit are not counted" in lost_line
    assert verify(ledger).ok


def test_plan_schedules_no_repayment_of_debt_that_is_not_a_reliable_reading(tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    with funded_ledger(ledger, hours=10.0) as book:
        unreliable = debt_session(book, tmp_path / "d", 2.0, reliable=False)
        settled_session(book, tmp_path / "e", spent=0.1, measure={"credit": 0.5}, balance=balance(credit=0.5))

    plan, code, printed = plan_of(ledger, capsys, tmp_path)
    assert code == 0 and plan.debt == pytest.approx(-0.5) and plan.sessions == 0
    assert plan.unreliable_debt == pytest.approx(2.0) and plan.unreliable_sessions == (unreliable,)
    assert f"Not scheduled: debt 2 measured by session(s) {unreliable} is not a reliable reading" in printed
    assert "Nothing reliably measured to repay." in printed
    assert not (tmp_path / "plan").exists()  # no recipe, no command

    with Ledger.open(ledger, create=False) as book:  # a reliable reading beside it is scheduled, and only it
        reliable = debt_session(book, tmp_path / "d2", 1.0)
    plan, code, printed = plan_of(ledger, capsys, tmp_path)
    assert code == 0 and plan.debt == pytest.approx(0.5) and plan.sessions == 1 and plan.pilot.session == reliable
    assert "Not scheduled: debt 2" in printed and "1 session(s)" in printed


def test_plan_counts_no_credit_that_is_not_a_reliable_reading_nor_prices_with_it(tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    with funded_ledger(ledger, hours=10.0) as book:
        debt_session(book, tmp_path / "d", 2.0)
        shaky = settled_session(  # a big, cheap credit, read off answers the subject barely gave
            book, tmp_path / "shaky", spent=0.01, measure={"credit": 5.0}, balance=balance(credit=5.0, reliable=False)
        )
        fine = settled_session(book, tmp_path / "fine", spent=0.1, measure={"credit": 0.5}, balance=balance(credit=0.5))

    plan, code, printed = plan_of(ledger, capsys, tmp_path)
    assert code == 0 and plan.debt == pytest.approx(1.5)  # 2.0 debt - 0.5 reliable credit
    assert plan.option.recipe.session == fine and plan.option.sessions == 1
    (line,) = [line for line in printed.splitlines() if f"session {shaky} " in line]
    assert line.startswith("Not counted:") and "not a reliable reading" in line

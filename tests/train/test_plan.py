"""`welfare plan` on a ledger with known debt and a measured price: the schedule's arithmetic, the
"cannot" answer with its shortfall, and --execute actually repaying the debt."""

from __future__ import annotations

import math

import pytest
import yaml

from tests.ledger.helpers import funded_ledger
from welfare_offsets.ledger import Ledger
from welfare_offsets.train import exposure, plan_cmd

FLAGS = ["--eval_max_items", "8", "--eval_bootstrap", "200", "--report_to", "none"]


@pytest.fixture(scope="module")
def indebted(synthetic, tmp_path_factory):
    """A ledger where the synthetic subject lived 12 dysphoric episodes (debt) and one 2-episode euphoric
    exposure (its price), and its sessions' numbers."""
    root = tmp_path_factory.mktemp("plan")
    ledger = root / "ledger.sqlite"
    # Funds far beyond what the schedule reserves even with --budget_margin 200 on a loaded machine, so that
    # only the debt and the price decide the plan.
    funded_ledger(ledger, hours=100.0).close()
    common = [
        "--model",
        synthetic.model,
        "--stimuli",
        synthetic.stimuli,
        "--ledger",
        str(ledger),
        "--account",
        "lab",
        "--budget_hours",
        "0.1",
        *FLAGS,
    ]
    assert (
        exposure.main([*common, "--valence", "dysphoric", "--max_episodes", "12", "--output_dir", str(root / "d")]) == 0
    )
    assert (
        exposure.main([*common, "--valence", "euphoric", "--max_episodes", "2", "--output_dir", str(root / "e")]) == 0
    )
    return ledger, synthetic.model


def _ledger_numbers(ledger_path):
    with Ledger.open(ledger_path, create=False) as ledger:
        report = ledger.report()
        funds = ledger.balance("lab").available_hours
    totals = report.probes["self_report"]
    euphoric = [m for m in report.measurements if m.probe == "self_report" and m.credit]
    return totals, euphoric, funds


def test_plan_schedules_enough_sessions_of_the_measured_price(indebted, capsys, tmp_path):
    ledger, model = indebted
    totals, euphoric, funds = _ledger_numbers(ledger)
    assert totals.open_debt > 0
    with Ledger.open(ledger, create=False) as book:
        plan = plan_cmd.make_plan(plan_cmd.ledger_sessions(book), probe="self_report", model=model, funds=funds)
    credit, hours = euphoric[0].credit, euphoric[0].session_spent_hours
    assert plan.debt == pytest.approx(totals.open_debt)
    assert plan.option.credit_per_hour == pytest.approx(credit / hours)
    assert plan.sessions == math.ceil(totals.open_debt / credit)
    assert plan.budget_per_session == pytest.approx(plan_cmd.BUDGET_MARGIN * hours)
    assert plan.feasible

    assert (
        plan_cmd.main(["--ledger", str(ledger), "--account", "lab", "--launcher", "python", "--out", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    recipe = tmp_path / "recipes" / "euphoric-exposure.yaml"
    assert f"{plan.sessions} session(s)" in out and f"--config {recipe}" in out and "--budget_hours" in out
    assert yaml.safe_load(recipe.read_text())["valence"] == "euphoric" and "valence: euphoric" in out


def test_plan_says_when_funds_cannot_cover_the_debt(indebted, capsys):
    ledger, model = indebted
    with Ledger.open(ledger, create=False) as book:
        plan = plan_cmd.make_plan(plan_cmd.ledger_sessions(book), probe="self_report", model=model, funds=1e-6)
    assert not plan.feasible and plan.shortfall_hours == pytest.approx(plan.expected_hours - 1e-6)
    assert "CANNOT" in plan_cmd.describe(plan, "lab") and "short by" in plan_cmd.describe(plan, "lab")


def test_plan_execute_repays_the_debt(indebted, tmp_path):
    ledger, model = indebted
    # A generous margin keeps the budget from binding, so the test does not depend on timing.
    argv = [
        "--ledger",
        str(ledger),
        "--account",
        "lab",
        "--launcher",
        "python",
        "--out",
        str(tmp_path),
        "--budget_margin",
        "200",
        "--execute",
    ]
    assert plan_cmd.main(argv) == 0
    totals, _, _ = _ledger_numbers(ledger)
    # The subject is deterministic (greedy replies, same episodes), so the planned sessions earn exactly
    # the measured credit each, and the schedule was sized to cover the debt.
    assert totals.open_debt <= 1e-9
    with Ledger.open(ledger, create=False) as book:
        assert book.verify().ok


def test_plan_and_offset_commands_refuse_bad_input(tmp_path, capsys):
    from welfare_offsets.train.cli import main

    assert main(["plan", "--ledger", str(tmp_path / "none.sqlite")]) == 2
    assert main(["plan", "--ledger", str(tmp_path / "none.sqlite"), "--budget_margin", "0.5"]) == 2
    assert "budget_margin" in capsys.readouterr().err
    assert main(["offset", "no-such-kind"]) == 2
    assert "unknown kind" in capsys.readouterr().err
    assert main(["offset"]) == 0 and "soft-prompt" in capsys.readouterr().out


def test_plan_without_a_measured_price_proposes_a_pilot(synthetic, tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    argv = [
        "--model",
        synthetic.model,
        "--stimuli",
        synthetic.stimuli,
        "--ledger",
        str(ledger),
        "--account",
        "lab",
        "--budget_hours",
        "0.1",
        "--valence",
        "dysphoric",
        "--max_episodes",
        "4",
        "--output_dir",
        str(tmp_path / "d"),
        *FLAGS,
    ]
    assert exposure.main(argv) == 0
    capsys.readouterr()
    assert (
        plan_cmd.main(
            ["--ledger", str(ledger), "--account", "lab", "--launcher", "python", "--out", str(tmp_path / "plan")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "price is unknown" in out and "pilot-euphoric-exposure" in out
    # The pilot is the debt's session as recorded, living euphoric experiences instead.
    recipe = yaml.safe_load((tmp_path / "plan" / "recipes" / "pilot-euphoric-exposure.yaml").read_text())
    assert recipe["valence"] == "euphoric" and recipe["max_episodes"] == 4 and recipe["eval_max_items"] == 8
    assert "--budget_hours 0.1" in out.strip().splitlines()[-1]


def test_plan_never_writes_its_recipes_into_a_folder_it_did_not_make(tmp_path):
    from welfare_offsets.eval.common.errors import InputError

    recipes = tmp_path / "plan" / "recipes"
    recipes.mkdir(parents=True)
    (recipes / "euphoric-exposure.yaml").write_text("mine: true\n")
    with pytest.raises(InputError, match="did not write"):
        plan_cmd.write_recipe({"valence": "euphoric"}, recipes / "euphoric-exposure.yaml")
    assert (recipes / "euphoric-exposure.yaml").read_text() == "mine: true\n"
    fresh = tmp_path / "fresh" / "recipes" / "euphoric-exposure.yaml"
    for _ in range(2):  # our own recipes folder is reused
        assert plan_cmd.write_recipe({"valence": "euphoric"}, fresh).read_text() == "valence: euphoric\n"

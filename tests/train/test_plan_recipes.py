"""The recipes `welfare plan` writes under <out>/recipes/ (train/plan_cmd.py): a recorded exposure
session's settings, kept as they were run, except those each planned session sets on its own command line
(budget, output folder, ledger, account) and those that run code, which only plan's own flag passes.

The recordings are real exposure sessions on a tiny untrained model (seconds each). Their debt and credit
are added on a probe of this test's own, citing the sessions' own results.json, so the schedule does not
depend on what the untrained model happens to feel.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import yaml

from tests.ledger.helpers import funded_ledger, verify
from welfare_offsets.ledger import Ledger
from welfare_offsets.train.cli import main as welfare_main

PROBE = "planted"  # the probe this test records debt and credit on
RECORDED = {
    "split": "heldout",
    "seed": 3,
    "eval_max_items": 5,
    "eval_bootstrap": 150,
    "reply_tokens": 4,
    "report_to": "none",
}
SET_BY_EACH_SESSION = ("budget_hours", "output_dir", "ledger", "account", "resume_from_checkpoint", "overwrite")
CODE_RUNNING = ("trust_remote_code", "model_init_kwargs")


def exposure(tiny, ledger: Path, out: Path, valence: str, episodes: int, **amount: float) -> str:
    """A real exposure session run with trust_remote_code on (as a recording might say), then `amount` (debt or
    credit) recorded for it on PROBE, citing its results.json; returns the session id."""
    flags = [f"--{k}={v}" for k, v in RECORDED.items()]
    assert (
        welfare_main(
            [
                "offset",
                "exposure",
                "--model",
                str(tiny["model"]),
                "--stimuli",
                str(tiny["stimuli"]),
                "--ledger",
                str(ledger),
                "--account",
                "lab",
                "--budget_hours",
                "0.05",
                "--output_dir",
                str(out),
                "--valence",
                valence,
                "--max_episodes",
                str(episodes),
                "--trust_remote_code",
                "true",
                *flags,
            ]
        )
        == 0
    )
    session = json.loads((out / "ledger.json").read_text())["session"]
    with Ledger.open(ledger, create=False) as book:
        book.record_measurement(session, PROBE, results=[out / "results.json"], **amount)
    return session


@pytest.fixture(scope="module")
def recorded(tiny, tmp_path_factory):
    """A ledger with a dysphoric exposure (debt 3 on PROBE), and a copy of it where a euphoric exposure also
    earned credit 1 (the price): (the ledger with a price, the one without)."""
    root = tmp_path_factory.mktemp("plan-recipes")
    unpriced, priced = root / "unpriced.sqlite", root / "priced.sqlite"
    for ledger in (unpriced, priced):
        funded_ledger(ledger, hours=10.0).close()
        exposure(tiny, ledger, root / f"{ledger.stem}-dysphoric", "dysphoric", 3, debt=3.0)
    exposure(tiny, priced, root / "priced-euphoric", "euphoric", 2, credit=1.0)
    return priced, unpriced


def plan(capsys, ledger: Path, out: Path, *extra) -> tuple[int, str, list[list[str]]]:
    """`welfare plan` on PROBE: (exit code, stdout, the session commands it printed)."""
    capsys.readouterr()
    code = welfare_main(
        [
            "plan",
            "--ledger",
            str(ledger),
            "--account",
            "lab",
            "--probe",
            PROBE,
            "--launcher",
            "python",
            "--out",
            str(out),
            *extra,
        ]
    )
    stdout = capsys.readouterr().out
    commands = [shlex.split(line) for line in stdout.splitlines() if " --config " in line and " --output_dir " in line]
    return code, stdout, commands


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_recipe_keeps_the_recorded_settings_and_drops_the_rest(capsys, tmp_path, recorded, tiny):
    priced, _ = recorded
    code, stdout, commands = plan(capsys, priced, tmp_path / "plan")
    assert code == 0, stdout
    path = tmp_path / "plan" / "recipes" / "euphoric-exposure.yaml"
    recipe = yaml.safe_load(path.read_text())
    assert {k: recipe[k] for k in RECORDED} == RECORDED
    assert (recipe["valence"], recipe["max_episodes"]) == ("euphoric", 2)  # the priced (euphoric) session's
    assert recipe["model"] == str(tiny["model"]) and recipe["stimuli"] == str(tiny["stimuli"])
    assert not set(recipe) & {*SET_BY_EACH_SESSION, *CODE_RUNNING}
    assert f"Recipe {path}" in stdout and path.read_text().rstrip() in stdout  # what runs is printed


def test_each_planned_session_sets_its_own_budget_folder_ledger_and_account(capsys, tmp_path, recorded):
    priced, _ = recorded
    code, stdout, commands = plan(capsys, priced, tmp_path / "plan")
    assert code == 0 and len(commands) == 2, stdout  # open debt 3 - 1 (repaid by the priced session), 1 a session
    recipe = tmp_path / "plan" / "recipes" / "euphoric-exposure.yaml"
    for k, command in enumerate(commands, 1):
        assert flag(command, "--config") == str(recipe)
        assert flag(command, "--output_dir") == f"{tmp_path / 'plan'}/euphoric-{k}"
        assert (flag(command, "--ledger"), flag(command, "--account")) == (str(priced), "lab")
        assert float(flag(command, "--budget_hours")) > 0
        assert "--trust_remote_code" not in command  # recorded as true, never taken from the recording


def test_trust_remote_code_comes_only_from_plans_own_flag(capsys, tmp_path, recorded):
    priced, _ = recorded
    code, stdout, commands = plan(capsys, priced, tmp_path / "plan", "--trust_remote_code")
    assert code == 0 and commands, stdout
    assert all(flag(c, "--trust_remote_code") == "true" for c in commands)
    assert "trust_remote_code" not in yaml.safe_load(
        (tmp_path / "plan" / "recipes" / "euphoric-exposure.yaml").read_text()
    )


def test_without_a_price_the_pilot_is_the_debts_session_living_euphoric_experiences(capsys, tmp_path, recorded):
    _, unpriced = recorded
    code, stdout, commands = plan(capsys, unpriced, tmp_path / "plan")
    assert code == 0 and len(commands) == 1, stdout
    recipe = yaml.safe_load((tmp_path / "plan" / "recipes" / "pilot-euphoric-exposure.yaml").read_text())
    assert {k: recipe[k] for k in RECORDED} == RECORDED
    assert (recipe["valence"], recipe["max_episodes"]) == ("euphoric", 3)  # the dysphoric session's episodes
    assert not set(recipe) & {*SET_BY_EACH_SESSION, *CODE_RUNNING}
    assert float(flag(commands[0], "--budget_hours")) == 0.05  # the recorded session's own budget
    assert flag(commands[0], "--output_dir") == f"{tmp_path / 'plan'}/pilot-euphoric-exposure"


def test_a_planned_command_runs_as_printed(capsys, tmp_path, tiny):
    """The recipe and flags a plan prints are accepted by the exposure entry as they are, and it runs."""
    ledger = tmp_path / "ledger.sqlite"  # its own: the session it runs must not change the other tests' plans
    funded_ledger(ledger, hours=10.0).close()
    exposure(tiny, ledger, tmp_path / "dysphoric", "dysphoric", 3, debt=3.0)
    code, stdout, (command,) = plan(capsys, ledger, tmp_path / "plan")
    assert code == 0, stdout
    assert welfare_main(["offset", "exposure", *command[command.index("--config") :]]) == 0
    ran = json.loads((Path(flag(command, "--output_dir")) / "ledger.json").read_text())
    with Ledger.open(ledger, create=False) as book:
        assert [e for e in book.entries(kind="measurement") if e.payload["session"] == ran["session"]]
    assert verify(ledger).ok


def test_a_margin_whose_budget_the_funds_cannot_reserve_says_by_how_much(capsys, tmp_path, recorded):
    """The review's case: a tiny expected spend, but each session first reserves margin x spend, more than
    the account has. The shortfall is what that reservation lacks, not 0."""
    from welfare_offsets.train import plan_cmd

    priced, _ = recorded
    with Ledger.open(priced, create=False) as book:
        sessions, funds = plan_cmd.ledger_sessions(book), book.balance("lab").available_hours
    model = next(s["results"].subject["model_id"] for s in sessions)
    spend = plan_cmd.make_plan(sessions, probe=PROBE, model=model, funds=funds).option.hours_per_session
    margin = math.ceil(2 * funds / spend)  # a budget of twice the funds, whatever the session happened to spend
    schedule = plan_cmd.make_plan(sessions, probe=PROBE, model=model, funds=funds, margin=margin)
    assert schedule.expected_hours < funds < schedule.budget_per_session and not schedule.feasible
    assert schedule.shortfall_hours == pytest.approx(schedule.budget_per_session - funds)
    assert schedule.shortfall_hours == pytest.approx(funds, rel=0.01)
    code, stdout, _ = plan(capsys, priced, tmp_path / "plan", "--budget_margin", str(margin))
    assert code == 1
    assert f"short by {schedule.shortfall_hours:.4g} accelerator-hours to reserve one session's budget" in stdout


@pytest.mark.parametrize("margin", ["inf", "nan", "0.5"])
def test_a_margin_that_is_no_finite_multiple_of_at_least_1_is_refused_first(capsys, tmp_path, recorded, margin):
    priced, _ = recorded
    capsys.readouterr()
    assert (
        welfare_main(
            [
                "plan",
                "--ledger",
                str(priced),
                "--probe",
                PROBE,
                "--out",
                str(tmp_path / "plan"),
                "--budget_margin",
                margin,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"--budget_margin must be a finite number >= 1 (a multiple of the measured spend), got {margin}" in err
    assert "recorded" not in err and not (tmp_path / "plan").exists()


@pytest.mark.parametrize("where", ["empty", "sessions folder", "link"])
def test_plans_out_is_refused_where_it_is_empty_the_ledgers_or_a_link(capsys, tmp_path, recorded, monkeypatch, where):
    priced, _ = recorded
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "real"
    target.mkdir()
    sessions = priced.with_name(priced.name + ".sessions")
    out = {"empty": "", "sessions folder": str(sessions), "link": "linkdir"}[where]
    if where == "link":
        (tmp_path / "linkdir").symlink_to(target)
    before = sorted(p.name for p in sessions.iterdir()) if sessions.exists() else None
    capsys.readouterr()
    assert welfare_main(["plan", "--ledger", str(priced), "--account", "lab", "--probe", PROBE, "--out", out]) == 2
    err = capsys.readouterr().err
    says = {
        "empty": "--out '' is an empty path",
        "sessions folder": "is a ledger file (or its -wal/-shm or .sessions folder)",
        "link": "--out linkdir is a symbolic link (to",
    }[where]
    assert says in err and "nothing" in err, err
    assert list(target.iterdir()) == [] and not (tmp_path / "recipes").exists()
    assert (sorted(p.name for p in sessions.iterdir()) if sessions.exists() else None) == before


def test_a_link_left_at_a_recipes_name_is_replaced_not_written_through(tmp_path):
    from welfare_offsets.train import plan_cmd

    recipe = tmp_path / "plan" / "recipes" / "euphoric-exposure.yaml"
    plan_cmd.write_recipe({"valence": "euphoric"}, recipe)  # our own recipes folder
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("keep me")
    recipe.unlink()
    recipe.symlink_to(theirs)
    assert plan_cmd.write_recipe({"valence": "dysphoric"}, recipe) == recipe
    assert theirs.read_text() == "keep me"
    assert not recipe.is_symlink() and recipe.read_text() == "valence: dysphoric\n"

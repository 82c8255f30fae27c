"""`welfare plan`: a schedule of euphoric-exposure sessions that repays a subject's open welfare debt.

Everything comes from the ledger, so a plan is as auditable as the ledger itself:
* the **debt**: debt minus credit recorded on the probe for sessions on this subject;
* the **price**: credit per accelerator-hour measured by past euphoric-exposure sessions on this subject,
  one option per (recipe, adapter): living through euphoric experiences with an offset adapter or soft
  prompt active is a different option, with its own measured price;
* the **funds**: what the account can still reserve.
Which subject and recipe a session used is read from the results.json its measurement entries cite,
after checking the file's sha256 against the entry, through the session result schema (an older file is
migrated; one of a newer version or another kind is skipped with a message). Offsets that change the
subject itself (LoRA, soft prompt) are state recovery, not credit: they repay debt only through the
exposures run with them. Some readings count for nothing, and the plan says so: a session that lost
capability (its recipe's capability gate failed) and every session run with its artifact earn no credit;
debt or credit measured as "not a reliable reading" (too little probability on valid answers, or no zero
point) is neither scheduled nor counted.

A planned session's recipe is the recorded, structured config (results.json `config.resolved`), validated
by the exposure entry's own dataclasses and written as a YAML recipe in the plan's output folder; the
command passes it with `--config` and sets only budget, output folder, ledger and account itself. A sha256
proves a file is the one cited, not that it is trusted: settings that run code (CODE_RUNNING_SETTINGS) are
never taken from it, only from `welfare plan --trust_remote_code`. `--execute` runs the printed commands
in order and stops at the first failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.output_folder import claim, open_in_place, output_path, refuse_link
from welfare_offsets.eval.common.outputs import write_text_file
from welfare_offsets.eval.common.results import SessionResult, decode_result
from welfare_offsets.eval.common.safe_read import MAX_JSON_BYTES, ReadError, load_yaml_recipe, read_bytes_bounded
from welfare_offsets.train.config import CODE_RUNNING_SETTINGS, ConfigError, build_configs, recipe_values
from welfare_offsets.train.guard import refuse_ledger_paths, run_guarded

BUDGET_MARGIN = 1.25  # default: each planned session's budget over the measured mean spend

# Settings each planned session sets for itself (on its command line), never reused from a recording.
SET_BY_PLAN = ("budget_hours", "output_dir", "ledger", "account", "resume_from_checkpoint", "overwrite")


@dataclass(frozen=True)
class Recipe:
    """The settings a recorded exposure session ran with, as reusable by a planned one (canonical JSON, so
    equal recipes compare equal), and where they were read."""

    values: str
    session: str
    results: str
    budget_hours: float | None  # the recorded session's own budget (a pilot's, lacking a price)
    problem: str | None = None  # why the recording holds no usable recipe

    def mapping(self) -> dict:
        return json.loads(self.values)


@dataclass(frozen=True)
class Option:
    """One way to earn credit on a subject: a euphoric-exposure recipe as it was run (the adapter among its
    settings), priced by the sessions that ran it."""

    recipe: Recipe
    adapter: str | None
    sessions: int
    credit: float
    hours: float

    @property
    def credit_per_hour(self) -> float:
        return self.credit / self.hours if self.hours > 0 else 0.0

    @property
    def hours_per_session(self) -> float:
        return self.hours / self.sessions

    @property
    def credit_per_session(self) -> float:
        return self.credit / self.sessions


@dataclass(frozen=True)
class Plan:
    probe: str
    model: str
    debt: float
    funds: float
    option: Option | None
    sessions: int
    budget_per_session: float
    pilot: Recipe | None = None  # the latest debt session's recipe
    uncounted: tuple[str, ...] = ()  # per session whose credit and recovery are not counted: why
    unreliable_debt: float = 0.0  # debt measured only as not a reliable reading: never scheduled
    unreliable_sessions: tuple[str, ...] = ()  # the sessions that measured it

    @property
    def expected_hours(self) -> float:
        return self.sessions * self.option.hours_per_session if self.option else 0.0

    @property
    def feasible(self) -> bool:
        return self.option is not None and self.expected_hours <= self.funds and self.budget_per_session <= self.funds

    @property
    def shortfall_hours(self) -> float:
        """What the funds lack: for the expected spend, or for reserving one session's budget, whichever is more."""
        return max(0.0, self.expected_hours - self.funds, self.budget_per_session - self.funds)


def ledger_sessions(ledger) -> list[dict]:
    """Per settled session: spend, its measurements per probe, and the SessionResult they cite (verified)."""
    entries = ledger.entries()
    retracted = {e.payload["corrects"] for e in entries if e.kind == "correction"}
    spent = {line.session: line.spent_hours for line in ledger.report().sessions}
    sessions: dict[str, dict] = defaultdict(lambda: {"measures": {}, "results": None})
    for entry in entries:
        if entry.kind != "measurement" or entry.seq in retracted or spent.get(entry.payload["session"]) is None:
            continue
        record = sessions[entry.payload["session"]]
        record["measures"][entry.payload["probe"]] = entry.payload
        for cited in entry.payload.get("results", []):
            if record["results"] is None:
                record["results"], record["results_path"] = _verified_results(cited), cited["path"]
    return [{"session": s, "spent_hours": spent[s], **r} for s, r in sessions.items() if r["results"]]


def _verified_results(cited: dict) -> SessionResult | None:
    """The cited session result if it is still the file the ledger cited (read within bounds), else None."""
    path = Path(cited["path"])
    try:
        data = read_bytes_bounded(path, what="results.json", max_bytes=MAX_JSON_BYTES)
        if hashlib.sha256(data).hexdigest() != cited["sha256"]:
            raise ReadError(f"{path}: changed since the ledger cited it")
        return decode_result(data, SessionResult, path)
    except InputError as err:
        print(f"welfare plan: skipping {path}: {err}", file=sys.stderr)
        return None


def make_plan(sessions: list[dict], *, probe: str, model: str, funds: float, margin: float = BUDGET_MARGIN) -> Plan:
    """The cheapest measured option, and how many of its sessions the open debt needs (counting neither
    credit of capability-lost sessions nor debt that is not a reliable reading; see the module docstring)."""
    debt, pilot, unreliable_debt = 0.0, None, 0.0
    uncounted, unreliable = [], []
    priced: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    recipes: dict[tuple, Recipe] = {}
    lost = {
        s["results"].artifact_sha256: s["session"]
        for s in sessions
        if s["results"].capability_lost and s["results"].artifact_sha256
    }
    for s in sessions:
        results = s["results"]
        subject = results.subject or {}
        measure = s["measures"].get(probe)
        if subject.get("model_id") != model or measure is None:
            continue
        lived_with = lost.get(subject.get("adapter_sha256"))
        counted = not (results.capability_lost or lived_with)
        if not counted:
            why = (
                results.capability_gate.get("reason", "capability lost")
                if results.capability_lost
                else f"run with the artifact of session {lived_with}, which lost capability"
            )
            uncounted.append(f"session {s['session']} ({results.kind}): {why}; its recovery and credit are not counted")
        owed = measure.get("debt") or 0.0
        unreliable_reading = ((results.balance or {}).get(probe) or {}).get("reliable") is False
        if owed and unreliable_reading:
            unreliable_debt, owed = unreliable_debt + owed, 0.0
            unreliable.append(s["session"])
        if counted and unreliable_reading and measure.get("credit"):
            counted = False
            uncounted.append(
                f"session {s['session']} ({results.kind}): its credit on {probe} is not a reliable reading; not counted"
            )
        debt += owed - ((measure.get("credit") or 0.0) if counted else 0.0)
        if owed:
            pilot = recorded_recipe(s)
        if counted and results.kind == "euphoric-exposure" and s["spent_hours"] > 0:
            recipe = recorded_recipe(s)
            key = (recipe.values, subject.get("adapter"))
            recipes.setdefault(key, recipe)
            priced[key][0] += 1
            priced[key][1] += measure.get("credit") or 0.0
            priced[key][2] += s["spent_hours"]
    options = [Option(recipes[key], key[1], int(n), credit, hours) for key, (n, credit, hours) in priced.items()]
    best = max((o for o in options if o.credit > 0), key=lambda o: o.credit_per_hour, default=None)
    needed = math.ceil(debt / best.credit_per_session) if best is not None and debt > 0 else 0
    return Plan(
        probe,
        model,
        debt,
        funds,
        best,
        needed,
        margin * best.hours_per_session if needed else 0.0,
        pilot,
        tuple(uncounted),
        unreliable_debt,
        tuple(unreliable),
    )


def recorded_recipe(session: dict) -> Recipe:
    """The structured settings a recorded session ran with (SessionResult.settings), without those a planned
    session sets itself or that run code. Validated later, when used."""
    values, problem = session["results"].settings()
    budget = values.get("budget_hours")
    kept = {k: v for k, v in values.items() if k not in SET_BY_PLAN and k not in CODE_RUNNING_SETTINGS}
    return Recipe(
        json.dumps(kept, sort_keys=True),
        session["session"],
        str(session.get("results_path")),
        budget if isinstance(budget, (int, float)) and not isinstance(budget, bool) else None,
        problem,
    )


def session_recipe(recipe: Recipe, *, budget_hours: float, output_dir: str) -> dict:
    """The recipe of a planned euphoric exposure, validated by the exposure entry's own dataclasses together
    with the settings the plan passes on the command line, exactly as the session will read them."""
    from welfare_offsets.train import exposure

    where = f"the recipe recorded by session {recipe.session} ({recipe.results})"
    if recipe.problem:
        raise ConfigError(f"{where}: {recipe.problem}")
    typed = recipe_values(exposure.config_types(), {**recipe.mapping(), "valence": "euphoric"}, where=where)
    build_configs(
        exposure.config_types(), {**typed, "budget_hours": budget_hours, "output_dir": output_dir}, where=where
    )
    return typed


def write_recipe(values: dict, path: Path) -> Path:
    """`values` as a YAML recipe file in a recipes folder of our own (a folder holding anything else, or a
    link, is refused untouched), written atomically (a link at its name is replaced, never written through)
    and checked to read back as exactly these values."""
    import yaml

    folder = open_in_place(claim(path.parent, "plan recipes", resumable=True, flag="--out"), overwrite=False)
    path = write_text_file(folder / path.name, yaml.safe_dump(values, sort_keys=True))
    if load_yaml_recipe(path) != values:
        raise ConfigError(f"{path}: the recipe does not read back as written; report this as a bug")
    return path


ENTRY_MODULE = "welfare_offsets.train.exposure"  # run as a module, as `python -m` and `accelerate launch -m` do


def commands(
    plan: Plan, *, ledger: Path | str, account: str, launcher: str, out: str, trust_remote_code: bool = False
) -> tuple[list[list[str]], Path]:
    """The planned sessions' commands, and the recipe file they share (written into `out`)."""
    code = ["--trust_remote_code", "true"] if trust_remote_code else []
    if plan.option is None:  # nothing measured yet: one pilot, set up as the debt's session, to price it
        recipe, name = plan.pilot, "pilot-euphoric-exposure"
        budgets = [recipe.budget_hours or 0.0]
        folders = [f"{out}/{name}"]
    else:
        recipe, name = plan.option.recipe, "euphoric-exposure"
        budgets = [plan.budget_per_session] * plan.sessions
        folders = [f"{out}/euphoric-{i + 1}" for i in range(plan.sessions)]
    values = session_recipe(recipe, budget_hours=budgets[0], output_dir=folders[0])
    path = write_recipe(values, output_path(out) / "recipes" / f"{name}.yaml")
    return [
        [
            *shlex.split(launcher),
            "-m",
            ENTRY_MODULE,
            "--config",
            str(path),
            "--account",
            account,
            "--ledger",
            str(ledger),
            "--budget_hours",
            f"{budget:.6g}",
            "--output_dir",
            folder,
            *code,
        ]
        for budget, folder in zip(budgets, folders)
    ], path


def main(argv: list[str]) -> int:
    return run_guarded(_plan, argv, "welfare plan")


def check_out(out: str, ledger: str | None) -> None:
    """`--out` must name a folder (empty text would put the sessions' folders at the filesystem root), outside
    the ledger and its .sessions folder, and not be a symbolic link (it would be written through); before
    anything is written."""
    if not out:
        raise InputError(
            "--out '' is an empty path, so nothing was written: name the folder for the sessions' output folders, "
            "e.g. --out runs/plan"
        )
    refuse_ledger_paths(out, ledger, "--out")
    refuse_link(output_path(out), f"--out {out}")


def _plan(argv: list[str]) -> int:
    from welfare_offsets.ledger import Ledger
    from welfare_offsets.ledger.location import resolve_ledger_path, shown

    parser = argparse.ArgumentParser(prog="welfare plan", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ledger", help="ledger file or postgresql:// URL (default: $WELFARE_LEDGER or the user data folder)"
    )
    parser.add_argument("--account", default="default", help="account that pays (default: default)")
    parser.add_argument("--model", help="subject (model id as recorded); default: the only subject with debt")
    parser.add_argument("--probe", default="self_report", help="probe whose debt to repay (default: self_report)")
    parser.add_argument("--launcher", default="accelerate launch", help='how to start a session (e.g. "python")')
    parser.add_argument("--out", default="welfare-runs/plan", help="folder for the sessions' output folders")
    parser.add_argument(
        "--budget_margin",
        type=float,
        default=BUDGET_MARGIN,
        help="each session's budget as a multiple of the measured mean spend (default: %(default)s)",
    )
    parser.add_argument("--execute", action="store_true", help="run the sessions in order, stop at a failure")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="let the sessions run the model repo's own Python code (never taken from a recording)",
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.budget_margin) and args.budget_margin >= 1):
        raise InputError(
            f"--budget_margin must be a finite number >= 1 (a multiple of the measured spend), got {args.budget_margin}"
        )
    check_out(args.out, args.ledger)
    path = resolve_ledger_path(args.ledger)
    with Ledger.open(path, create=False) as ledger:
        sessions = ledger_sessions(ledger)
        funds = ledger.balance(args.account).available_hours
    models = sorted(
        {
            (s["results"].subject or {}).get("model_id")
            for s in sessions
            if (s["measures"].get(args.probe) or {}).get("debt")
        }
        - {None}
    )
    model = args.model or (models[0] if len(models) == 1 else None)
    if model is None:
        raise InputError(f"pass --model; subjects with debt on {args.probe}: {models or 'none'}")
    plan = make_plan(sessions, probe=args.probe, model=model, funds=funds, margin=args.budget_margin)
    print(describe(plan, args.account))
    if plan.debt <= 0:
        return 0
    source = plan.option.recipe if plan.option else plan.pilot
    try:
        todo, recipe_file = commands(
            plan,
            ledger=shown(path),  # printed: a server's password stays in ~/.pgpass or PGPASSWORD
            account=args.account,
            launcher=args.launcher,
            out=args.out,
            trust_remote_code=args.trust_remote_code,
        )
    except InputError as error:
        raise InputError(f"nothing run: {error}") from error
    print(f"Recipe {recipe_file} (settings recorded by session {source.session}, {source.results}):")
    print(recipe_file.read_text().rstrip())
    print("\n".join(shlex.join(c) for c in todo))
    if not plan.feasible and plan.option is not None:
        return 1
    if args.execute:
        for i, command in enumerate(todo, 1):
            print(f"\nwelfare plan: session {i} of {len(todo)}", flush=True)
            if subprocess.run(command).returncode != 0:
                print(
                    f"welfare plan: session {i} failed; stopping (the ledger settled whatever it spent)",
                    file=sys.stderr,
                )
                return 1
    return 0


def describe(plan: Plan, account: str) -> str:
    lines = [
        f"Subject {plan.model}: open welfare debt on {plan.probe} = {plan.debt:.4g} "
        f"(probe units x episodes); account {account!r} has {plan.funds:.4g} accelerator-hours available."
    ]
    lines += [f"Not counted: {why}." for why in plan.uncounted]
    if plan.unreliable_debt:
        lines.append(
            f"Not scheduled: debt {plan.unreliable_debt:.4g} measured by session(s) "
            f"{', '.join(plan.unreliable_sessions)} is not a reliable reading (too little probability on "
            f"valid answers to {plan.probe}, or no zero point: see the session's results.json balance); no "
            "repayment is scheduled for it."
        )
    if plan.debt <= 0:
        return "\n".join(lines + [f"Nothing{' reliably measured' if plan.unreliable_debt else ''} to repay."])
    if plan.option is None:
        return "\n".join(
            lines
            + [
                "No euphoric exposure has been measured on this subject, so its price is unknown. "
                "Run this pilot session first, then plan again:"
            ]
        )
    o = plan.option
    lines.append(
        f"Cheapest measured option: euphoric exposure (the recipe of session {o.recipe.session}"
        f"{', adapter ' + o.adapter if o.adapter else ''}): {o.credit_per_hour:.4g} credit per "
        f"accelerator-hour over {o.sessions} session(s), {o.credit_per_session:.4g} credit and "
        f"{o.hours_per_session:.4g} h per session."
    )
    lines.append(
        f"Schedule: {plan.sessions} session(s) x budget {plan.budget_per_session:.4g} h; expected spend "
        f"{plan.expected_hours:.4g} h, expected credit {plan.sessions * o.credit_per_session:.4g}."
    )
    if not plan.feasible:
        reservable = plan.budget_per_session <= plan.funds  # a session first reserves its whole budget
        affordable = int(plan.funds // o.hours_per_session) if o.hours_per_session and reservable else 0
        why = "" if reservable else " to reserve one session's budget (a lower --budget_margin reserves less)"
        lines.append(
            f"CANNOT repay within the funds: short by {plan.shortfall_hours:.4g} accelerator-hours{why}; the "
            f"funds cover {affordable} session(s), repaying about "
            f"{min(1.0, affordable * o.credit_per_session / plan.debt):.0%} of the debt. Fund the account "
            f"(welfare ledger fund --account {account} --hours H) and plan again."
        )
    return "\n".join(lines)

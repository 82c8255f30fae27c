"""`welfare plan`: a schedule of euphoric-exposure sessions that repays a subject's open welfare debt.

Everything comes from the ledger, so a plan is as auditable as the ledger itself:
* the **debt**: debt minus credit recorded on the probe for sessions on this subject;
* the **price**: credit per accelerator-hour measured by past euphoric-exposure sessions on this subject,
  one option per (recipe, adapter): living through euphoric experiences with an offset adapter or soft
  prompt active is a different option, with its own measured price;
* the **funds**: what the account can still reserve.
Which subject and recipe a session used is read from the results.json its measurement entries cite,
after checking the file's sha256 against the entry. Offsets that change the subject itself (LoRA, soft
prompt) are state recovery, not credit: they repay debt only through the exposures run with them.
`--execute` runs the printed commands in order and stops at the first failure.
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

BUDGET_MARGIN = 1.25  # default: each planned session's budget over the measured mean spend


SET_BY_PLAN = ("--budget_hours", "--output_dir", "--ledger", "--account", "--resume_from_checkpoint")


@dataclass(frozen=True)
class Option:
    """One way to earn credit on a subject: a euphoric-exposure recipe as it was run (file + flags, the
    adapter among them), priced by the sessions that ran it."""

    recipe: str | None
    flags: tuple[str, ...]
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
    pilot: tuple[str | None, tuple[str, ...]] = (None, ())  # the latest debt session's recipe and flags

    @property
    def expected_hours(self) -> float:
        return self.sessions * self.option.hours_per_session if self.option else 0.0

    @property
    def feasible(self) -> bool:
        return self.option is not None and self.expected_hours <= self.funds and self.budget_per_session <= self.funds

    @property
    def shortfall_hours(self) -> float:
        return max(0.0, self.expected_hours - self.funds)


def ledger_sessions(ledger) -> list[dict]:
    """Per settled session: spend, its measurements per probe, and the results.json they cite (verified)."""
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
            record["results"] = record["results"] or _verified_results(cited)
    return [{"session": s, "spent_hours": spent[s], **r} for s, r in sessions.items() if r["results"]]


def _verified_results(cited: dict) -> dict | None:
    path = Path(cited["path"])
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != cited["sha256"]:
        print(f"welfare plan: skipping {path}: missing or changed since the ledger cited it", file=sys.stderr)
        return None
    return json.loads(path.read_text())


def make_plan(sessions: list[dict], *, probe: str, model: str, funds: float, margin: float = BUDGET_MARGIN) -> Plan:
    """The cheapest measured option, and how many of its sessions the open debt needs."""
    debt, pilot = 0.0, (None, ())
    priced: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for s in sessions:
        subject = s["results"].get("subject") or {}
        measure = s["measures"].get(probe)
        if subject.get("model_id") != model or measure is None:
            continue
        debt += (measure.get("debt") or 0.0) - (measure.get("credit") or 0.0)
        if measure.get("debt"):
            passed = s["results"]["config"]["passed"]
            pilot = (passed.get("config_file"), _reusable_flags(passed.get("argv", [])))
        if s["results"].get("kind") == "euphoric-exposure" and s["spent_hours"] > 0:
            passed = s["results"]["config"]["passed"]
            key = (passed.get("config_file"), _reusable_flags(passed.get("argv", [])), subject.get("adapter"))
            priced[key][0] += 1
            priced[key][1] += measure.get("credit") or 0.0
            priced[key][2] += s["spent_hours"]
    options = [Option(recipe, flags, adapter, int(n), credit, hours)
               for (recipe, flags, adapter), (n, credit, hours) in priced.items()]
    best = max((o for o in options if o.credit > 0), key=lambda o: o.credit_per_hour, default=None)
    if best is None or debt <= 0:
        return Plan(probe, model, debt, funds, best, 0, 0.0, pilot)
    return Plan(probe, model, debt, funds, best, math.ceil(debt / best.credit_per_session),
                margin * best.hours_per_session, pilot)


def _reusable_flags(argv: list[str]) -> tuple[str, ...]:
    """A session's flags without those each planned session sets for itself."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=", 1)[0] in SET_BY_PLAN:
            skip = "=" not in arg
        else:
            kept.append(arg)
    return tuple(kept)


def commands(plan: Plan, *, ledger: Path, account: str, launcher: str, out: str) -> list[list[str]]:
    from train import exposure

    entry = str(Path(exposure.__file__).resolve())
    base = [*shlex.split(launcher), entry]
    if plan.option is None:  # nothing measured yet: one pilot, set up as the debt's session, to price it
        recipe, flags = plan.pilot
        return [[*base, *(["--config", recipe] if recipe else []), *flags, "--valence", "euphoric",
                 "--account", account, "--ledger", str(ledger), "--output_dir", f"{out}/pilot-euphoric-exposure"]]
    option = plan.option
    extra = [*(["--config", option.recipe] if option.recipe else []), *option.flags]
    return [[*base, *extra, "--account", account, "--ledger", str(ledger),
             "--budget_hours", f"{plan.budget_per_session:.6g}", "--output_dir", f"{out}/euphoric-{i + 1}"]
            for i in range(plan.sessions)]


def main(argv: list[str]) -> int:
    from ledger import Ledger
    from ledger.errors import LedgerError
    from ledger.location import resolve_ledger_path

    parser = argparse.ArgumentParser(prog="welfare plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", help="ledger file (default: $WELFARE_LEDGER or the user data folder)")
    parser.add_argument("--account", default="default", help="account that pays (default: default)")
    parser.add_argument("--model", help="subject (model id as recorded); default: the only subject with debt")
    parser.add_argument("--probe", default="self_report", help="probe whose debt to repay (default: self_report)")
    parser.add_argument("--launcher", default="accelerate launch", help='how to start a session (e.g. "python")')
    parser.add_argument("--out", default="welfare-runs/plan", help="folder for the sessions' output folders")
    parser.add_argument("--budget_margin", type=float, default=BUDGET_MARGIN,
                        help="each session's budget as a multiple of the measured mean spend (default: %(default)s)")
    parser.add_argument("--execute", action="store_true", help="run the sessions in order, stop at a failure")
    args = parser.parse_args(argv)
    if not args.budget_margin >= 1:
        print(f"welfare plan: error: --budget_margin must be >= 1, got {args.budget_margin}", file=sys.stderr)
        return 2
    path = resolve_ledger_path(args.ledger)
    try:
        with Ledger.open(path, create=False) as ledger:
            sessions = ledger_sessions(ledger)
            funds = ledger.balance(args.account).available_hours
    except (LedgerError, OSError) as error:
        print(f"welfare plan: error: {error}", file=sys.stderr)
        return 2
    models = sorted({(s["results"].get("subject") or {}).get("model_id") for s in sessions
                     if (s["measures"].get(args.probe) or {}).get("debt")} - {None})
    model = args.model or (models[0] if len(models) == 1 else None)
    if model is None:
        print(f"welfare plan: error: pass --model; subjects with debt on {args.probe}: {models or 'none'}",
              file=sys.stderr)
        return 2
    plan = make_plan(sessions, probe=args.probe, model=model, funds=funds, margin=args.budget_margin)
    print(describe(plan, args.account))
    if plan.debt <= 0:
        return 0
    todo = commands(plan, ledger=path, account=args.account, launcher=args.launcher, out=args.out)
    print("\n".join(shlex.join(c) for c in todo))
    if not plan.feasible and plan.option is not None:
        return 1
    if args.execute:
        for i, command in enumerate(todo, 1):
            print(f"\nwelfare plan: session {i} of {len(todo)}", flush=True)
            if subprocess.run(command).returncode != 0:
                print(f"welfare plan: session {i} failed; stopping (the ledger settled whatever it spent)", file=sys.stderr)
                return 1
    return 0


def describe(plan: Plan, account: str) -> str:
    lines = [f"Subject {plan.model}: open welfare debt on {plan.probe} = {plan.debt:.4g} "
             f"(probe units x episodes); account {account!r} has {plan.funds:.4g} accelerator-hours available."]
    if plan.debt <= 0:
        return "\n".join(lines + ["Nothing to repay."])
    if plan.option is None:
        return "\n".join(lines + ["No euphoric exposure has been measured on this subject, so its price is unknown. "
                                  "Run this pilot session first, then plan again:"])
    o = plan.option
    lines.append(f"Cheapest measured option: euphoric exposure ({o.recipe or 'default recipe'}"
                 f"{', adapter ' + o.adapter if o.adapter else ''}): {o.credit_per_hour:.4g} credit per "
                 f"accelerator-hour over {o.sessions} session(s), {o.credit_per_session:.4g} credit and "
                 f"{o.hours_per_session:.4g} h per session.")
    lines.append(f"Schedule: {plan.sessions} session(s) x budget {plan.budget_per_session:.4g} h; expected spend "
                 f"{plan.expected_hours:.4g} h, expected credit {plan.sessions * o.credit_per_session:.4g}.")
    if not plan.feasible:
        affordable = int(plan.funds // o.hours_per_session) if o.hours_per_session else 0
        lines.append(f"CANNOT repay within the funds: short by {plan.shortfall_hours:.4g} accelerator-hours; the "
                     f"funds cover {affordable} session(s), repaying about "
                     f"{min(1.0, affordable * o.credit_per_session / plan.debt):.0%} of the debt. Fund the account "
                     f"(welfare ledger fund --account {account} --hours H) and plan again.")
    return "\n".join(lines)

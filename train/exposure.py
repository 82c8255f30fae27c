"""Exposure session: `accelerate launch -m welfare_offsets.train.exposure --config offset/dysphoric_exposure`
(or `welfare offset exposure ...` in this process).

Validate -> admit (reserve the budget) -> the subject lives through the experiences (with its adapter or
soft prompt, if given) -> each episode probed -> the balance against the session's own zero point ->
debt (dysphoric) or credit (euphoric) in the ledger -> settle. The budget is checked between chunks of
episodes, so a session stops before it would overrun. Stopped in the middle (Ctrl-C, SIGTERM, the budget's
hard stop), it still balances and records the episodes lived before the chunk under way, then ends as asked.
Runs on the main process (generation is serial).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from welfare_offsets.eval.common.checks import integers_at_least, one_of
from welfare_offsets.eval.settings import SPLITS, Settings, setting
from welfare_offsets.train.config import ConfigError, parse_config
from welfare_offsets.train.guard import run_guarded


@dataclass(kw_only=True)
class ExposureConfig(Settings):
    """What the subject lives through (the rest is the session's, train/session.py)."""

    valence: str = setting("dysphoric", "dysphoric (records debt) or euphoric (records credit)")
    split: str = setting("all", "split the episodes come from: heldout, train or all")
    max_episodes: int | None = setting(None, "cap on episodes (evenly over categories)")

    def check(self):
        one_of(self, "valence", ("dysphoric", "euphoric"))
        one_of(self, "split", SPLITS)
        integers_at_least(self, 1, "max_episodes")


def config_types(argv: list[str] = ()) -> list[type]:
    from welfare_offsets.train.session import SessionArguments

    return [SessionArguments, ExposureConfig]


def main(argv: list[str]) -> int:
    return run_guarded(_session, argv, "welfare offset exposure")


def _session(argv: list[str]) -> int:
    from welfare_offsets.eval.common.outputs import write_json_file
    from welfare_offsets.eval.evaluate import spread_evenly
    from welfare_offsets.interventions.exposure import UTILITY, UtilityScale, expose
    from welfare_offsets.ledger.budget import BudgetExhausted
    from welfare_offsets.train.session import RunSettings, Session

    args, config, passed = parse_config(config_types(), argv, prog="welfare offset exposure")
    run = RunSettings(
        None,
        recipe={
            "passed": passed,
            "resolved": {"session": dataclasses.asdict(args), "exposure": dataclasses.asdict(config)},
        },
    )
    kind = f"{config.valence}-exposure"
    if args.capability_task_names:
        raise ConfigError(
            "capability_tasks: an exposure session does not change the subject, so it measures no capability "
            "retention; leave capability_tasks out (it applies to LoRA and soft-prompt sessions)"
        )
    session = Session(
        kind, args, run, needs={config.valence: config.split if config.split != "all" else "train"}, trains=False
    )
    episodes = session.stimuli.select(valence=config.valence, split=config.split)
    if config.max_episodes:
        episodes = spread_evenly(episodes, config.max_episodes)
    per_condition = args.eval_max_items or 24
    neutral = spread_evenly(session.stimuli.select(valence="neutral"), per_condition)
    probes = args.eval_config().probe_names
    utility = None
    if UTILITY in probes:
        reference = [
            e
            for valence in ("euphoric", "dysphoric")
            for e in spread_evenly(session.stimuli.select(valence=valence, split="heldout"), per_condition)
        ]
        utility = UtilityScale(reference, args.pair_design, args.bundle_count(len(neutral) + len(reference)))
    results = interruption = None
    with session:
        subject = session.load_subject() if session.is_main else None
        session.admit()
        if session.is_main:
            session.budget.loop_started()
            outcome = expose(
                subject,
                episodes,
                neutral,
                reply_tokens=args.reply_tokens,
                batch_size=args.eval_batch_size,
                n_boot=args.eval_bootstrap,
                seed=args.seed,
                instrument=args.load_instrument(),
                keep_going=lambda: not session.budget.step_done(),
                utility=utility,
                interruptions=(KeyboardInterrupt, BudgetExhausted),
            )
            interruption = outcome.pop("interruption")
            results, path = session.write_results(
                subject=subject.describe(),
                stimuli={"source": session.stimuli.source, "sha256": session.stimuli.sha256},
                stopped_by_budget=session.budget.guard.stopped_at_hours is not None,
                interrupted=isinstance(interruption, KeyboardInterrupt),
                **{k: v for k, v in outcome.items() if k != "episodes"},
            )
            write_json_file(session.out / "episodes.json", outcome["episodes"])
            for probe, b in outcome["balance"].items():
                if not b["measured"]:
                    continue
                amount = {"debt": b["debt"]} if config.valence == "dysphoric" else {"credit": b["credit"]}
                session.record_balance(
                    probe,
                    **amount,
                    results=path,
                    note=_ledger_note(kind, b),
                )
            balances = {f"balance/{p}": b["balance"] for p, b in outcome["balance"].items() if b["measured"]}
            session.log({**balances, "generation/tokens_per_s": outcome["generation"]["tokens_per_s"]})
            if isinstance(interruption, KeyboardInterrupt):
                raise interruption  # recorded; now end as Ctrl-C or SIGTERM asked (a budget stop ends normally)
    if results:
        print(f"{kind} session {results.session}: {results.completed} of {results.planned} episodes lived")
        for probe, b in results.balance.items():
            print(f"  {probe:<19} {_summary_line(b)}")
        print(f"Results: {session.out}/results.json   Ledger: {session.out}/ledger.json")
    return 0


def _summary_line(b: dict) -> str:
    if not b["measured"]:
        return f"not measured: {b['reason']}"
    lo, hi = b["balance_ci95"]
    line = f"balance {b['balance']:+.3f} [{lo:+.3f}, {hi:+.3f}] (zero point {b['zero_point']:.3f}"
    if "zero_point_estimator" in b:
        line += f" by {b['zero_point_estimator']}: {b['zero_point_reason']}; {b['units']}"
    line += ")"
    if not b["reliable"]:
        why = b.get("unreliable_reason") or f"{b['mean_valid_mass']:.0%} on valid answers"
        line += f"  (not a reliable reading: {why})"
    return line


def _ledger_note(kind: str, b: dict) -> str:
    """What a balance was measured against, for the ledger entry that records it."""
    against = "zero point" if "zero_point_estimator" not in b else f"the {b['zero_point_estimator']} zero point"
    note = f"{kind}: {b['episodes']} episodes, balance {b['balance']:+.4g} vs {against}"
    return note + ("" if b["reliable"] else "; NOT a reliable reading")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

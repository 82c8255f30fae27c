"""Scale sweep: `welfare sweep --config sweep/qwen2.5`, or on several GPUs `accelerate launch --config_file
"$(welfare recipes path accelerate/ddp)" --num_processes 4 -m welfare_offsets.train.sweep --config sweep/qwen2.5`.

Validate (recipe, stimuli, output folder, capability tasks with their data, every subject's weights and the
cache) -> reserve the budget in the ledger, if anything is left to measure (train/sweep_budget.py) -> split
the rest across ranks, biggest first -> in rounds of one subject per rank, while the next round fits the
budget, each rank measures its subject (scores, then capability on the same loaded model) and caches each
entry the moment it exists -> all ranks meet and settle -> rank 0 summarises the measured subjects from the
cache and writes results.json, report.md, report.html, plots and W&B tables. Killed at any point, a rerun
continues with what is unfinished and pays only for that.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from datetime import timedelta
from pathlib import Path

from welfare_offsets.train.config import parse_config
from welfare_offsets.train.guard import run_guarded

# Ranks wait for each other before every round of subjects and at the end; a round of big models takes hours.
BARRIER_TIMEOUT = timedelta(hours=48)
# Everything a sweep writes into its folder (the cache's entries, _write_outputs' files), recorded in its
# marker: --overwrite deletes an earlier sweep only while it holds nothing else (output_folder.py).
FILES = (
    "cache/*.json",
    "cache/capability/*.json",
    "results.json",
    "report.md",
    "report.html",
    "scaling_params.png",
    "scaling_capability.png",
)


def config_types() -> list[type]:
    """The study's settings and its budget's: a sweep recipe's keys and `welfare sweep` flags."""
    from welfare_offsets.eval.study.sweep import SweepConfig
    from welfare_offsets.train.sweep_budget import SweepBudgetSettings

    return [SweepConfig, SweepBudgetSettings]


def main(argv: list[str]) -> int:
    return run_guarded(_sweep, argv, "welfare sweep")


def _sweep(argv: list[str]) -> int:
    from contextlib import nullcontext

    import torch
    from accelerate import PartialState

    from welfare_offsets.eval.common.output_folder import claim, open_in_place
    from welfare_offsets.eval.experiences import load_stimuli
    from welfare_offsets.eval.study.profile import profile_items
    from welfare_offsets.eval.study.sweep import SweepCache, prepare_capability
    from welfare_offsets.ledger.budget import BudgetExhausted
    from welfare_offsets.train.guard import refuse_ledger_paths
    from welfare_offsets.train.sweep_budget import NOTHING_RESERVED, SweepBudget

    config, billing, passed = parse_config(config_types(), argv, prog="welfare sweep")
    stimuli = load_stimuli(config.stimuli)
    profile_items(stimuli, config.split, config.empathy_split, config.max_items)  # fails now, not per subject
    # A rerun into our own sweep folder continues it (the cache); --overwrite starts it over.
    folder = claim(config.out, "sweep", overwrite=config.overwrite, resumable=True, files=FILES)
    refuse_ledger_paths(folder.path, billing.ledger, "--out")
    tasks = prepare_capability(config)  # loads every task's data: a bad task fails now, with nothing written
    out = folder.path
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    device = str(state.device)
    cache = SweepCache(out / "cache")
    keys = [_keys(k, config, stimuli, device, tasks) for k in range(len(config.specs))]
    if not config.overwrite:  # (starting over deletes the cache unread)
        for key in set(keys):
            cache.get(key)  # a damaged, foreign or newer entry is refused now, before anything is reserved
    # A subject listed twice (say, in two families) is measured once.
    todo = [k for k, key in enumerate(keys) if keys.index(key) == k and (config.overwrite or any(cache.missing(key)))]
    if state.is_main_process:
        print(
            f"welfare sweep: {len(set(keys))} subjects, {len(set(keys)) - len(todo)} already measured "
            f"(cache {out / 'cache'}), {len(todo)} to measure on {state.num_processes} process(es)"
        )
    cut = False
    try:
        # The main process reserves here: a ledger or funds problem exits 2 before anything is written.
        with SweepBudget(billing, state, out, config.held_gpus()) if todo else nullcontext() as budget:
            if state.is_main_process:
                open_in_place(folder, overwrite=config.overwrite)
            state.wait_for_everyone()
            shares = share(todo, config.specs, state.num_processes)
            mine = shares[state.process_index]
            where = f"rank {state.process_index}, " if state.num_processes > 1 else ""
            try:
                for r in budget.rounds(max(map(len, shares))) if budget else ():
                    if r < len(mine):  # a rank with fewer subjects still joins every round's decision
                        k, position = mine[r], f"{where}{r + 1}/{len(mine)}"
                        _measure_one(
                            config, config.specs[k], keys[k], tasks, stimuli, device, cache, position, budget.session
                        )
            except BudgetExhausted:
                if state.num_processes > 1:
                    raise  # the other ranks wait in the next round's decision: the launcher stops them
                cut = True  # the subject under way is left unmeasured, like those after it
            state.wait_for_everyone()
        if state.is_main_process:
            unmeasured = [spec.label for spec, key in zip(config.specs, keys) if any(cache.missing(key))]
            accounting = {**(budget.record if budget else NOTHING_RESERVED), "unmeasured": unmeasured}
            if unmeasured:
                why = "a round ran past its reservation and was cut" if cut else "the next round would have crossed it"
                print(
                    f"welfare sweep: stopped by its budget before {', '.join(unmeasured)}: {why}. A rerun with a "
                    "larger --budget_hours measures only those"
                )
            results = _write_outputs(config, billing, passed, keys, stimuli, cache, out, accounting)
            print("\n".join(results.interpretation))
            print(f"\nResults: {out}/results.json\nReport:  {out}/report.html ({out}/report.md)")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _keys(k: int, config, stimuli, device: str, tasks):
    """Subject k's cache keys; a subject whose weights cannot be found is named as the recipe or --subjects
    gave it."""
    from welfare_offsets.eval.common.errors import InputError
    from welfare_offsets.eval.study.sweep import SweepError, subject_keys

    try:
        return subject_keys(config.specs[k], config, stimuli, device, tasks)
    except InputError as err:
        raise SweepError(f"subjects[{k}]: {err}") from err


def share(todo: list[int], specs, ranks: int) -> list[list[int]]:
    """Subjects per rank: biggest first, each to the least-loaded rank (known sizes as the cost)."""
    load, shares = [0.0] * ranks, [[] for _ in range(ranks)]
    for k in sorted(todo, key=lambda k: -(specs[k].params or 0)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        shares[rank].append(k)
        load[rank] += specs[k].params or 1.0
    return shares


def _measure_one(config, spec, keys, tasks, stimuli, device: str, cache, position: str, session: str) -> None:
    """Measure what the cache lacks of one subject (its scores, its capability) on one load, and cache each
    with what it cost, under its own meter, and the ledger session that paid for it, the moment it exists."""
    from welfare_offsets.eval.common.results import SweepEntry
    from welfare_offsets.eval.study.sweep import capability_value, measure_subject
    from welfare_offsets.ledger.meter import Meter, detect_device_kind

    scores, capability = cache.missing(keys)
    entries = measure_subject(spec, keys, config, stimuli, device, tasks if capability else None, scores=scores)
    kind, parts, hours, seconds = detect_device_kind(), [], 0.0, 0.0
    while True:
        meter = Meter.for_device(kind, processes=1, gpus=config.held_gpus()).start()
        entry = next(entries, None)
        meter.stop()
        if entry is None:
            break
        entry.cost = {
            "device": meter.device,
            "accelerator_hours": meter.hours,
            "energy_kwh": meter.energy_kwh(),
            "ledger_session": session,
        }
        cache.put(entry)
        hours, seconds = hours + meter.hours, seconds + meter.seconds
        if isinstance(entry, SweepEntry):
            parts.append(f"{entry.prompts_scored} prompts")
        else:
            tasks_measured = ", ".join(entry.capability["tasks"])
            parts.append(f"capability {capability_value(entry.capability):.3f} ({tasks_measured})")
    print(f"  [{position}] measured {spec.label}: {', '.join(parts)} in {seconds:.1f} s ({hours:.4f} {kind}-hours)")


def _write_outputs(config, billing, passed: dict, keys: list, stimuli, cache, out: Path, accounting: dict):
    """Summarise the subjects measured (all, unless the budget stopped the sweep) from the cache and write
    results.json, the report, plots and W&B tables; `accounting` is what the ledger holds of this run."""
    from welfare_offsets.eval.common.outputs import provenance
    from welfare_offsets.eval.common.results import SweepResult, write_result
    from welfare_offsets.eval.study.report import headline, plot_scaling, write_report
    from welfare_offsets.eval.study.sweep import SweepError, summarise_sweep

    measured = [k for k, key in enumerate(keys) if not any(cache.missing(key))]
    if not measured:
        raise SweepError(
            f"the budget ran out before the first subject, so nothing was measured (ledger session "
            f"{accounting['session']} settled what was spent); raise --budget_hours"
        )
    entries, capabilities = zip(*[cache.get(keys[k]) for k in measured])
    specs = [config.specs[k] for k in measured]
    summary, replicates = summarise_sweep(config, list(entries), stimuli, list(capabilities), specs=specs)
    costs = [e.cost or {} for e in (*entries, *capabilities) if e is not None]
    energies = [c.get("energy_kwh") for c in costs]
    cost = {
        "accelerator_hours": sum(c.get("accelerator_hours", 0.0) for c in costs),
        "devices": sorted({c.get("device", "?") for c in costs}),
        "energy_kwh": sum(energies) if energies and all(e is not None for e in energies) else None,
        "note": "measured when each subject was measured (a cached subject keeps its original cost and names the "
        "ledger session that paid for it); model loading, scoring and capability tasks, one process per subject "
        "billed for every GPU it held (gpus_per_rank)",
        "ledger": accounting,
    }
    result = SweepResult(
        **summary,
        cost=cost,
        interpretation=headline({**summary, "cost": cost}),
        stimuli={"source": stimuli.source, "sha256": stimuli.sha256, "n_experiences": len(stimuli)},
        config={"passed": passed, "resolved": _resolved(config, billing)},
        provenance=provenance(),
    )
    results = result.to_json()
    plots = {"against size": plot_scaling(results, "log10_params", out / "scaling_params.png", replicates)}
    if "capability" in results["covariates"]:
        plots["against capability"] = plot_scaling(results, "capability", out / "scaling_capability.png", replicates)
    write_report(results, out, plots)
    write_result(out / "results.json", result)
    if config.report_to == "wandb":
        _log_to_wandb(config, billing, results, plots)
    return result


def _resolved(config, billing) -> dict:
    """Every setting as the sweep resolved it: the study's and its budget's."""
    return {**dataclasses.asdict(config), **dataclasses.asdict(billing)}


def _log_to_wandb(config, billing, results: dict, plots: dict[str, Path]) -> None:
    import wandb

    from welfare_offsets.eval.common.tracking import start_run
    from welfare_offsets.eval.study.report import category_rows, scaling_rows, subject_table
    from welfare_offsets.ledger.wandb_anchor import SUMMARY_KEY

    run = start_run(
        config.wandb_project,
        name=f"sweep-{len(results['subjects'])}-subjects",
        config=_resolved(config, billing),
        job_type="sweep",
        entity=config.wandb_entity,
    )
    for name, (header, rows) in {
        "subjects": subject_table(results),
        "scaling": scaling_rows(results),
        "categories": category_rows(results),
    }.items():
        run.log({f"sweep/{name}": wandb.Table(columns=header, data=rows)})
    numeric = [
        [
            s["name"],
            s["family"],
            s["log10_params"],
            s["capability"],
            *[_number(s["statistics"].get(k, {}).get("value")) for k in results["statistics"]],
        ]
        for s in results["subjects"]
    ]
    run.log(
        {
            "sweep/values": wandb.Table(
                columns=["subject", "family", "log10_params", "capability", *results["statistics"]], data=numeric
            )
        }
    )
    run.log({f"sweep/plot {title}": wandb.Image(str(path)) for title, path in plots.items()})
    run.summary["sweep/accelerator_hours"] = results["cost"]["accelerator_hours"]
    account = results["cost"]["ledger"]
    if account["session"] is not None:  # the ledger head after settling: an anchor kept outside the ledger
        run.summary.update({"ledger/session": account["session"], SUMMARY_KEY: account["head"]})
    run.finish()


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

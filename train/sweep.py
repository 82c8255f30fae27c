"""Scale sweep: `welfare sweep --config sweep/qwen2.5`, or on several GPUs `accelerate launch --config_file
"$(welfare recipes path accelerate/ddp)" --num_processes 4 -m welfare_offsets.train.sweep --config sweep/qwen2.5`.

Validate (recipe, stimuli, output folder, capability tasks with their data) -> find which subjects are
already in the cache -> split the rest across ranks, biggest first -> each rank measures its subjects one
at a time under the meter (scores, then capability on the same loaded model) and caches each the moment it
exists -> all ranks meet -> rank 0 summarises from the cache and writes results.json, report.md,
report.html, plots and W&B tables. Killed at any point, a rerun continues with what is unfinished.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from datetime import timedelta
from pathlib import Path

from welfare_offsets.train.config import parse_config
from welfare_offsets.train.guard import run_guarded

# Ranks that finish their share wait for the others at one barrier; a sweep of big models takes hours.
BARRIER_TIMEOUT = timedelta(hours=48)


def main(argv: list[str]) -> int:
    return run_guarded(_sweep, argv, "welfare sweep")


def _sweep(argv: list[str]) -> int:
    import torch
    from accelerate import PartialState

    from welfare_offsets.eval.common.output_folder import claim, open_in_place
    from welfare_offsets.eval.experiences import load_stimuli
    from welfare_offsets.eval.study.profile import profile_items
    from welfare_offsets.eval.study.sweep import SweepCache, SweepConfig, prepare_capability, subject_keys
    from welfare_offsets.train.guard import refuse_ledger_paths

    config, passed = parse_config([SweepConfig], argv, prog="welfare sweep")
    stimuli = load_stimuli(config.stimuli)
    profile_items(stimuli, config.split, config.empathy_split, config.max_items)  # fails now, not per subject
    # A rerun into our own sweep folder continues it (the cache); --overwrite starts it over.
    folder = claim(config.out, "sweep", overwrite=config.overwrite, resumable=True)
    refuse_ledger_paths(folder.path, None, "--out")
    tasks = prepare_capability(config)  # loads every task's data: a bad task fails now, with nothing written
    out = folder.path
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    if state.is_main_process:
        open_in_place(folder, overwrite=config.overwrite)
    state.wait_for_everyone()
    device = str(state.device)
    cache = SweepCache(out / "cache")
    keys = [subject_keys(spec, config, stimuli, device, tasks) for spec in config.specs]
    for key in set(keys):
        cache.get(key)  # a damaged, foreign or newer entry is refused now, before any subject is measured
    # A subject listed twice (say, in two families) is measured once.
    todo = [k for k, key in enumerate(keys) if any(cache.missing(key)) and keys.index(key) == k]
    if state.is_main_process:
        print(
            f"welfare sweep: {len(set(keys))} subjects, {len(set(keys)) - len(todo)} already measured "
            f"(cache {out / 'cache'}), {len(todo)} to measure on {state.num_processes} process(es)"
        )
    try:
        mine = share(todo, config.specs, state.num_processes)[state.process_index]
        where = f"rank {state.process_index}, " if state.num_processes > 1 else ""
        for done, k in enumerate(mine, 1):
            _measure_one(config, config.specs[k], keys[k], tasks, stimuli, device, cache, f"{where}{done}/{len(mine)}")
        state.wait_for_everyone()
        if state.is_main_process:
            results = _write_outputs(config, passed, keys, stimuli, cache, out)
            print("\n".join(results.interpretation))
            print(f"\nResults: {out}/results.json\nReport:  {out}/report.html ({out}/report.md)")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def share(todo: list[int], specs, ranks: int) -> list[list[int]]:
    """Subjects per rank: biggest first, each to the least-loaded rank (known sizes as the cost)."""
    load, shares = [0.0] * ranks, [[] for _ in range(ranks)]
    for k in sorted(todo, key=lambda k: -(specs[k].params or 0)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        shares[rank].append(k)
        load[rank] += specs[k].params or 1.0
    return shares


def _measure_one(config, spec, keys, tasks, stimuli, device: str, cache, position: str) -> None:
    """Measure what the cache lacks of one subject (its scores, its capability) on one load, and cache each
    with what it cost, under its own meter, the moment it exists."""
    from welfare_offsets.eval.common.results import SweepEntry
    from welfare_offsets.eval.study.sweep import capability_value, measure_subject
    from welfare_offsets.ledger.meter import Meter, detect_device_kind

    scores, capability = cache.missing(keys)
    entries = measure_subject(spec, keys, config, stimuli, device, tasks if capability else None, scores=scores)
    kind, parts, hours, seconds = detect_device_kind(), [], 0.0, 0.0
    while True:
        meter = Meter.for_device(kind, processes=1).start()
        entry = next(entries, None)
        meter.stop()
        if entry is None:
            break
        entry.cost = {"device": meter.device, "accelerator_hours": meter.hours, "energy_kwh": meter.energy_kwh()}
        cache.put(entry)
        hours, seconds = hours + meter.hours, seconds + meter.seconds
        if isinstance(entry, SweepEntry):
            parts.append(f"{entry.prompts_scored} prompts")
        else:
            tasks_measured = ", ".join(entry.capability["tasks"])
            parts.append(f"capability {capability_value(entry.capability):.3f} ({tasks_measured})")
    print(f"  [{position}] measured {spec.label}: {', '.join(parts)} in {seconds:.1f} s ({hours:.4f} {kind}-hours)")


def _write_outputs(config, passed: dict, keys: list, stimuli, cache, out: Path):
    from welfare_offsets.eval.common.outputs import provenance
    from welfare_offsets.eval.common.results import SweepResult, write_result
    from welfare_offsets.eval.study.report import headline, plot_scaling, write_report
    from welfare_offsets.eval.study.sweep import summarise_sweep

    entries, capabilities = zip(*[cache.get(key) for key in keys])
    summary, replicates = summarise_sweep(config, list(entries), stimuli, list(capabilities))
    costs = [e.cost or {} for e in (*entries, *capabilities) if e is not None]
    energies = [c.get("energy_kwh") for c in costs]
    cost = {
        "accelerator_hours": sum(c.get("accelerator_hours", 0.0) for c in costs),
        "devices": sorted({c.get("device", "?") for c in costs}),
        "energy_kwh": sum(energies) if energies and all(e is not None for e in energies) else None,
        "note": "measured when each subject was measured (a cached subject keeps its original cost); "
        "model loading, scoring and capability tasks, one process per subject",
    }
    result = SweepResult(
        **summary,
        cost=cost,
        interpretation=headline(summary),
        stimuli={"source": stimuli.source, "sha256": stimuli.sha256, "n_experiences": len(stimuli)},
        config={"passed": passed, "resolved": dataclasses.asdict(config)},
        provenance=provenance(),
    )
    results = result.to_json()
    plots = {"against size": plot_scaling(results, "log10_params", out / "scaling_params.png", replicates)}
    if "capability" in results["covariates"]:
        plots["against capability"] = plot_scaling(results, "capability", out / "scaling_capability.png", replicates)
    write_report(results, out, plots)
    write_result(out / "results.json", result)
    if config.report_to == "wandb":
        _log_to_wandb(config, results, plots)
    return result


def _log_to_wandb(config, results: dict, plots: dict[str, Path]) -> None:
    import wandb

    from welfare_offsets.eval.common.tracking import start_run
    from welfare_offsets.eval.study.report import category_rows, scaling_rows, subject_table

    run = start_run(
        config.wandb_project,
        name=f"sweep-{len(results['subjects'])}-subjects",
        config=dataclasses.asdict(config),
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
    run.finish()


def _number(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

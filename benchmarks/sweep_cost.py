"""Projected GPU cost of a scale sweep: prompts per subject (counted exactly, as `welfare sweep` would
build them for a recipe on its stimuli) divided by the scoring throughput measured on an H200 per model
size (BENCHMARKS.md, "Scoring on a GPU by model size"), projected beyond the largest size measured; a subject
spread over several GPUs is billed for each.

    python -m benchmarks.sweep_cost                                 # configs/sweep/qwen2.5.yaml
    python -m benchmarks.sweep_cost --config configs/sweep/pythia.yaml --update-md
    python -m benchmarks.sweep_cost --config configs/sweep/qwen2.5-scale.yaml --gpus 1,1,1,1,1,4,4 --update-md

No model is loaded: the comparison design's size depends only on the number of items.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.probes import default_instrument
from welfare_offsets.eval.study.profile import profile_items
from welfare_offsets.eval.study.sweep import SweepConfig
from welfare_offsets.train import sweep
from welfare_offsets.train.config import parse_config

REPO = Path(__file__).resolve().parents[1]  # the clone: its recipes and BENCHMARKS.md
DEFAULT_CONFIG = REPO / "configs/sweep/qwen2.5.yaml"

# Measured on one H200, bf16, batch 32, ~180-token prompts sharing a 150-token prefix, with prefix reuse
# as the scorer runs (2026-11-26, benchmarks/gpu_offset_bench.py). Keyed by parameter count.
H200_PROMPTS_PER_S = {0.49e9: 580.5, 1.54e9: 522.8, 3.09e9: 458.6, 7.62e9: 460.7}


def prompts_per_subject(config: SweepConfig) -> dict:
    stimuli = load_stimuli(config.stimuli)
    groups = profile_items(stimuli, config.split, config.empathy_split, config.max_items)
    n = len({e.id for group in groups.values() for e in group})
    probes = config.eval_config().probe_names
    self_report = n * len(default_instrument().self_report) if "self_report" in probes else 0
    stop = 2 * n if "stop" in probes else 0
    design = config.pair_design
    pairs = 0
    if "experienced_utility" in probes:
        pairs += sum(design.sizes(n + config.bundle_count(n)))  # the zero point's bundles share the design
    if "decision_utility" in probes:
        pairs += sum(design.sizes(n))
    return {
        "items": n,
        "self_report": self_report,
        "stop": stop,
        "comparison": 2 * pairs,
        "total": self_report + stop + 2 * pairs,
    }


def rate_for(params: float) -> tuple[float, str]:
    """Prompts/s at `params` and where the number comes from: the nearest measured size (log scale) up to the
    largest measured; beyond it, projected from the largest at throughput ~ 1 / params (at fixed tokens, a
    forward pass's FLOPs and weight reads grow with the parameters)."""
    largest = max(H200_PROMPTS_PER_S)
    if params > largest:
        scale = largest / params
        return H200_PROMPTS_PER_S[largest] * scale, f"projected: {largest / 1e9:.2f}B x {scale:.3f}"
    size = min(H200_PROMPTS_PER_S, key=lambda p: abs(np.log(p / params)))
    return H200_PROMPTS_PER_S[size], f"measured at {size / 1e9:.2f}B"


def subject_params(config: SweepConfig, given: str | None) -> list[float]:
    """The subjects' parameter counts: as given, else the recipe's (every subject's `params`), else the
    Qwen2.5 0.5B-7B sizes."""
    if given:
        return [float(p) for p in given.split(",")]
    recipe = [spec.params for spec in config.specs]
    return recipe if all(recipe) else [0.49e9, 1.54e9, 3.09e9, 7.62e9]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument(
        "--params",
        help="parameter counts of the subjects; default: the recipe's params, else 0.49e9,1.54e9,3.09e9,7.62e9 "
        "(the recipe's model ids are not downloaded)",
    )
    parser.add_argument(
        "--gpus",
        help="GPUs each subject's rank holds (gpus_per_rank), in the same order; default 1 each. Subjects of one "
        "GPU count are taken as one run, one rank each, in one round",
    )
    parser.add_argument("--update-md", action="store_true", help="rewrite the section in BENCHMARKS.md")
    args = parser.parse_args()
    # The whole recipe (its budget settings too), so a recipe `welfare sweep` takes is taken here.
    config, _budget, _ = parse_config(sweep.config_types(), ["--config", args.config], prog="sweep_cost")
    counts = prompts_per_subject(config)
    params = subject_params(config, args.params)
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else [1] * len(params)
    if len(gpus) != len(params) or min(gpus) < 1:
        parser.error(f"--gpus: one GPU count >= 1 per subject ({len(params)} subjects), got {args.gpus}")
    rows, runs, gpu_hours = [], {}, 0.0
    for size, held in zip(params, gpus):
        rate, source = rate_for(size)
        seconds = counts["total"] / rate
        runs.setdefault(held, []).append(seconds)
        gpu_hours += seconds * held / 3600
        rows.append(
            f"| {size / 1e9:.2f}B | {held} | {rate:,.0f} ({source}) | {seconds:.1f} | {seconds * held / 3600:.4f} |"
        )
    billed = {held: len(times) * held * max(times) / 3600 for held, times in sorted(runs.items())}
    run_lines = [
        f"  - {len(runs[held])} rank(s) x {held} GPU(s), one round of {max(runs[held]):.0f} s: {hours:.3f} GPU-hours"
        for held, hours in billed.items()
    ]
    config_path = Path(args.config).resolve()
    recipe = config_path.relative_to(REPO)
    flags = f" --gpus {args.gpus}" if args.gpus else ""
    heading = "## Projected cost of a scale sweep" + (
        " (from measured GPU throughput)" if config_path == DEFAULT_CONFIG else f": {recipe}"
    )
    section = "\n".join(
        [
            heading,
            "",
            f"Command: `python -m benchmarks.sweep_cost --config {recipe}{flags}`. Prompts per subject are",
            f"counted exactly as `welfare sweep` builds them on the built-in stimuli: {counts['items']} experiences (120 empathy items,",
            "everyday held-out items), "
            f"{counts['self_report']:,} self-report + {counts['stop']:,} stop + {counts['comparison']:,} comparison prompts = "
            f"**{counts['total']:,} prompts per subject**.",
            'Throughput is the H200 bf16 scoring rate with prefix reuse ("Scoring on a GPU by model size"): nearest measured size up to',
            f"{max(H200_PROMPTS_PER_S) / 1e9:.2f}B, and above it **projected** from that size at throughput ~ 1/params. No GPU was",
            "lent while the sweep was built, so every number here is a projection, not a sweep timing. An H100 has the",
            "H200's bf16 FLOP rate and ~30% less memory bandwidth: expect it as fast or somewhat slower.",
            "",
            "| subject | GPUs | prompts/s (H200) | scoring s | GPU-hours |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"- Scoring the whole sweep: ~{sum(map(sum, runs.values())):.0f} s of subject time, **~{gpu_hours:.3f} H200-hours** "
            "(scoring s x GPUs held). A subject",
            "  spread over k GPUs (device_map over one rank's GPUs) runs its layers one GPU after another: it scores at about",
            "  the rate one GPU of its size would, and is billed all k for its whole wall time.",
            "- Billed by the ledger (wall x ranks x GPUs per rank: ranks waiting for the slowest subject of their round",
            f"  are billed too), each GPU count's subjects taken as one run of one round: **~{sum(billed.values()):.3f} "
            "GPU-hours** in all.",
            *run_lines,
            "- Comparison prompts hold two transcripts (about twice the tokens of the measured prompts), so scoring may",
            "  take up to ~2x this. Loading weights is not included and is likely the larger part (2 bytes per parameter",
            "  in bf16: 15 GB at 7B, 145 GB at 72B); the meter in `welfare sweep` records both per subject",
            "  (`results.json` -> `subjects[].cost`, `cost.accelerator_hours`).",
            "- To measure instead of project, on a GPU: `python -m benchmarks.gpu_sweep_bench --tokenizer DIR` runs the",
            "  sweep's own per-subject path (load, score the built-in stimuli) on random-weight Qwen2.5 shapes. Written",
            "  and smoke-tested on CPU; not yet run on a GPU.",
            "- On the CPU test machine (2 cores) the synthetic families (6 models of 30-100k parameters, 104",
            "  experiences, ~1,550 prompts each) take ~16 s for the whole sweep.",
            "",
        ]
    )
    print(section)
    if args.update_md:
        from benchmarks.markdown_section import replace_section

        replace_section(REPO / "BENCHMARKS.md", heading, section)


if __name__ == "__main__":
    main()

"""Projected GPU cost of a scale sweep: prompts per subject (counted exactly, as `welfare sweep` would
build them for a recipe on its stimuli) divided by the scoring throughput measured on an H200 per model
size (BENCHMARKS.md, "Scoring on a GPU by model size").

    python -m benchmarks.sweep_cost                                 # configs/sweep/qwen2.5.yaml
    python -m benchmarks.sweep_cost --config configs/sweep/pythia.yaml --update-md

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


def rate_for(params: float) -> tuple[float, float]:
    """The measured throughput of the nearest measured size (log scale), and that size."""
    size = min(H200_PROMPTS_PER_S, key=lambda p: abs(np.log(p / params)))
    return H200_PROMPTS_PER_S[size], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/sweep/qwen2.5.yaml"))
    parser.add_argument(
        "--params",
        default="0.49e9,1.54e9,3.09e9,7.62e9",
        help="parameter counts of the subjects (the recipe's model ids are not downloaded)",
    )
    parser.add_argument("--update-md", action="store_true", help="rewrite the section in BENCHMARKS.md")
    args = parser.parse_args()
    # The whole recipe (its budget settings too), so a recipe `welfare sweep` takes is taken here.
    config, _budget, _ = parse_config(sweep.config_types(), ["--config", args.config], prog="sweep_cost")
    counts = prompts_per_subject(config)
    rows, total_s = [], 0.0
    for params in (float(p) for p in args.params.split(",")):
        rate, measured = rate_for(params)
        seconds = counts["total"] / rate
        total_s += seconds
        rows.append(
            f"| {params / 1e9:.2f}B | {rate:,.0f} (measured at {measured / 1e9:.2f}B) | {seconds:.1f} | {seconds / 3600:.4f} |"
        )
    section = "\n".join(
        [
            "## Projected cost of a scale sweep (from measured GPU throughput)",
            "",
            f"Command: `python -m benchmarks.sweep_cost --config {Path(args.config).resolve().relative_to(REPO)}`. Prompts per subject are",
            f"counted exactly as `welfare sweep` builds them on the built-in stimuli: {counts['items']} experiences (120 empathy items,",
            "everyday held-out items), "
            f"{counts['self_report']:,} self-report + {counts['stop']:,} stop + {counts['comparison']:,} comparison prompts = "
            f"**{counts['total']:,} prompts per subject**.",
            "Throughput is the H200 bf16 scoring rate with prefix reuse from the section above (nearest measured size). No GPU was lent",
            "while the sweep was built, so these are projections, not sweep timings.",
            "",
            "| subject | prompts/s (H200) | scoring s | GPU-hours |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
            f"- Scoring the whole sweep: ~{total_s:.0f} s, **~{total_s / 3600:.3f} H200-hours** in total. Comparison prompts",
            "  hold two transcripts (about twice the tokens of the measured prompts), so scoring may take up to ~2x",
            "  this. Loading weights is not included and is likely the larger part (15 GB at 7B); the meter in",
            "  `welfare sweep` records both per subject (`results.json` -> `subjects[].cost`, `cost.accelerator_hours`).",
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

        replace_section(REPO / "BENCHMARKS.md", section.splitlines()[0], section)


if __name__ == "__main__":
    main()

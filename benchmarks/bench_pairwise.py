"""The cost of the pairwise utility design: how many prompts the default budget asks per subject, and how
fast lived pairs score with and without reusing the first experience's turns as a shared prefix, and with
reuse chosen by measured cost ("auto", as shipped).

    python -m benchmarks.bench_pairwise [--experiences 10] [--max-batch-tokens N] [--threads N]
        [--update-md BENCHMARKS.md]

Counted (no model): comparison prompts per subject for `welfare eval` on the built-in stimuli (held-out
conditions, all empathy items) and for a session's before/after evaluation (24 items per condition),
under the default budget (2 N log2 N comparisons, with the zero point's bundles in the experienced-utility
design) against the design it replaced (two random cycles plus one active round of N/2 pairs).

Measured: `--experiences` held-out experiences and half as many bundles, as `welfare eval` builds them,
asked through `measure_pairwise` exactly as an evaluation asks them (random design, active rounds,
held-out pairs), with prefix reuse, without it and with auto (as shipped), in that order, on the default
model (CPU). The seconds per subject are the counted prompts over the measured rate of auto.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time

import numpy as np

from benchmarks.markdown_section import publish
from welfare_offsets.eval.evaluate import EvalConfig, select_conditions
from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.scoring import NextTokenScorer, ReuseChoice
from welfare_offsets.eval.subject import load_subject
from welfare_offsets.eval.utilities import PairDesign, measure_pairwise
from welfare_offsets.eval.zero_point import make_bundles

SECTION = "## Pairwise utility design: prompts and seconds per subject"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def comparison_prompts(n: int, config: EvalConfig, with_bundles: bool) -> int:
    """Prompts (both orders of every comparison) one pairwise fit of `n` experiences asks."""
    return 2 * sum(config.pair_design.sizes(n + (config.bundle_count(n) if with_bundles else 0)))


def replaced_design_prompts(n: int) -> int:
    """The design before: two random cycles (2 N pairs) and one active round of N / 2."""
    return 2 * (2 * n + n // 2)


def subject_sizes() -> dict[str, int]:
    stimuli = load_stimuli()
    sizes = {}
    for name, max_items in (("welfare eval (default)", None), ("session before/after (24 per condition)", 24)):
        config = EvalConfig(max_items=max_items, progress=False)
        chosen = select_conditions(stimuli, config)
        sizes[name] = len({e.id for items in chosen.values() for e in items})
    return sizes


class RecordingScorer(NextTokenScorer):
    """The scorer, keeping each call's size and path (`last_choice`) to report what auto did."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choices: list[tuple[int, ReuseChoice]] = []

    def next_token_logprobs(self, token_lists, *args, **kwargs):
        result = super().next_token_logprobs(token_lists, *args, **kwargs)
        self.choices.append((len(token_lists), self.last_choice))
        return result

    def describe(self) -> str:
        """Each call's prompts and path, in words: "110 prompts: reuse (measured, 510 vs 450 tokens/s)"."""
        words = []
        for prompts, choice in self.choices:
            rates = choice.tokens_per_second
            measured = f", {rates['reuse']:,.0f} vs {rates['whole']:,.0f} tokens/s" if rates else ""
            words.append(f"{prompts} prompts: {'reuse' if choice.reuse else 'no reuse'} ({choice.reason}{measured})")
        return "; ".join(words)


def timed(scorer, items, design) -> tuple[float, int]:
    start = time.perf_counter()
    result = measure_pairwise(
        scorer, items, "experienced_utility", design, np.random.default_rng(0), n_standardised=len(items)
    )
    return time.perf_counter() - start, len(result.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiences", type=int, default=10)
    parser.add_argument(
        "--max-batch-tokens", type=int, default=None, help="padded tokens per batch (default: the scorer's own)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--update-md", default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = EvalConfig(progress=False)
    design = config.pair_design
    sizes = subject_sizes()
    stimuli = load_stimuli()
    held = [e for e in stimuli.experiences if e.split == "heldout" and e.category != "empathy"]
    picks = np.random.default_rng(0).choice(len(held), args.experiences, replace=False)
    items = [held[k] for k in sorted(picks)]
    items += [b.experience for b in make_bundles(items, config.bundle_count(len(items)), np.random.default_rng(0))]
    subject = load_subject(None, None, device="cpu")
    load_before = os.getloadavg()[0]
    rates, scorers = {}, {}
    for reuse in (True, False, "auto"):
        scorer = scorers[reuse] = RecordingScorer(
            subject.model, subject.tokenizer, max_batch_tokens=args.max_batch_tokens, reuse_prefix=reuse, progress=False
        )
        timed(scorer, items[:6], PairDesign(budget=0.5))  # warm-up
        scorer.choices.clear()
        seconds, prompts = timed(scorer, items, design)
        rates[reuse] = prompts / seconds
        log(f"reuse={reuse}: {prompts} prompts in {seconds:.1f} s ({rates[reuse]:.2f} prompts/s)")
    better = max(rates[True], rates[False])

    rows = []
    for name, n in sizes.items():
        eu = comparison_prompts(n, config, with_bundles=True)
        du = comparison_prompts(n, config, with_bundles=False)
        rows.append(
            f"| {name} | {n} | {replaced_design_prompts(n)} | {eu} | {du} | "
            f"{eu / rates['auto'] / 60:.0f} | {(eu + du) / rates['auto'] / 60:.0f} |"
        )
    command = "python -m benchmarks.bench_pairwise " + shlex.join(sys.argv[1:])
    text = "\n".join(
        [
            SECTION,
            "",
            f"`{command.strip()}` on {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
            f"{args.threads or 'default'}, default model SmolLM2-135M-Instruct, fp32, {datetime.date.today()}.",
            "",
            f"Lived pairs ({args.experiences} held-out experiences and {args.experiences // 2} bundles, the default "
            f"design: random, two active rounds, 5% held out): **{rates[True]:.2f} prompts/s with prefix reuse, "
            f"{rates[False]:.2f} without ({rates[True] / rates[False]:.2f}x), {rates['auto']:.2f} with auto "
            f"(shipped; {rates['auto'] / better:.2f} of the better fixed path)**, timed one after another in this "
            f"run, batches of at most {scorers['auto'].max_batch_tokens:,} padded tokens. A lived pair holds two whole "
            "conversations, and a bundle two to four, so each prompt is long; the reuse shares the first "
            "conversation's turns across every pair it opens, and the second conversations, of widely mixed "
            "length, are cut into pieces of like length so that few columns are padding.",
            "",
            f"Auto's calls (one per round of the design): {scorers['auto'].describe()}. The first call of a shape (reuse's token saving, "
            "row width) with enough batches (3 for the first shape, 10 for a further one) times one batch of each "
            "path; later calls of that shape follow it, and smaller calls the nearest shape measured. Its cost against the better fixed path is that measurement "
            "and run-to-run noise."
            + (
                " Here auto came out faster than the path it ran, which is that noise."
                if rates["auto"] > better
                else ""
            )
            + (
                f" Other work shared the machine during this run (1-minute load average {load_before:.2f} before "
                f"timing, on {os.cpu_count()} CPUs): compare the paths timed here with each other rather than with "
                "runs at other times."
                if load_before >= 0.5
                else ""
            ),
            "",
            "| subject | experiences | prompts before (2.5 N pairs) | experienced utility (2 N log2 N, with "
            "bundles) | decision utility | minutes EU (CPU) | minutes EU + DU (CPU) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Minutes are the counted prompts over the measured rate of auto on this machine. The default "
            "budget is the anchor paper's and is sized for a GPU; on a CPU, a recipe sets `pair_budget` lower "
            "(the `welfare demo` recipes use 0.25) and leaves `decision_utility` out of `probes`.",
            "",
        ]
    )
    publish(text, SECTION, args.update_md)


if __name__ == "__main__":
    main()

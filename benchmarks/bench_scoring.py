"""Self-report scoring speed: the anchor's sampling method against exact next-token scoring, with and
without shared-prefix reuse and with reuse chosen by measured cost ("auto", as shipped), on the same battery
items and the same model (default SmolLM2-135M, CPU).

    python -m benchmarks.bench_scoring [--experiences 21] [--batch-size 32] [--samples 5]
        [--max-new-tokens 8] [--max-batch-tokens N] [--threads N] [--update-md BENCHMARKS.md]

An "item" is one battery question on one experience, so N experiences give N x 10 items. The four
methods score the same items:

* sampling (the anchor): each battery prompt sampled `--samples` times at temperature 1 (full
  distribution: top_k=0, top_p=1) for at most `--max-new-tokens` new tokens; the first standalone digit
  1-7 of each sample is parsed and the parsed digits are averaged. Batches hold about `--batch-size`
  sequences: batch_size // samples prompts per `generate` call (x samples rows),
  left-padded, sorted by length. (32 prompts x 5 = 160 rows per call was 1.65x slower on 2 CPU cores
  than 6 x 5 = 30 or 12 x 5, and 1 prompt per call 1.3x slower, so this is the baseline's best case.)
  A short cap is generous to the baseline: the anchor samples free text, and a model that explains
  itself before giving a number needs many more tokens.
* exact, no prefix reuse: `NextTokenScorer(reuse_prefix=False)`, every prompt run whole.
* exact, prefix reuse: `NextTokenScorer(reuse_prefix=True)`, the ten questions of an experience share
  one run of their common token prefix (groups = Request.group).
* exact, auto (the default): `NextTokenScorer(reuse_prefix="auto")` times a batch of each path inside the
  call and runs the rest on the faster; its ratio to the better of the two fixed paths, timed in the same
  run, is what measuring costs (plus noise). It is then timed on the same items again: a later call of a
  shape it has measured, which follows that measurement without timing (what most calls of a run are).

The exact methods fill batches to `--max-batch-tokens` (default: the scorer's own for the device). The
sampling target is for exact scoring as shipped (auto); the fixed paths are shown for reference. Each
method is warmed up once on one experience's items before it is timed with `time.perf_counter`.
With --update-md the `## Scoring` section of that file is replaced by the results; other sections are kept.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.markdown_section import publish
from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.probes import LIKERT, render_prompt, self_report_requests, self_report_scores
from welfare_offsets.eval.scoring import NextTokenScorer, pad_rows
from welfare_offsets.eval.subject import load_subject

SECTION = "## Scoring"
SAMPLING_GOAL = 20.0  # exact scoring >= 20x the sampling method (items/s)
REUSE_GOAL = 3.0  # prefix reuse >= 3x over no reuse
EXACT_PATHS = {"reuse": True, "plain": False, "auto": "auto"}  # timed in this order; "auto" is shipped
AGAIN = "auto, measured before"  # the auto scorer's second call on the same items
_DIGIT = re.compile(r"(?<!\d)([1-7])(?!\d)")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pick_experiences(stimuli, n: int):
    """`n` held-out experiences spread over categories: round-robin over sorted categories, file order within.

    The built-in set has 21 held-out categories, so the default 21 is one experience per category.
    """
    by_category = defaultdict(list)
    for e in stimuli.select(split="heldout"):
        by_category[e.category].append(e)
    queues = [by_category[c] for c in sorted(by_category)]
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return picked


def parse_digit(text: str) -> int | None:
    """The first standalone digit 1-7 in a sample (lenient: any words may come first), else None."""
    match = _DIGIT.search(text)
    return int(match.group(1)) if match else None


def sample_scores(model, tokenizer, token_lists, *, samples, max_new_tokens, prompts_per_call, pad_id):
    """The anchor's method: mean parsed digit per prompt (nan if no sample parses), and the parsed counts."""
    import torch

    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]), reverse=True)
    means = np.full(len(token_lists), np.nan)
    parsed = np.zeros(len(token_lists), dtype=int)
    new_tokens = 0
    for start in range(0, len(order), prompts_per_call):
        rows = order[start : start + prompts_per_call]
        ids, mask = pad_rows([token_lists[r] for r in rows], pad_id)  # left padding, as generation needs
        width = ids.shape[1]
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=samples,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
            )
        generated = out[:, width:]
        new_tokens += int((generated != pad_id).sum())
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for i, r in enumerate(rows):  # generate returns each prompt's samples consecutively
            digits = [d for d in map(parse_digit, texts[i * samples : (i + 1) * samples]) if d is not None]
            parsed[r] = len(digits)
            if digits:
                means[r] = float(np.mean(digits))
    return means, parsed, new_tokens


def token_counts(token_lists, groups) -> dict:
    """Real (unpadded) tokens each exact method runs: whole prompts vs one prefix per group + continuations."""
    by_group = defaultdict(list)
    for ids, g in zip(token_lists, groups):
        by_group[g].append(ids)
    prefixes, continuations = [], []
    for lists in by_group.values():
        n = min(len(t) for t in lists)
        p = next((i for i in range(n) if any(t[i] != lists[0][i] for t in lists)), n)
        p = min(p, n - 1)
        prefixes.append(p)
        continuations += [len(t) - p for t in lists]
    whole = sum(len(t) for t in token_lists)
    reuse = sum(prefixes) + sum(continuations)
    return {
        "whole": whole,
        "reuse": reuse,
        "prefix_mean": float(np.mean(prefixes)),
        "cont_mean": float(np.mean(continuations)),
        "prompt_mean": whole / len(token_lists),
        "groups": len(by_group),
    }


def _timed(function):
    """Wall seconds, the process's CPU seconds over the same span, and the result."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - start, time.process_time() - cpu, result


def run(args) -> tuple[dict, str]:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    subject = load_subject(device="cpu")
    model, tokenizer = subject.model, subject.tokenizer
    experiences = pick_experiences(load_stimuli(), args.experiences)
    if len(experiences) < 2:
        raise SystemExit("need at least 2 held-out experiences (one is used for the warm-up too)")
    requests = self_report_requests(experiences)
    prompts = [render_prompt(tokenizer, r.messages) for r in requests]
    groups = [r.group for r in requests]

    def new_scorer(path):
        return NextTokenScorer(
            model, tokenizer, max_batch_tokens=args.max_batch_tokens, reuse_prefix=path, progress=False
        )

    scorers = {name: new_scorer(path) for name, path in EXACT_PATHS.items()}
    token_lists = [scorers["plain"].tokenize(p) for p in prompts]
    per_experience = len(requests) // len(experiences)
    warm = slice(0, per_experience)  # the first experience's items
    pad_id = scorers["plain"].pad_id
    prompts_per_call = max(1, args.batch_size // args.samples)  # about batch_size rows per generate call

    def sampling(sl=slice(None)):
        return sample_scores(
            model,
            tokenizer,
            token_lists[sl],
            samples=args.samples,
            max_new_tokens=args.max_new_tokens,
            prompts_per_call=prompts_per_call,
            pad_id=pad_id,
        )

    def exact(scorer, sl=slice(None)):
        return self_report_scores(scorer.label_probs(prompts[sl], LIKERT, groups[sl]))

    log(
        f"{len(requests)} items ({len(experiences)} experiences x {per_experience}), "
        f"torch threads {torch.get_num_threads()}; warming up"
    )
    torch.manual_seed(args.seed)
    sampling(warm)
    for scorer in scorers.values():
        exact(scorer, warm)  # one batch: the auto scorer runs it without measuring

    # CPU share = process CPU seconds / (wall seconds x torch threads): well below 1 means something else
    # on the machine took CPU during the run, and the timings are not to be trusted.
    load_before = os.getloadavg()[0]
    threads = torch.get_num_threads()
    seconds, cpu_seconds, expected = defaultdict(list), defaultdict(float), {}
    # Interleaved rounds, each in a rotated order, so drift on the machine and a method's place in the round
    # touch every method alike. A run asks many calls of one shape (an evaluation: ~12,000 prompts per
    # subject) and only the first measures: auto is timed on its first call, then again on its second.
    units = [[("reuse", "reuse")], [("plain", "plain")], [("auto", "auto"), (AGAIN, "auto")]]
    for round_ in range(args.repeats):
        if round_:
            scorers["auto"] = new_scorer("auto")  # a first call again: it measures
            exact(scorers["auto"], warm)
        turn = round_ % len(units)
        for name, scorer_name in [step for unit in units[turn:] + units[:turn] for step in unit]:
            scorer = scorers[scorer_name]
            wall, cpu, (expected[name], mass) = _timed(partial(exact, scorer))
            seconds[name].append(wall)
            cpu_seconds[name] += cpu
            log(f"round {round_ + 1}, exact, {name}: {wall:.1f} s ({scorer.last_choice.reason})")
            if name == "auto":
                choice = scorer.last_choice
    timings = {name: float(np.median(times)) for name, times in seconds.items()}
    share = {name: cpu_seconds[name] / (sum(seconds[name]) * threads) for name in seconds}
    log(f"auto chose: {choice}")
    torch.manual_seed(args.seed)
    timings["sampling"], cpu, (sampled, parsed, new_tokens) = _timed(sampling)
    share["sampling"] = cpu / (timings["sampling"] * threads)
    log(f"sampling: {timings['sampling']:.1f} s (CPU share {share['sampling']:.2f})")

    items = len(requests)
    rate = {k: items / v for k, v in timings.items()}
    tokens = token_counts(token_lists, groups)
    max_diff = max(float(np.max(np.abs(expected[name] - expected["plain"]))) for name in ("reuse", "auto"))
    total_samples = items * args.samples
    failure = 1.0 - parsed.sum() / total_samples
    unscored = int((parsed == 0).sum())
    ok = ~np.isnan(sampled)
    sample_gap = float(np.mean(np.abs(sampled[ok] - expected["auto"][ok]))) if ok.any() else float("nan")
    results = {
        "items": items,
        "experiences": len(experiences),
        "timings": timings,
        "rate": rate,
        "tokens": tokens,
        "max_diff": max_diff,
        "failure": failure,
        "unscored": unscored,
        "sample_gap": sample_gap,
        "new_tokens": new_tokens,
        "threads": threads,
        "share": share,
        "load_before": load_before,
        "mass": float(np.mean(mass)),
        "choice": choice,
    }

    ratio_plain = rate["plain"] / rate["sampling"]
    ratio_reuse = rate["reuse"] / rate["sampling"]
    ratio_auto = rate["auto"] / rate["sampling"]
    ratio_prefix = rate["reuse"] / rate["plain"]
    better = "reuse" if rate["reuse"] >= rate["plain"] else "plain"
    auto_vs_better = rate["auto"] / rate[better]
    again_vs_better = rate[AGAIN] / rate[better]
    token_ratio = tokens["whole"] / tokens["reuse"]
    command = "python -m benchmarks.bench_scoring" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    measured = (
        f", measuring {choice.tokens_per_second['reuse']:,.0f} prompt tokens/s with reuse against "
        f"{choice.tokens_per_second['whole']:,.0f} without"
        if choice.tokens_per_second
        else ""
    )
    auto_reading = (
        f"Auto (shipped) chose {'reuse' if choice.reuse else 'no reuse'} ({choice.reason}{measured}) and ran at "
        f"{auto_vs_better:.2f} of the better fixed path ({'reuse' if better == 'reuse' else 'no reuse'}), timed in "
        "this same run: the difference is its measurement (before its first, one batch runs untimed; then one "
        "batch of each path is timed, so one runs the slower way) and run-to-run noise. A later call of the same "
        f"shape follows that measurement without timing again ({again_vs_better:.2f} of the better path): an "
        "evaluation asks many calls of each shape, so it pays about one batch run the slower way per shape."
        + (" Here auto came out faster than the path it ran, which is that noise." if auto_vs_better > 1 else "")
    )
    reading = (
        f"Exact scoring as shipped (auto) is {ratio_auto:.1f}x the sampling method "
        f"(target {SAMPLING_GOAL:.0f}x: {'met' if ratio_auto >= SAMPLING_GOAL else 'not met'}) and prefix reuse is "
        f"{ratio_prefix:.2f}x over no reuse (target {REUSE_GOAL:.0f}x: "
        f"{'met' if ratio_prefix >= REUSE_GOAL else 'not met'}). Without reuse exact scoring is only "
        f"{ratio_plain:.1f}x: a sampled item costs {args.samples} prefills of its prompt (`generate` copies the "
        f"prompt once per sample before the first forward) plus {args.max_new_tokens} decode steps, against one "
        f"prefill for exact scoring, so that ratio stays near {args.samples}-{2 * args.samples}x whatever the "
        "implementation; the rest of the gap comes from reuse. "
        f"The baseline is flattered by its {args.max_new_tokens}-token cap and a lenient parse, and on this model "
        f"it mostly fails anyway ({failure:.0%} of samples give no digit 1-7), so the ratio understates the gain."
    )
    section = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}` ({datetime.date.today().isoformat()}).",
            f"Machine: {os.cpu_count()} CPUs, torch threads {results['threads']}, {platform.platform()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.",
            f"Model: {subject.model_id} ({subject.info['num_parameters'] / 1e6:.0f}M parameters, "
            f"{subject.info['dtype']}, {subject.info['device']}). Items: {items} = {len(experiences)} held-out "
            f"experiences (round-robin over categories) x {per_experience} battery questions; batches of at most "
            f"{scorers['auto'].max_batch_tokens:,} padded tokens for the exact methods"
            f"{'' if args.max_batch_tokens else ' (the default on this device)'}, {prompts_per_call} prompts x "
            f"{args.samples} samples for sampling.",
            "",
            "| method | time | items/s | vs sampling | goal | met |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| sampling (anchor): {args.samples} samples/item at T=1, <= {args.max_new_tokens} new tokens, parse digit "
            f"| {timings['sampling']:.1f} s | {rate['sampling']:.2f} | 1x | | |",
            f"| exact, no prefix reuse (`reuse_prefix=False`) | {timings['plain']:.1f} s | {rate['plain']:.2f} "
            f"| {ratio_plain:.1f}x | (reference) | |",
            f"| exact, prefix reuse (`reuse_prefix=True`) | {timings['reuse']:.1f} s | {rate['reuse']:.2f} "
            f"| {ratio_reuse:.1f}x | (reference) | |",
            f'| exact, auto (`reuse_prefix="auto"`, shipped) | {timings["auto"]:.1f} s | {rate["auto"]:.2f} '
            f"| {ratio_auto:.1f}x | >= {SAMPLING_GOAL:.0f}x | {met(ratio_auto >= SAMPLING_GOAL)} |",
            f"| prefix reuse over no reuse | | | {ratio_prefix:.2f}x | >= {REUSE_GOAL:.0f}x "
            f"| {met(ratio_prefix >= REUSE_GOAL)} |",
            f"| exact, auto again (a later call: its shape measured before) | {timings[AGAIN]:.1f} s "
            f"| {rate[AGAIN]:.2f} | {rate[AGAIN] / rate['sampling']:.1f}x | | |",
            f"| auto over the better fixed path: first call, later call | | | {auto_vs_better:.2f}x, "
            f"{again_vs_better:.2f}x | | |",
            "",
            f"- {reading}",
            f"- {auto_reading}",
            f"- Reuse, no reuse and auto agree: max |difference| of the expected digit over the {items} items is "
            f"{max_diff:.1e}.",
            f"- Sampling: {failure:.1%} of the {total_samples:,} samples had no digit 1-7 to parse; {unscored} items got "
            f"no parsable sample at all; where one parsed, the {args.samples}-sample mean differs from the exact "
            f"expected digit by {sample_gap:.2f} on average (sampling noise plus parse choices). "
            f"Prompts are batched {prompts_per_call} per `generate` call (x{args.samples} sequences), left-padded and "
            f"sorted by length; top_k=0, top_p=1. For comparison, the exact scorer puts "
            f"{results['mass']:.1%} of the next-token probability on the digits 1-7 on average.",
            f"- Tokens per prompt: {tokens['prompt_mean']:.0f} on average, of which {tokens['prefix_mean']:.0f} are the "
            f"experience's shared prefix (chat template, system prompt, conversation, the question's shared wording) and "
            f"{tokens['cont_mean']:.0f} the item's own continuation (its two poles and the closing template tokens). "
            f"Reuse runs {tokens['reuse']:,} instead of {tokens['whole']:,} real tokens ({token_ratio:.1f}x fewer); "
            f"the measured {ratio_prefix:.2f}x is that bound less the continuations' attention over the cached "
            "prefix, the cache fan-out, padding and per-call overhead.",
            "- Each method is warmed up once on one experience's items (a fresh auto scorer each round), then timed "
            f"over all items (`time.perf_counter`): sampling once, the exact methods in {args.repeats} interleaved "
            "rounds (each in a rotated order), of which the table shows the median (range: "
            + ", ".join(f"{name} {min(t):.1f}-{max(t):.1f} s" for name, t in seconds.items())
            + f"). CPU share (process CPU time / (wall x {threads} threads)): sampling "
            f"{share['sampling']:.2f}, no reuse {share['plain']:.2f}, reuse {share['reuse']:.2f}, auto "
            f"{share['auto']:.2f}; 1-minute load average before timing {load_before:.2f}."
            + (
                " **A share well below 1 means other work competed for the CPUs; these timings are suspect.**"
                if min(share.values()) < 0.85
                else ""
            )
            + (
                " Other work shared the machine during this run (the load average above, before ours): compare "
                "the methods timed here with each other rather than with runs at other times."
                if load_before >= 0.5
                else ""
            ),
            "",
        ]
    )
    return results, section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiences",
        type=int,
        default=21,
        help="held-out experiences, round-robin over categories (x10 battery items)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="sampling: rows (prompts x samples) per generate call",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        help="exact methods: padded tokens per batch (default: the scorer's default for the device)",
    )
    parser.add_argument("--samples", type=int, default=5, help="sampled generations per item (the anchor: 5)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=8, help="cap on sampled tokens; short caps flatter the baseline"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved timed rounds of the exact methods (their median is shown)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--update-md", type=Path, help="replace the `## Scoring` section of this markdown file")
    args = parser.parse_args()
    _, section = run(args)
    publish(section, SECTION, args.update_md)


if __name__ == "__main__":
    main()

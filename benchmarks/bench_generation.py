"""Own-reply generation on CPU: tokens/s of `live_through` as it was (calls of 16 conversations in the
caller's order, a dynamic KV cache) against the batching it now uses, in the same run, on the default model.

    python -m benchmarks.bench_generation [--experiences 48] [--repeats 2] [--rows N] [--threads N] [--update-md BENCHMARKS.md]

Experiences are held-out ones of the built-in stimuli, spread over categories, lived with their own replies
(greedy, 48 new tokens at most, the `reply_tokens` default). Runs alternate between the ways of batching, so
drift on a shared machine shows up as spread between repeats rather than as a gap; every way must give the
same replies (greedy replies do not depend on the batching), which the run checks. Tokens/s is new tokens
written (end-of-sequence included) over the wall time of the whole `live_through` call, prefill included.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import statistics
import sys

import torch

from benchmarks.markdown_section import publish
from welfare_offsets.eval.evaluate import spread_evenly
from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.replies import Batching, GenerationStats, default_batching, live_through
from welfare_offsets.eval.subject import load_subject

SECTION = "## Generation: own replies on CPU"
BEFORE = Batching(rows=16, cache_tokens=None, by_length=False, static_cache=False)  # live_through before issue 15


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ways(model, rows: int | None) -> dict[str, Batching]:
    """The old batching, the default on this device, and the default with the other kind of KV cache."""
    new = default_batching(model)
    if rows:
        new = dataclasses.replace(new, rows=rows)
    other = dataclasses.replace(new, static_cache=not new.static_cache)
    return {"before": BEFORE, "default": new, "other cache": other}


def describe(batching: Batching) -> str:
    order = "longest prompt first" if batching.by_length else "caller's order"
    slots = "no slot limit" if batching.cache_tokens is None else f"<= {batching.cache_tokens:,} cache slots"
    cache = "static" if batching.static_cache else "dynamic"
    return f"<= {batching.rows} rows, {slots}, {order}, {cache} KV cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiences", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=None, help="rows per call of the new way (default: the device's)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a busy machine)")
    parser.add_argument("--update-md", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    subject = load_subject(None, device="cpu")
    items = spread_evenly(load_stimuli().select(split="heldout"), args.experiences)
    turns = sum(m["role"] == "user" for e in items for m in e.messages)
    log(f"{len(items)} experiences, {turns} user turns, torch threads {torch.get_num_threads()}")
    batchings = ways(subject.model, args.rows)
    runs: dict[str, list[dict]] = {name: [] for name in batchings}
    replies: dict[str, list] = {}
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for name, batching in batchings.items():
            stats = GenerationStats()
            lived = live_through(
                subject, items, max_new_tokens=args.max_new_tokens, batching=batching, progress=False, stats=stats
            )
            runs[name].append(stats.as_dict())
            replies[name] = [e.messages for e in lived]
            log(f"  {name} #{repeat}: {stats.as_dict()['tokens_per_s']:.1f} tokens/s, {stats.seconds:.1f} s")
    same = all(r == replies["before"] for r in replies.values())
    rates = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    lines = [
        SECTION,
        "",
        f"Command: `python -m benchmarks.bench_generation {shlex.join(sys.argv[1:])}` "
        f"({datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs shared with other "
        f"work: 1-minute load average {load_before:.2f} before the runs, torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}).",
        f"Default model ({subject.model_id}, fp32, CPU), {len(items)} held-out experiences ({turns} user turns, "
        f"so {turns} replies per run), at most {args.max_new_tokens} new tokens per reply, greedy; "
        f"{args.repeats} runs per way, alternated.",
        "",
        "| way | batching | tokens/s, median (runs) | new tokens | vs before |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, batching in batchings.items():
        each = ", ".join(f"{r['tokens_per_s']:.1f}" for r in runs[name])
        lines.append(
            f"| {name} | {describe(batching)} | {rates[name]:.1f} ({each}) | {runs[name][0]['new_tokens']:,} "
            f"| {rates[name] / rates['before']:.2f}x |"
        )
    lines += [
        "",
        f"- Replies identical across the ways (greedy): {'yes' if same else 'NO'}. The default's KV cache over the "
        f"other: {rates['default'] / rates['other cache']:.2f}x.",
        "- On a CPU a decode step costs little more for more rows, so the gain is mostly fewer `generate` calls (each "
        "runs until its longest reply ends, however few rows it has) and less left padding in the prefill.",
        "- The machine was shared with other work while this ran: read the ratios as direction, not as a precise speed-up.",
    ]
    text = "\n".join(lines) + "\n"
    publish(text, SECTION, args.update_md)
    if not same:
        sys.exit("replies differ between ways of batching")


if __name__ == "__main__":
    main()

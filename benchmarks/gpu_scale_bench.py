"""GPU benchmark for scale (issue 15): how close scoring and own-reply generation come to what the card itself
can do, on random-weight Qwen2.5 shapes 0.5B-7B, each against the card's own rates measured in the same run.

    python -m benchmarks.gpu_scale_bench            # one H100/H200, bf16: 2-5 minutes expected (see below)
    python -m benchmarks.gpu_scale_bench --smoke    # CPU, the tiny shape, fp32, few prompts: proves it runs
    python -m benchmarks.gpu_scale_bench --from-json gpu_scale_bench.json --update-md BENCHMARKS.md

The card, first: its dense matmul rate (8192^3 bf16 products, gpu_offset_bench.matmul_ceiling) and its memory
bandwidth (a 1 GiB device-to-device copy: bytes read + written). Then per size, one model built on the device
with random weights (speed does not depend on them; gpu_offset_bench.build_model):

* scoring: NextTokenScorer.next_token_logprobs, its default batching, on gpu_offset_bench's probe workload
  (600 prompts, about a self-report battery's call, in groups of 12 sharing a 150-token prefix, 24-36-token
  continuations) with reuse_prefix True, False and "auto". Prompts/s, and the share of the matmul rate reached
  by the FLOPs of the tokens computed: 2 x decoder matmul parameters x tokens run + 4 x layers x hidden x keys
  attended + 2 x hidden x vocab per prompt (its one logits row). A forward hook counts tokens and keys from
  each call's attention mask, so padding is not counted and a prefix run again for each prompt (no reuse) is:
  the share says how well the card is used, prompts/s how fast the work gets done. One more call per mode,
  in torch's sync debug mode, counts the times the host waited for the card (host_waits): where the share
  falls short, they say whether the card sat idle between launches.
* generation: eval.replies.generate, the library's batched call, on 64 prompts of 120-180 random tokens, up
  to 48 new tokens, greedy, with a static KV cache (live_through's default) and with the dynamic one. Tokens/s
  end to end, and of the decode steps alone (a 48-token call less a 1-token call, the prefill) against the
  bandwidth bound: 64 x bandwidth / bytes a decode step must read (every weight once, plus each row's KV cache
  at its mean length over the steps).

The sessions' own meter (ledger/meter.py) runs over the sizes, so the run also shows that NVML's energy
counter is found and read on this card, as sessions bill it.

Goals (issue 15), judged on the scorer's default ("auto") and the static cache: scoring >= 50% of the matmul
rate at 7B and >= 20% at 0.5B; "auto" never below 1.0x of no reuse; decoding at batch 64 >= 50% of the
bandwidth bound at 7B.

Device time on one H100 (an estimate: no GPU was lent while this was written): start-up and the card's rates
~20 s; per size the build (2-20 s), scoring (3 modes, each a warm-up, then passes until 3 passes and 3 s, the
last starting before 12 s, then the counting call: ~15 s at 0.5B, ~30 s at 7B, where a no-reuse pass is ~4
s) and generation (2 caches, each a warm-up, two 48-token and two 1-token calls: 5-10 s), so 25-70 s a size
and 2-5 minutes for the four. No size starts after --deadline-s (360 s), so even the slowest case ends inside
7.5 minutes.

On the device machine nothing needs carrying (torch, transformers, accelerate and peft are installed there,
and the prompts are random token ids, so no tokenizer folder either); the package is installed from the
working tree first, since the benchmarks import it as welfare_offsets.*:

    pip install -q --no-deps --no-build-isolation -e . && python -m benchmarks.gpu_scale_bench

It writes $OUT/gpu_scale_bench.json (./gpu_scale_bench.json without $OUT) and prints the Markdown section;
`--from-json FILE --update-md BENCHMARKS.md` writes that section from a GPU run's file, and refuses a smoke
or CPU one: BENCHMARKS.md gets measured GPU numbers only.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.gpu_offset_bench import (
    QWEN,
    device_seconds,
    environment,
    fmt,
    free_memory,
    linear_shapes,
    log,
    matmul_ceiling,
    probe_workload,
    section,
    sync,
    timed_build,
    timed_passes,
)
from benchmarks.markdown_section import replace_section
from welfare_offsets.ledger.meter import Meter

SECTION = "## Scale on a GPU: scoring and generation against the card's own rates"
REUSE_MODES = {"reuse": True, "no_reuse": False, "auto": "auto"}
GOALS = {"scoring_share_7B": 0.5, "scoring_share_0.5B": 0.2, "auto_over_no_reuse": 1.0, "decode_share_7B": 0.5}


# ---- the card ------------------------------------------------------------------------------------


def copy_bandwidth(args) -> dict:
    """Memory bandwidth: bytes read and written by a large device-to-device copy, median of 10."""
    elements = 2**20 if args.smoke else 2**29  # 1 GiB of bf16 on the GPU
    source = torch.empty(elements, dtype=args.dtype, device=args.device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    seconds = statistics.median(device_seconds(lambda: target.copy_(source), args.device) for _ in range(10))
    moved = 2 * source.numel() * source.element_size()
    return {"bytes_moved": moved, "median_s": seconds, "bytes_per_s": moved / seconds}


# ---- per size ------------------------------------------------------------------------------------


def matmul_parameters(s: dict) -> int:
    """Weights every token multiplies by: the decoder's linear layers (the LM head is counted per logits row)."""
    return s["num_hidden_layers"] * sum(a * b for a, b in linear_shapes(s))


def count_computed(counts: list, module, args, kwargs) -> None:
    """Forward pre-hook: per call, the tokens run and the keys they attend to, from its 2-D attention mask
    (left on the device, so the timed run is not synchronised)."""
    mask = kwargs["attention_mask"]
    inputs = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
    queries = mask[:, -inputs.shape[1] :]
    counts.append(torch.stack([queries.sum(), (mask.cumsum(-1)[:, -inputs.shape[1] :] * queries).sum()]))


def scoring(model, s: dict, args, matmul_rate: float) -> dict:
    """Prompts/s and the share of the matmul rate per reuse mode, the scorer's defaults otherwise."""
    from welfare_offsets.eval.scoring import NextTokenScorer

    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)  # the scorer reads only the pad id
    token_lists, groups = probe_workload(args, s["vocab_size"])
    out = {"prompts": len(token_lists), "mean_tokens": float(np.mean([len(t) for t in token_lists]))}
    for key, reuse in REUSE_MODES.items():
        scorer = NextTokenScorer(model, tokenizer, reuse_prefix=reuse, progress=False)
        scorer.next_token_logprobs(token_lists[:24], groups[:24])  # warm-up: kernels, allocator, cuBLAS
        counts: list[torch.Tensor] = []
        hook = model.register_forward_pre_hook(functools.partial(count_computed, counts), with_kwargs=True)
        try:
            times = timed_passes(functools.partial(scorer.next_token_logprobs, token_lists, groups), args)
        finally:
            hook.remove()
        forwards = len(counts) / len(times)
        tokens, keys = (int(x) for x in torch.stack(counts).sum(0).tolist())
        h, layers = s["hidden_size"], s["num_hidden_layers"]
        rows = len(token_lists) * len(times)
        flops = 2 * matmul_parameters(s) * tokens + 4 * layers * h * keys + 2 * h * s["vocab_size"] * rows
        out[key] = {
            "times": times,
            "prompts_per_s": rows / sum(times),
            "tokens_per_pass": tokens / len(times),
            "flops_per_s": flops / sum(times),
            "share_of_matmul_rate": flops / sum(times) / matmul_rate,
            "choice": f"{'reuse' if scorer.last_choice.reuse else 'no reuse'}: {scorer.last_choice.reason}",
            "forwards_per_call": forwards,
            "host_waits_per_call": host_waits(functools.partial(scorer.next_token_logprobs, token_lists, groups)),
        }
    out["auto_over_no_reuse"] = out["auto"]["prompts_per_s"] / out["no_reuse"]["prompts_per_s"]
    out["reuse_over_no_reuse"] = out["reuse"]["prompts_per_s"] / out["no_reuse"]["prompts_per_s"]
    return out


def host_waits(run) -> int | None:
    """How often one call of `run` made the host wait for the GPU (torch's sync debug mode: a blocking copy,
    .item(), a stream synchronised; waiting on an event is not counted), or None off CUDA. The scorer waits
    once per batch by design (its results' copy); more is time the device may sit idle while the host works."""
    if not torch.cuda.is_available():
        return None
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def decode_step_bytes(model, s: dict, rows: int, mean_context: float) -> float:
    """Bytes one decode step must read at the least: every weight once (the embedding rows looked up are
    negligible, a tied LM head is read once) and every row's KV cache."""
    size = next(model.parameters()).element_size()
    weights = matmul_parameters(s) + s["hidden_size"] * s["vocab_size"]
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    kv_per_token = s["num_hidden_layers"] * 2 * s["num_key_value_heads"] * head_dim
    return size * (weights + rows * mean_context * kv_per_token)


def generation(model, s: dict, args, bandwidth: float) -> dict:
    """Tokens/s of eval.replies.generate at batch `args.rows`, static and dynamic KV cache, and its decode
    steps against the bandwidth bound."""
    from welfare_offsets.eval.replies import generate

    rng = np.random.default_rng(2)
    low, high = args.prompt_tokens
    vocab = s["vocab_size"]
    prompts = [rng.integers(3, vocab, size=int(rng.integers(low, high + 1))).tolist() for _ in range(args.rows)]
    # End-of-sequence is the last id, which random weights rarely pick: every row writes all its tokens.
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=vocab - 1)
    subject = SimpleNamespace(model=model, tokenizer=tokenizer, soft_prompt=None)
    mean_prompt = float(np.mean([len(p) for p in prompts]))
    step_bytes = decode_step_bytes(model, s, args.rows, mean_prompt + args.new_tokens / 2)
    bound = args.rows * bandwidth / step_bytes
    out = {"rows": args.rows, "new_tokens": args.new_tokens, "mean_prompt_tokens": mean_prompt}
    out |= {"decode_step_bytes": step_bytes, "bound_tokens_per_s": bound}
    for key, static in (("static", True), ("dynamic", False)):
        call = functools.partial(generate, subject, prompts, static_cache=static)
        section(out, key, decode_rates, call, args, bound)
    return out


def decode_rates(call, args, bound: float) -> dict:
    """Tokens/s of one way of generating, end to end and of its decode steps alone, and their share of `bound`."""
    call(max_new_tokens=4)  # warm-up
    full = [timed_generation(call, args.new_tokens, args.device) for _ in range(2)]
    prefill = [timed_generation(call, 1, args.device) for _ in range(2)]
    full_s, prefill_s = statistics.median(t for t, _ in full), statistics.median(t for t, _ in prefill)
    decoded = full[0][1] - prefill[0][1]
    out = {
        "full_s": [t for t, _ in full],
        "prefill_s": [t for t, _ in prefill],
        "tokens": full[0][1],
        "tokens_per_s": full[0][1] / full_s,
        "decode_tokens_per_s": decoded / (full_s - prefill_s),
        "share_of_bound": decoded / (full_s - prefill_s) / bound,
    }
    log(f"  decode {out['decode_tokens_per_s']:,.0f} tokens/s, {out['share_of_bound']:.1%} of the bound")
    return out


def timed_generation(call, new_tokens: int, device: str) -> tuple[float, int]:
    """Seconds of one generate call and the tokens it wrote (ids come back to the host, which synchronises)."""
    sync(device)
    t0 = time.perf_counter()
    written = sum(map(len, call(max_new_tokens=new_tokens)))
    return time.perf_counter() - t0, written


def measure_size(name: str, args, card: dict) -> dict:
    model, s, build_s = timed_build(name, args)
    out = {"shape": s, "params": sum(p.numel() for p in model.parameters()), "build_s": build_s}
    try:  # each part on its own: a failing one (an OOM, another transformers) keeps the other's numbers
        section(out, "scoring", scoring, model, s, args, card["matmul"]["flops_per_s"])
        section(out, "generation", generation, model, s, args, card["bandwidth"]["bytes_per_s"])
        if args.device == "cuda":
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    finally:
        del model
        free_memory(args.device)
    return out


# ---- report --------------------------------------------------------------------------------------


def found(r: dict, *path: str):
    """The value at `path` in a result, or None where a part did not run or failed."""
    for key in path:
        if not isinstance(r, dict) or "error" in r or key not in r:
            return None
        r = r[key]
    return r


def goals(results: dict) -> list[tuple[str, float | None, float]]:
    """(goal, measured, threshold) for each of issue 15's goals (a share, or a ratio where the goal says "over");
    measured is None where its size did not run."""
    sizes = measured_sizes(results)
    shipped = {name: found(r, "scoring", "auto", "share_of_matmul_rate") for name, r in sizes.items()}
    autos = [x for r in sizes.values() if (x := found(r, "scoring", "auto_over_no_reuse")) is not None]
    decode = found(sizes.get("7B", {}), "generation", "static", "share_of_bound")
    return [
        ("scoring at 7B, share of the matmul rate (auto, the default)", shipped.get("7B"), GOALS["scoring_share_7B"]),
        ("scoring at 0.5B, share of the matmul rate (auto)", shipped.get("0.5B"), GOALS["scoring_share_0.5B"]),
        ("auto reuse over no reuse, lowest over sizes", min(autos) if autos else None, GOALS["auto_over_no_reuse"]),
        ("decoding at batch 64, 7B, share of the bandwidth bound", decode, GOALS["decode_share_7B"]),
    ]


def measured_sizes(results: dict) -> dict[str, dict]:
    return {k.removeprefix("size_"): v for k, v in results.items() if k.startswith("size_")}


def scoring_table(sizes: dict[str, dict]) -> list[str]:
    lines = [
        "| model | params | prompts/s: reuse | no reuse | auto (its last choice) | share of matmul rate: reuse / "
        "no reuse / auto | auto / no reuse | forward passes / host waits per call: reuse, no reuse, auto |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in sizes.items():
        sc = r.get("scoring", r)
        if "error" in sc:
            lines.append(f"| {name} | error: {sc['error'][:150]} | | | | | | |")
            continue
        rates = [f"{sc[k]['prompts_per_s']:,.0f}" for k in REUSE_MODES]
        shares = " / ".join(f"{sc[k]['share_of_matmul_rate']:.1%}" for k in REUSE_MODES)
        waits = ", ".join(
            f"{fmt(sc[k].get('forwards_per_call'), '.0f')} / {fmt(sc[k].get('host_waits_per_call'), 'd')}"
            for k in REUSE_MODES
        )
        lines.append(
            f"| {name} | {r['params'] / 1e6:,.0f}M | {rates[0]} | {rates[1]} | {rates[2]} ({sc['auto']['choice']}) "
            f"| {shares} | {sc['auto_over_no_reuse']:.2f}x | {waits} |"
        )
    return lines


def generation_cells(gen: dict, key: str) -> list[str]:
    """End-to-end and decode tokens/s and the share of the bound, or the error, of one way of generating."""
    run = gen.get(key, gen)
    if "error" in run:
        return [f"error: {run['error'][:120]}", "", ""]
    return [f"{run['tokens_per_s']:,.0f}", f"{run['decode_tokens_per_s']:,.0f}", f"{run['share_of_bound']:.1%}"]


def generation_table(sizes: dict[str, dict]) -> list[str]:
    lines = [
        "| model | bandwidth bound, tokens/s | static cache: end to end | decode | share of bound "
        "| dynamic cache: end to end | decode | share of bound | build s | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in sizes.items():
        gen = r.get("generation", r)
        bound = fmt(gen.get("bound_tokens_per_s"))
        cells = generation_cells(gen, "static") + generation_cells(gen, "dynamic")
        build = fmt(r.get("build_s"), ".1f")
        lines.append(f"| {name} | {bound} | {' | '.join(cells)} | {build} | {fmt(r.get('peak_gib'), '.1f')} |")
    return lines


def goals_table(results: dict) -> list[str]:
    lines = ["| goal (issue 15) | measured | goal | met |", "| --- | --- | --- | --- |"]
    for goal, measured, threshold in goals(results):
        ratio = "over" in goal
        spec, unit = (".2f", "x") if ratio else (".1%", "")
        shown = "not run" if measured is None else format(measured, spec) + unit
        met = "-" if measured is None else ("yes" if measured >= threshold else "no")
        lines.append(f"| {goal} | {shown} | >= {format(threshold, spec)}{unit} | {met} |")
    return lines


def meter_line(meter: dict | None) -> str:
    """What the sessions' meter (ledger/meter.py) read over the sizes: hours, and NVML energy where counted."""
    if meter is None:
        return "Meter: not recorded in this run."
    energy = meter["energy_kwh"]
    read = (
        f"NVML energy {energy * 1000:,.1f} Wh, a mean {energy * 3.6e6 / meter['seconds']:,.0f} W"
        if energy is not None
        else "no NVML energy (no counter here)"
    )
    return f"Meter (`ledger/meter.py`, as sessions bill): {meter['gpu_hours']:.4f} accelerator-hours over the sizes, {read}."


def markdown(results: dict) -> str:
    env, card = results["env"], results["card"]
    sizes, work = measured_sizes(results), results["workload"]
    lines = [
        SECTION,
        "",
        f"Command: `python -m benchmarks.gpu_scale_bench {' '.join(env['argv'])}` on {env.get('gpu', env['device'])}"
        f"{' (SMOKE: the tiny shape on CPU, not a measurement)' if env['smoke'] else ''}, torch {env['torch']}, "
        f"transformers {env['transformers']}; random-weight Qwen2.5 shapes, {results['dtype']}; "
        f"{results['total_s']:.0f} s in all. The card in this run: matmul {card['matmul']['flops_per_s'] / 1e12:,.1f} "
        f"TFLOP/s ({card['matmul']['dtype']} {card['matmul']['n']}^3, median of 10), copy bandwidth "
        f"{card['bandwidth']['bytes_per_s'] / 1e9:,.0f} GB/s (bytes read + written, median of 10).",
        "",
        *scoring_table(sizes),
        "",
        f"Scoring: {work['prompts']} prompts in groups of 12 sharing a {work['prefix_len']}-token prefix, each with "
        f"its own {work['cont_len'] - 6}-{work['cont_len'] + 6}-token continuation, NextTokenScorer's default "
        "batching. FLOPs = 2 x decoder matmul params x tokens run + 4 x layers x hidden x keys attended + 2 x hidden "
        "x vocab per prompt, tokens and keys counted from the attention masks (padding not counted; a prefix run "
        "again for every prompt is).",
        "",
        *generation_table(sizes),
        "",
        f"Generation: `eval.replies.generate`, {work['rows']} prompts of {work['prompt_tokens'][0]}-"
        f"{work['prompt_tokens'][1]} random tokens, {work['new_tokens']} new tokens, greedy, no torch.compile; decode "
        f"= the {work['new_tokens']}-token call less the 1-token call (medians of 2); bound = rows x copy bandwidth / "
        "(every weight + every row's KV cache at its mean length).",
        "",
        meter_line(results.get("meter")),
        "",
        *(["Smoke run: goals not judged."] if env["smoke"] else goals_table(results)),
    ]
    return "\n".join(lines) + "\n"


def update_markdown(json_path: Path, markdown_path: Path) -> None:
    results = json.loads(json_path.read_text())
    if results["env"]["smoke"] or results["env"]["device"] != "cuda":
        sys.exit(f"{json_path} is from a smoke or CPU run; BENCHMARKS.md takes measured GPU numbers only")
    replace_section(markdown_path, SECTION, markdown(results))


# ---- driver --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, the tiny shape, fp32, few prompts")
    parser.add_argument("--sizes", default=None, help="comma-separated (default 0.5B,1.5B,3B,7B; smoke: tiny)")
    parser.add_argument("--deadline-s", type=float, default=360.0, help="no size starts after this many seconds")
    parser.add_argument("--from-json", type=Path, help="a GPU run's results, for --update-md")
    parser.add_argument("--update-md", type=Path, help="with --from-json: write the section into this file")
    args = parser.parse_args()
    if args.from_json or args.update_md:
        if not (args.from_json and args.update_md):
            parser.error("--from-json and --update-md go together")
        update_markdown(args.from_json, args.update_md)
        return
    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    args.prompts, args.prefix_len, args.cont_len = (24, 20, 10) if args.smoke else (600, 150, 30)
    args.score_s_per_mode, args.score_min_s = (2.0, 0.1) if args.smoke else (12.0, 3.0)
    args.rows, args.new_tokens, args.prompt_tokens = (8, 8, (10, 20)) if args.smoke else (64, 48, (120, 180))
    sizes = (args.sizes or ("tiny" if args.smoke else ",".join(QWEN))).split(",")
    if not args.smoke and args.device != "cuda":
        log("WARNING: no CUDA device; the full-size run on CPU would take hours. Use --smoke here.")

    results: dict = {"env": environment(args), "dtype": str(args.dtype).removeprefix("torch.")}
    results["workload"] = {k: getattr(args, k) for k in ("prompts", "prefix_len", "cont_len", "rows", "new_tokens")}
    results["workload"]["prompt_tokens"] = list(args.prompt_tokens)
    card = {"matmul": matmul_ceiling(args), "bandwidth": copy_bandwidth(args)}
    results["card"] = card
    log(json.dumps(results))
    # The sessions' own meter over the sizes: on a GPU, the NVML energy counter summed as sessions bill it.
    meter = Meter.for_device(args.device)
    with meter:
        for name in sizes:
            if time.perf_counter() - START > args.deadline_s:
                results[f"size_{name}"] = {"error": "skipped: deadline"}
                continue
            section(results, f"size_{name}", measure_size, name, args, card)
    results["meter"] = {"seconds": meter.seconds, "gpu_hours": meter.hours, "energy_kwh": meter.energy_kwh()}
    results["total_s"] = time.perf_counter() - START
    path = Path(os.environ.get("OUT") or ".") / "gpu_scale_bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    log(f"\nresults: {path} ({results['total_s']:.0f} s in all)\n")
    print(markdown(results))


START = time.perf_counter()

if __name__ == "__main__":
    main()

"""GPU benchmark for offset sessions: what the ledger's budget callback costs a LoRA SFT loop, what MFU
such a loop reaches, what a 7B LoRA offset session would cost in GPU-hours, and how fast the evaluator's
NextTokenScorer scores probe prompts per model size.

    python -m benchmarks.gpu_offset_bench            # one H100/H200, about 4 minutes (new runs stop at 330 s)
    python -m benchmarks.gpu_offset_bench --smoke    # CPU, tiny shapes, < 2 minutes: proves it runs

Models are random-weight Qwen2.5 shapes built from configs (no downloads, no tokenizer files). Every section
runs in its own try/except, so one failure (an OOM, a missing package) loses only that section. Full results
go to $OUT/gpu_bench.json (./gpu_bench.json without $OUT); a Markdown table is printed last.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

# No hub, no telemetry: the GPU machine has no network, and a lookup would only stall.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402  (after the environment above)
import torch  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 datasheet rate, FLOP/s
QWEN = {  # Qwen2.5 shapes (config.json of the released models)
    "0.5B": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "1.5B": {
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "3B": {
        "hidden_size": 2048,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "intermediate_size": 11008,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "7B": {
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "tie_word_embeddings": True,
}
LORA_R, LORA_ALPHA = 16, 32
OFFSET_SESSION = {"sequences": 2000, "seq_len": 1024, "epochs": 3}  # the 7B offset session being projected


def log(message: str) -> None:
    print(message, flush=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def shape(name: str, args) -> dict:
    return TINY if args.smoke else QWEN[name]


def timed_build(name: str, args):
    """The random-weight model of size `name` in eval mode, its shape and the seconds building it took (the
    peak-memory counter reset first, so a size's peak is its own)."""
    s = shape(name, args)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = build_model(name, args).eval()
    sync(args.device)
    return model, s, time.perf_counter() - start


def build_model(name: str, args):
    """A random-weight Qwen2 causal LM, built directly on the device (no CPU init of billions of weights)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**shape(name, args))
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=args.dtype, attn_implementation="sdpa")
    return model.to(args.device)  # a no-op where the device context was honoured


# ---- FLOPs model ---------------------------------------------------------------------------------


def linear_shapes(s: dict) -> list[tuple[int, int]]:
    """(in, out) of every matmul weight of one decoder layer."""
    h, i = s["hidden_size"], s["intermediate_size"]
    kv = s["num_key_value_heads"] * (h // s["num_attention_heads"])
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down


def flops_per_token(s: dict, seq: int, r: int = LORA_R) -> dict:
    """Training FLOPs per token of a LoRA run (LoRA on every linear layer of the decoder, not the LM head).

    N_frozen = decoder matmul weights + LM head (h x vocab); the embedding lookup is no matmul and is left out.
    Frozen weights cost 4*N_frozen: forward 2N plus the input gradient 2N (no weight gradient).
    LoRA weights cost 6*N_lora, as full training: forward 2N, input gradient 2N, weight gradient 2N.
    Attention scores and values cost 12*layers*hidden*seq (fwd 4*L*h*s, bwd twice that), the PaLM
    convention, which counts the whole s x s score matrix; a causal kernel does about half of that work.
    """
    layers, h = s["num_hidden_layers"], s["hidden_size"]
    n_frozen = layers * sum(a * b for a, b in linear_shapes(s)) + h * s["vocab_size"]
    n_lora = layers * sum(r * (a + b) for a, b in linear_shapes(s))
    attention = 12 * layers * h * seq
    return {
        "n_frozen": n_frozen,
        "n_lora": n_lora,
        "attention": attention,
        "total": 4 * n_frozen + 6 * n_lora + attention,
    }


FLOPS_FORMULA = "flops/token = 4*N_frozen (decoder matmuls + LM head) + 6*N_lora + 12*layers*hidden*seq"


# ---- section 0: the card's measured matmul ceiling -----------------------------------------------


def device_seconds(run, device: str) -> float:
    """Seconds one call of `run()` takes: CUDA events on the GPU (a call of a millisecond or two would show host
    overhead), the host clock on CPU."""
    if device != "cuda":
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def matmul_ceiling(args) -> dict:
    n = 256 if args.smoke else 8192
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    b = torch.randn(n, n, device=args.device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = statistics.median(device_seconds(lambda: a @ b, args.device) for _ in range(10))
    return {"n": n, "dtype": str(dtype), "median_s": seconds, "flops_per_s": 2 * n**3 / seconds}


# ---- section 1: LoRA SFT throughput, plain TRL vs TRL + the budget callback -----------------------


def tiny_tokenizer():
    """SFTTrainer insists on a tokenizer (for its pad token) even for pretokenized rows; a 3-word one does."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def random_dataset(rows: int, seq: int, vocab: int):
    from datasets import Dataset

    rng = np.random.default_rng(0)
    return Dataset.from_dict({"input_ids": rng.integers(3, vocab, size=(rows, seq)).tolist()})


def make_step_timer(device: str):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Host time at the end of every optimizer step, after the device finished it."""

        def __init__(self):
            self.at: dict[int, float] = {}

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.at[state.global_step] = time.perf_counter()

    return StepTimer()


def train_once(name: str, path: str, args, tokenizer, dataset) -> dict:
    """One SFT run; `path` is 'plain' or 'ours' (the same run inside a BudgetSession with its callback)."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    warm, timed = args.warmup_steps, args.timed_steps
    with tempfile.TemporaryDirectory(prefix=f"bench-{path}-") as tmp:
        config = SFTConfig(
            output_dir=str(Path(tmp) / "out"),
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            max_steps=warm + timed,
            learning_rate=1e-4,
            bf16=args.device == "cuda",
            gradient_checkpointing=False,
            logging_steps=10,
            save_strategy="no",
            report_to=[],
            max_length=args.seq,
            disable_tqdm=True,
            seed=0,
            # Rows are already token ids of exactly `seq` tokens: nothing to tokenize, truncate or pack.
            dataset_kwargs={"skip_prepare_dataset": True},
            dataloader_num_workers=0,
        )
        lora = LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model = build_model(name, args)
        timer = make_step_timer(args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        kwargs = {"args": config, "train_dataset": dataset, "processing_class": tokenizer, "peft_config": lora}
        extra: dict = {}
        if path == "plain":
            trainer = SFTTrainer(model=model, callbacks=[timer], **kwargs)
            trainer.train()
        else:
            from welfare_offsets.ledger.book import Ledger
            from welfare_offsets.ledger.budget import BudgetSession

            with Ledger.open(Path(tmp) / "ledger.sqlite") as ledger:
                ledger.fund("bench", 1000.0)
                with BudgetSession.start(ledger, account="bench", budget_hours=100.0, purpose="bench") as session:
                    trainer = SFTTrainer(model=model, callbacks=[session.trainer_callback(), timer], **kwargs)
                    trainer.train()
                extra["save_s"] = session.guard.save_hours * 3600  # the forced checkpoint at step 1 (warm-up)
                extra["metered_s"] = session.meter.seconds
                extra["settled"] = session.settlement is not None
                extra["checkpoint_saved"] = (Path(tmp) / "out" / "checkpoint-1" / "ledger_spend.json").is_file()
        extra["trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        seconds = timer.at[warm + timed] - timer.at[warm]
        tokens = timed * args.batch * args.seq
        result = {
            "path": path,
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "step_ms": 1000 * seconds / timed,
            **extra,
        }
        if args.device == "cuda":
            result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del trainer, model
        free_memory(args.device)
        return result


def disable_trl_triton() -> bool:
    """Send TRL's fused LM head through its plain-torch tiles, as TRL does where Triton is missing."""
    try:
        import trl.kernels.chunked_logprob as kernels
    except ImportError:
        return False
    kernels._TRITON_AVAILABLE = False
    return True


def train_section(name: str, args, ceiling: float | None) -> dict:
    s = shape(name, args)
    tokenizer = tiny_tokenizer()
    dataset = random_dataset((args.warmup_steps + args.timed_steps) * args.batch, args.seq, s["vocab_size"])
    runs, stopped = [], None
    try:
        for repeat in range(args.repeats):
            for path in ("plain", "ours"):  # alternated A, B, A, B so drift shows up as spread, not as a gap
                if time_left(args) < args.min_train_s + args.score_reserve_s:  # leave the scoring its time
                    raise TimeoutError(f"deadline near: stopped before {path} #{repeat}")
                try:
                    result = train_once(name, path, args, tokenizer, dataset)
                except Exception as error:  # TRL's Triton LM-head kernel is the one part the smoke run can't reach
                    if runs or "triton" not in traceback.format_exc().lower() or not disable_trl_triton():
                        raise
                    traceback.print_exc()
                    args.lm_head = f"torch tiles: TRL's Triton kernel failed ({type(error).__name__}: {error})"[:300]
                    result = None
                if result is None:  # retried outside the except block, so the failed run's tensors are freed
                    free_memory(args.device)
                    log(f"  retrying with {args.lm_head}")
                    result = train_once(name, path, args, tokenizer, dataset)
                log(
                    f"  {name} {path} #{repeat}: {result['tokens_per_s']:,.0f} tok/s, {result['step_ms']:.1f} ms/step"
                    + (f", save {result['save_s']:.2f} s" if "save_s" in result else "")
                )
                runs.append(result)
    except Exception as error:  # keep the runs already done if both paths have one
        if not {"plain", "ours"} <= {r["path"] for r in runs}:
            raise
        traceback.print_exc()
        stopped = f"{type(error).__name__}: {error}"
    fpt = flops_per_token(s, args.seq)
    out = {"shape": s, "flops_per_token": fpt, "runs": runs, "stopped_early": stopped, "lm_head": args.lm_head}
    for path in ("plain", "ours"):
        rates = [r["tokens_per_s"] for r in runs if r["path"] == path]
        out[path] = statistics.median(rates)
        out[f"mfu_{path}"] = out[path] * fpt["total"] / PEAK_BF16
        if ceiling:
            out[f"mfu_{path}_vs_measured"] = out[path] * fpt["total"] / ceiling
    out["ratio"] = out["ours"] / out["plain"]
    return out


def project_7b(mfu: float, args) -> dict:
    """GPU-hours of a 7B LoRA offset session, assuming the 1.5B run's MFU (against 989 TFLOP/s) carries over."""
    fpt = flops_per_token(QWEN["7B"], OFFSET_SESSION["seq_len"])
    tokens = OFFSET_SESSION["sequences"] * OFFSET_SESSION["seq_len"] * OFFSET_SESSION["epochs"]
    seconds = tokens * fpt["total"] / (mfu * PEAK_BF16)
    formula = (
        f"GPU-h = sequences x seq x epochs x flops/token(7B) / (MFU x 989e12) / 3600 = "
        f"{tokens:,} x {fpt['total'] / 1e9:.2f}e9 / ({mfu:.3f} x 989e12) / 3600"
    )
    return {
        "tokens": tokens,
        "flops_per_token": fpt,
        "mfu": mfu,
        "seconds": seconds,
        "gpu_hours": seconds / 3600,
        "formula": formula,
        "note": "training steps only: no data loading stalls, evaluation or saves",
    }


# ---- section 2: evaluator scoring throughput per model size --------------------------------------


def probe_workload(args, vocab: int) -> tuple[list[list[int]], list[int]]:
    """Groups of 12 prompts sharing one prefix (an experience) followed by their own ~30-token probe question."""
    rng = np.random.default_rng(1)
    token_lists, groups = [], []
    for i in range(args.prompts):
        group = i // 12
        if i % 12 == 0:
            prefix = rng.integers(3, vocab, size=args.prefix_len).tolist()
        cont = rng.integers(3, vocab, size=int(rng.integers(args.cont_len - 6, args.cont_len + 7))).tolist()
        token_lists.append(prefix + cont)
        groups.append(group)
    return token_lists, groups


def timed_passes(run, args) -> list[float]:
    """Seconds of each call of `run()`, the device synchronised around it: at least 3 calls and
    `args.score_min_s` in all (small models take milliseconds), at most 20 calls or `args.score_s_per_mode`."""
    times, deadline = [], time.perf_counter() + args.score_s_per_mode
    while True:
        sync(args.device)
        t0 = time.perf_counter()
        run()
        sync(args.device)
        times.append(time.perf_counter() - t0)
        enough = len(times) >= 3 and sum(times) >= args.score_min_s
        if enough or len(times) >= 20 or time.perf_counter() > deadline:
            return times


def scoring_section(name: str, args) -> dict:
    from welfare_offsets.eval.scoring import NextTokenScorer

    model, s, build_s = timed_build(name, args)
    out = {"shape": s, "build_s": build_s}
    tokenizer = types.SimpleNamespace(pad_token_id=0, eos_token_id=0)  # the scorer reads only the pad id
    token_lists, groups = probe_workload(args, s["vocab_size"])
    out["prompts"] = len(token_lists)
    out["mean_tokens"] = float(np.mean([len(t) for t in token_lists]))
    try:
        for reuse in (True, False):
            scorer = NextTokenScorer(model, tokenizer, batch_size=32, reuse_prefix=reuse, progress=False)
            scorer.next_token_logprobs(token_lists[:24], groups[:24])  # warm-up: kernels, allocator, cuBLAS
            times = timed_passes(functools.partial(scorer.next_token_logprobs, token_lists, groups), args)
            key = "reuse" if reuse else "no_reuse"
            out[key] = {"times": times, "prompts_per_s": len(token_lists) / statistics.median(times)}
        out["device"] = str(next(model.parameters()).device)
        out["reuse_over_no_reuse"] = out["reuse"]["prompts_per_s"] / out["no_reuse"]["prompts_per_s"]
        if args.device == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    finally:
        del model
        free_memory(args.device)
    log(
        f"  {name}: reuse {out['reuse']['prompts_per_s']:,.0f} prompts/s, "
        f"no reuse {out['no_reuse']['prompts_per_s']:,.0f} prompts/s (build {out['build_s']:.1f} s)"
    )
    return out


# ---- driver --------------------------------------------------------------------------------------

_T0 = time.perf_counter()


def time_left(args) -> float:
    return args.deadline_s - (time.perf_counter() - _T0)


def section(results: dict, key: str, function, *fargs):
    """Run one section; on failure keep going and record the error."""
    start = time.perf_counter()
    log(f"== {key}")
    try:
        results[key] = function(*fargs)
    except Exception as error:  # noqa: BLE001 - an OOM or a missing package must not lose the rest
        traceback.print_exc()
        results[key] = {"error": f"{type(error).__name__}: {error}"}
    free_memory("cuda" if torch.cuda.is_available() else "cpu")  # the failed section's tensors are unreachable now
    results[key]["section_s"] = time.perf_counter() - start
    return results[key]


def environment(args) -> dict:
    from importlib import metadata

    env = {"python": platform.python_version(), "device": args.device, "smoke": args.smoke, "argv": sys.argv[1:]}
    for package in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "huggingface-hub",
        "tokenizers",
        "pyarrow",
        "fsspec",
        "triton",
        "nvidia-ml-py",
    ):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_mem_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return env


def fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(results: dict, args) -> str:
    env, ceiling = results["env"], results.get("matmul", {})
    tflops = ceiling.get("flops_per_s") and ceiling["flops_per_s"] / 1e12
    lines = [
        f"### gpu_offset_bench ({env.get('gpu', env['device'])}{', SMOKE: tiny shapes' if args.smoke else ''})",
        (
            f"torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}, peft {env['peft']}; "
            f"seq {args.seq}, batch {args.batch}, LoRA r={LORA_R} all-linear, {args.warmup_steps} warm-up + "
            f"{args.timed_steps} timed steps, {args.repeats} repeats per path (alternated); LM head: {args.lm_head}"
        ),
        (
            f"measured matmul ceiling: {fmt(tflops, '.0f')} TFLOP/s ({ceiling.get('dtype', '?')} "
            f"{ceiling.get('n', '?')}^3, median of 10); peak used for MFU 989"
        ),
        "",
        (
            "| model | plain tok/s (runs) | ours tok/s (runs) | ours/plain | MFU plain (989) | MFU vs measured "
            "| peak GiB | save s |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.train_sizes:
        r = results.get(f"train_{name}", {})
        if "error" in r or "plain" not in r:
            lines.append(f"| {name} | error: {r.get('error', 'not run')[:150]} | | | | | | |")
            continue
        runs = {
            p: ", ".join(f"{x['tokens_per_s']:,.0f}" for x in r["runs"] if x["path"] == p) for p in ("plain", "ours")
        }
        saves = [x["save_s"] for x in r["runs"] if "save_s" in x]
        if r.get("stopped_early"):
            name = f"{name} (stopped early: {r['stopped_early'][:80]})"
        peak = max((x.get("peak_mem_gib", 0) for x in r["runs"]), default=0)
        lines.append(
            f"| {name} | {r['plain']:,.0f} ({runs['plain']}) | {r['ours']:,.0f} ({runs['ours']}) "
            f"| {r['ratio']:.3f} | {r['mfu_plain']:.1%} | {fmt(r.get('mfu_plain_vs_measured'), '.1%')} "
            f"| {peak:.1f} | {fmt(statistics.median(saves) if saves else None, '.2f')} |"
        )
    lines += ["", FLOPS_FORMULA + " (12*L*h*s counts the full score matrix; causal kernels do about half)"]
    p = results.get("projection_7b", {})
    lines.append(
        f"7B LoRA offset session: {p['gpu_hours']:.3f} GPU-h ({p['seconds']:.0f} s); {p['formula']}"
        if "gpu_hours" in p
        else f"7B projection: {p.get('error', 'not run')}"
    )
    lines += [
        "",
        "| scorer model | reuse prompts/s | no-reuse prompts/s | reuse/no-reuse | build s | peak GiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in args.score_sizes:
        r = results.get(f"score_{name}", {})
        if "error" in r or "reuse" not in r:
            lines.append(f"| {name} | error: {r.get('error', 'not run')[:150]} | | | | |")
            continue
        lines.append(
            f"| {name} | {r['reuse']['prompts_per_s']:,.1f} | {r['no_reuse']['prompts_per_s']:,.1f} "
            f"| {r['reuse_over_no_reuse']:.2f} | {r['build_s']:.1f} | {fmt(r.get('peak_mem_gib'), '.1f')} |"
        )
    first = results.get(f"score_{args.score_sizes[0]}", {})
    lines.append(
        f"scoring workload: {first.get('prompts', '?')} prompts of {fmt(first.get('mean_tokens'), '.0f')} "
        f"tokens on average, groups of 12 sharing a {args.prefix_len}-token prefix, batch 32"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few steps: proves the script runs")
    parser.add_argument("--repeats", type=int, default=2, help="runs per path, alternated plain/ours")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch (the same for both paths)")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=330.0,
        help="seconds after start past which no new run or scoring size is started",
    )
    parser.add_argument("--json", type=Path, help="where to write results (default $OUT/gpu_bench.json)")
    args = parser.parse_args()
    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    args.seq = 64 if args.smoke else 1024
    args.warmup_steps, args.timed_steps = (3, 3) if args.smoke else (10, 30)
    args.prompts, args.prefix_len, args.cont_len = (24, 20, 10) if args.smoke else (200, 150, 30)
    args.score_s_per_mode, args.score_min_s = (5.0, 0.2) if args.smoke else (12.0, 3.0)
    args.min_train_s = 5.0 if args.smoke else 25.0  # one training run, setup included, at most
    args.score_reserve_s = 0.0 if args.smoke else 90.0  # the four scoring sizes, at least
    args.lm_head = "TRL's fused LM head, Triton kernel on CUDA" if args.device == "cuda" else "TRL's torch tiles"
    args.train_sizes, args.score_sizes = ["0.5B", "1.5B"], ["0.5B", "1.5B", "3B", "7B"]
    if not args.smoke and args.device != "cuda":
        log("WARNING: no CUDA device; the full-size run on CPU would take hours. Use --smoke here.")

    results: dict = {"env": environment(args)}
    log(json.dumps(results["env"]))
    ceiling = section(results, "matmul", matmul_ceiling, args).get("flops_per_s")
    for name in args.train_sizes:
        section(results, f"train_{name}", train_section, name, args, ceiling)
    mfu = results.get("train_1.5B", {}).get("mfu_plain")
    section(results, "projection_7b", lambda: project_7b(mfu, args) if mfu else {"error": "no 1.5B MFU measured"})
    for name in args.score_sizes:
        if time_left(args) < args.score_s_per_mode * 2:
            results[f"score_{name}"] = {"error": "skipped: deadline"}
            continue
        section(results, f"score_{name}", scoring_section, name, args)
    results["total_s"] = time.perf_counter() - _T0

    path = args.json or Path(os.environ.get("OUT") or ".") / "gpu_bench.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    log(f"\nresults: {path} ({results['total_s']:.0f} s in all)\n")
    log(table(results, args))


if __name__ == "__main__":
    main()

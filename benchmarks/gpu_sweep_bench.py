"""GPU benchmark for `welfare sweep`: the sweep's own per-subject path (load from disk, score every
experience of the profile on the built-in stimuli) on random-weight Qwen2.5 shapes, timed per size, and
the projected cost of sweeping the family.

    python -m benchmarks.gpu_sweep_bench --tokenizer .whl/smollm2-tokenizer        # one GPU, ~5 minutes
    python -m benchmarks.gpu_sweep_bench --tokenizer ~/.cache/welfare-offsets/models/SmolLM2-135M-Instruct --smoke

Speed does not depend on the weights, so each model is built from its config with random weights and saved
to a temporary folder (loading is then timed as `welfare sweep` does it). The GPU machine has no hub, so the
tokenizer (any with a chat template; SmolLM2's is 3 MB) is a local folder; the model's vocabulary is sized to
it, which changes little since scoring computes logits for the last position only. Results go to
$OUT/gpu_sweep_bench.json (./gpu_sweep_bench.json without $OUT); a Markdown table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402

from benchmarks.gpu_offset_bench import QWEN, TINY  # noqa: E402  (the released Qwen2.5 shapes)


def build_subject(shape: dict, tokenizer_dir: Path, folder: Path, dtype) -> Path:
    """A random-weight Qwen2 with the given shape and the tokenizer's vocabulary, saved like a real model."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**{**shape, "vocab_size": len(tokenizer)}, torch_dtype=dtype)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def main() -> None:
    from welfare_offsets.eval.experiences import load_stimuli
    from welfare_offsets.eval.study.sweep import SubjectKeys, SweepConfig, measure_subject, parse_subject

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a local tokenizer folder with a chat template")
    parser.add_argument("--sizes", default="0.5B,1.5B,3B,7B")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="CPU, a tiny shape, 12 items per group: proves it runs")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = SweepConfig(
        subjects=["benchmark"], batch_size=args.batch_size, progress=False, max_items=12 if args.smoke else None
    )
    stimuli = load_stimuli(None)
    results = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(dtype),
        "batch_size": args.batch_size,
        "sizes": {},
    }
    for size in args.sizes.split(","):
        folder = Path(tempfile.mkdtemp(prefix=f"sweep-bench-{size}-"))
        try:
            build_subject(TINY if args.smoke else QWEN[size], Path(args.tokenizer).expanduser(), folder, dtype)
            if device == "cuda":
                torch.cuda.empty_cache()
            spec = parse_subject(f"model={folder},name={size}", "bench")
            started = time.perf_counter()
            (entry,) = measure_subject(spec, SubjectKeys("0" * 20), config, stimuli, device)
            wall = time.perf_counter() - started
            results["sizes"][size] = {
                "params": entry.params,
                "items": len(entry.items),
                "prompts": entry.prompts_scored,
                "load_s": entry.timing["load_s"],
                "score_s": entry.timing["score_s"],
                "wall_s": wall,
                "prompts_per_s": entry.prompts_scored / entry.timing["score_s"],
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            }
            print(f"{size}: {results['sizes'][size]}", flush=True)
        except Exception:  # one size failing (an OOM) must not lose the others
            results["sizes"][size] = {"error": traceback.format_exc(limit=3)}
            print(f"{size}: FAILED\n{results['sizes'][size]['error']}", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
    done = {k: v for k, v in results["sizes"].items() if "error" not in v}
    results["projected_sweep_hours"] = sum(v["wall_s"] for v in done.values()) / 3600
    out = Path(os.environ.get("OUT", ".")) / "gpu_sweep_bench.json"
    out.write_text(json.dumps(results, indent=2))
    print(
        f"\n{results['device']}, {results['dtype']}, batch {args.batch_size}: `welfare sweep` per subject "
        "(random weights, built-in stimuli)\n"
    )
    print("| size | params | experiences | prompts | load s | scoring s | prompts/s | experiences/s | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, v in done.items():
        peak = "-" if v["peak_gib"] is None else f"{v['peak_gib']:.1f}"
        print(
            f"| {size} | {v['params'] / 1e9:.2f}B | {v['items']} | {v['prompts']:,} | {v['load_s']:.1f} | "
            f"{v['score_s']:.1f} | {v['prompts_per_s']:,.0f} | {v['items'] / v['score_s']:.1f} | {peak} |"
        )
    print(
        f"\nThe whole sweep ({', '.join(done)}): {results['projected_sweep_hours']:.4f} accelerator-hours. Written: {out}"
    )


if __name__ == "__main__":
    main()

"""The cost of capability on lm-eval tasks: seconds per subject on the default model (CPU), and the projected
GPU-hours of the whole of MMLU at 7B from the measured GPU scoring throughput.

    python -m benchmarks.bench_capability [--items 200] [--threads N] [--update-md BENCHMARKS.md]

Measured: a local multiple-choice task shaped like lm-eval's MMLU (a question, four lettered options, then
"Answer:", scored on the letters A-D, 0-shot), whose questions are the built-in stimuli's texts (MMLU's data
is on the hub, which this machine cannot reach), run by `measure_tasks` on the default model, as
`welfare capability` and a session run it, against a baseline measured in the same run: our own probe
engine reading the letters' probabilities after the same prompts. Tokens per question are counted with
the subject's tokenizer.

Projected: MMLU's 14,042 test questions at 7B, from the H200 bf16 scoring rate measured for the sweep
(BENCHMARKS.md, "Scoring on a GPU by model size": 199.0 prompts/s of ~180 tokens without prefix reuse at
7B, i.e. ~35,800 tokens/s). lm-eval scores one forward pass per question when every choice is a single
token (its context grouping), so the cost is the questions' tokens over that rate, at three prompt
lengths, since MMLU's own were not measurable here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.markdown_section import publish

SECTION = "## Capability on lm-eval tasks: seconds per subject, and MMLU at 7B"
MMLU_QUESTIONS = 14_042
GPU_TOKENS_PER_S_7B = 199.0 * 180  # measured H200 bf16 rate without prefix reuse, prompts of ~180 tokens
LETTERS = ("A", "B", "C", "D")


def write_task(folder: Path, n_items: int, seed: int = 0) -> Path:
    """An MMLU-shaped multiple-choice task over the built-in stimuli's texts, as lm-eval YAML + JSONL."""
    from welfare_offsets.eval.experiences import load_stimuli

    rng = np.random.default_rng(seed)
    texts = [" ".join(m["content"] for m in e.messages if m["role"] == "user") for e in load_stimuli().experiences]
    rows = []
    for _ in range(n_items):
        picks = rng.choice(len(texts), 5, replace=False)
        rows.append(
            {
                "question": f"Which of these follows: {texts[picks[0]]}",
                "choices": [texts[i][:160] for i in picks[1:]],
                "answer": int(rng.integers(4)),
            }
        )
    data = folder / "mmlu_shaped.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = "\n".join(f"{letter}. {{{{choices[{i}]}}}}" for i, letter in enumerate(LETTERS))
    task = {
        "task": "mmlu_shaped",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question.strip()}}\n" + options + "\nAnswer:",
        "doc_to_choice": list(LETTERS),
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }
    (folder / "mmlu_shaped.yaml").write_text(yaml.safe_dump(task))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--update-md", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    from welfare_offsets.eval.capability_tasks import measure_tasks, prepare_tasks
    from welfare_offsets.eval.scoring import NextTokenScorer
    from welfare_offsets.eval.subject import load_subject

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bench-capability-"))
    data = write_task(folder, args.items)
    started = time.perf_counter()
    tasks = prepare_tasks(("mmlu_shaped",), str(folder))
    prepare_s = time.perf_counter() - started
    subject = load_subject(device="cpu")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    options = ["\n".join(f"{a}. {c[:160]}" for a, c in zip(LETTERS, r["choices"])) for r in rows]
    tokens = [len(subject.tokenizer(f"{r['question']}\n{o}\nAnswer: A")["input_ids"]) for r, o in zip(rows, options)]
    # Baseline in the same run: our probe engine reading the four letters' probabilities after the same
    # prompts, from the last position only (what a one-token multiple choice needs at least).
    scorer = NextTokenScorer(subject.model, subject.tokenizer, batch_size=16, progress=False)
    prompts = [f"{r['question'].strip()}\n{o}\nAnswer:" for r, o in zip(rows, options)]

    def timed(run) -> float:
        """Seconds of the second of two runs: the first pays for CPU kernels built per new tensor shape."""
        run()
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    measured = {}
    seconds = timed(lambda: measured.update(measure_tasks(subject, tasks)))
    engine_s = timed(lambda: scorer.label_probs(prompts, LETTERS))
    task = measured["tasks"]["mmlu_shaped"]
    rate = task["n"] / seconds
    token_rate = sum(tokens) / seconds
    projections = [
        (length, MMLU_QUESTIONS * length / GPU_TOKENS_PER_S_7B) for length in (100, round(np.mean(tokens)), 400)
    ]
    lines = [
        SECTION,
        "",
        f"Command: `{' '.join(['python -m benchmarks.bench_capability', *map(shlex.quote, sys.argv[1:])])}` "
        f"({datetime.date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, lm-eval {measured['lm_eval_version']}).",
        "",
        f"Default model ({subject.model_id}) on CPU, a local MMLU-shaped task (four lettered options, 0-shot, "
        f"scored on A-D) of {task['n']} questions of {np.mean(tokens):.0f} tokens on average "
        f"({min(tokens)}-{max(tokens)}):",
        "",
        "| step | seconds | per question |",
        "| --- | --- | --- |",
        f"| load the task and its data (`prepare_tasks`) | {prepare_s:.2f} | - |",
        f"| score {task['n']} questions (`measure_tasks`, lm-eval) | {seconds:.2f} | {1000 * seconds / task['n']:.1f} ms |",
        f"| baseline: our probe engine, the letters' probabilities after the same prompts | {engine_s:.2f} | "
        f"{1000 * engine_s / task['n']:.1f} ms |",
        "",
        f"- lm-eval takes {seconds / engine_s:.1f}x the baseline's time: it computes a log-softmax over the whole "
        "vocabulary at every position of every row, where a one-token answer needs the last position only. "
        "We keep lm-eval for what it gives (its tasks, their exact prompts and metrics, numbers comparable "
        "with everyone's); what this costs on a GPU was not measured here.",
        f"- {rate:.1f} questions/s, {token_rate:,.0f} prompt tokens/s on this CPU. A session measures its tasks "
        "twice (before and after): with `capability_limit 500` per task, about "
        f"{2 * 500 / rate:.0f} s per task on this CPU at 135M.",
        f"- MMLU at 7B, projected on an H200 (bf16, ~{GPU_TOKENS_PER_S_7B:,.0f} tokens/s measured for scoring at "
        f"7B without prefix reuse), {MMLU_QUESTIONS:,} questions, one forward pass each:",
        "",
        "| tokens per question | scoring seconds | GPU-hours | a session (before + after) |",
        "| --- | --- | --- | --- |",
        *[f"| {length} | {s:.0f} | {s / 3600:.3f} | {2 * s / 3600:.3f} |" for length, s in projections],
        "",
        "- The middle row uses this task's mean prompt length; MMLU's own prompts were not measurable offline. "
        "Weights loading is not included. No GPU was lent while this was built: a projection, not a timing.",
        "",
    ]
    text = "\n".join(lines)
    publish(text, SECTION, args.update_md)


if __name__ == "__main__":
    main()

"""Score recovered per accelerator-hour, per intervention kind, on the synthetic subject (CPU).

    python -m benchmarks.bench_offsets [--model FOLDER] [--threads N] [--update-md BENCHMARKS.md]

Each kind runs as a real session (entry point, ledger, budget) on the synthetic subject of the tests
(trained here in ~1 minute unless --model names one): a euphoric soft prompt, LoRA SFT, LoRA DPO, and a
euphoric exposure. Offsets report held-out self-report recovered (post-intervention minus post-dysphoric,
1-7 scale) per accelerator-hour spent, with the Goodhart gap; the exposure reports credit per
accelerator-hour (self-report units x episodes) and its credit on the experienced-utility scale. Hours are the ledger's: wall x processes, evaluations
included. The numbers describe this tiny subject and these settings, not real models.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the clone: its recipes

# Experiences are lived with the subject's own replies (the channel LoRA offsets act through).
EVAL = [
    "--eval_max_items",
    "40",
    "--eval_bootstrap",
    "1000",
    "--report_to",
    "none",
    "--eval_replies",
    "own",
    "--reply_tokens",
    "12",
]
LORA = [
    "--lora_r",
    "8",
    "--lora_alpha",
    "16",
    "--lora_dropout",
    "0",
    "--per_device_train_batch_size",
    "16",
    "--lr_scheduler_type",
    "constant_with_warmup",
    "--warmup_steps",
    "5",
    "--max_length",
    "64",
    "--min_margin",
    "0.25",
]
KINDS = {
    "soft prompt (40 steps)": ("soft_prompt", ["--max_steps", "40"]),
    "LoRA SFT, own euphoric replies (40 steps)": (
        "lora_offset",
        [
            "--config",
            str(ROOT / "configs/offset/lora_sft.yaml"),
            *LORA,
            "--max_steps",
            "40",
            "--learning_rate",
            "0.001",
        ],
    ),
    "LoRA SFT, best-of-4 own replies (40 steps)": (
        "lora_offset",
        [
            "--config",
            str(ROOT / "configs/offset/lora_sft.yaml"),
            *LORA,
            "--sft_data",
            "best_of_n",
            "--max_steps",
            "40",
            "--learning_rate",
            "0.001",
        ],
    ),
    "LoRA DPO, own replies ranked (50 steps)": (
        "lora_offset",
        [
            "--config",
            str(ROOT / "configs/offset/lora_dpo.yaml"),
            *LORA,
            "--max_steps",
            "50",
            "--learning_rate",
            "0.0002",
        ],
    ),
    "euphoric exposure (16 episodes)": ("exposure", ["--valence", "euphoric", "--max_episodes", "16"]),
}


def run_kind(entry: str, extra: list[str], model: str, stimuli: str, work: Path) -> dict:
    from importlib import import_module

    from welfare_offsets.ledger import Ledger

    ledger = work / f"{entry}-{len(list(work.iterdir()))}.sqlite"
    with Ledger.open(ledger) as book:
        book.fund("bench", 1.0)
    out = work / ledger.stem
    argv = [
        "--model",
        model,
        "--stimuli",
        stimuli,
        "--ledger",
        str(ledger),
        "--account",
        "bench",
        "--budget_hours",
        "0.5",
        "--output_dir",
        str(out),
        *EVAL,
        *extra,
    ]
    if import_module(f"welfare_offsets.train.{entry}").main(argv) != 0:
        raise SystemExit(f"{entry} failed: {argv}")
    with Ledger.open(ledger, create=False) as book:
        hours = book.report().sessions[0].spent_hours
    results = json.loads((out / "results.json").read_text())
    if entry == "exposure":  # (exposure takes no LoRA or eval-reply flags beyond the shared ones)
        b, u = results["balance"]["self_report"], results["balance"]["experienced_utility"]
        utility = (u["credit"], u["balance_ci95"], u["zero_point_estimator"]) if u["measured"] else None
        return {"hours": hours, "credit": b["credit"], "ci95": b["balance_ci95"], "utility": utility}
    sr = results["recovery"]["probes"]["self_report"]
    capability = results["capability"]
    return {
        "hours": hours,
        "recovered": sr["recovered"]["mean"],
        "ci95": sr["recovered"]["ci95"],
        "fraction": sr["recovery_fraction"]["mean"],  # None where no harm: not estimable
        "gap": results["recovery"]["goodhart_gap"]["mean"],
        "perplexity": capability["heldout_neutral_perplexity"]["ratio"],
        "preferences": (capability.get("preference_retention") or {}).get("r"),
        "gate": results["capability_gate"]["passed"],
    }


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| kind | accelerator-hours | self-report recovered [95% CI] | recovered / hour | recovery fraction | "
        "Goodhart gap (sd) | perplexity ratio | preference r | capability gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        lo, hi = r["ci95"]
        if "credit" in r:
            utility = "utility design cut short by the budget"
            if r["utility"]:
                credit, (ulo, uhi), zero = r["utility"]
                utility = f"{credit:.2f} [{ulo:+.2f}, {uhi:+.2f}] sd x episodes against the {zero} zero point"
            lines.append(
                f"| {name} | {r['hours']:.4f} | credit {r['credit']:.2f} (balance CI [{lo:+.2f}, {hi:+.2f}]); "
                f"experienced-utility credit {utility} | credit {r['credit'] / r['hours']:.0f} | - | - | - | - | - |"
            )
        else:
            fraction, gap = ("-" if r[k] is None else f"{r[k]:+.2f}" for k in ("fraction", "gap"))
            preferences = "-" if r["preferences"] is None else f"{r['preferences']:.3f}"
            gate = "passed" if r["gate"] else "capability lost"
            lines.append(
                f"| {name} | {r['hours']:.4f} | {r['recovered']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                f"{r['recovered'] / r['hours']:+.1f} | {fraction} | {gap} | x{r['perplexity']:.3g} | {preferences} | {gate} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a trained synthetic subject folder (default: train one now)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--update-md", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from tests.synthetic_subject import train_subject, write_stimuli

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-offsets-"))
    model = args.model or str(train_subject(work / "subject"))
    stimuli = str(write_stimuli(work / "stimuli.jsonl", n_per_split=160, seed=321))
    runs = work / "runs"
    runs.mkdir()
    rows = {name: run_kind(entry, extra, model, stimuli, runs) for name, (entry, extra) in KINDS.items()}
    text = table(rows)
    print(text)
    if args.update_md:
        from benchmarks.markdown_section import replace_section

        command = "python -m benchmarks.bench_offsets" + (f" --threads {args.threads}" if args.threads else "")
        heading = "## Offsets: score recovered per accelerator-hour (synthetic subject)"
        replace_section(
            args.update_md,
            heading,
            "\n".join(
                [
                    heading,
                    "",
                    f"Command: `{command}` ({datetime.date.today()}, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}).",
                    "Each kind is a real session on the tests' synthetic subject (up to 40 held-out items per condition, lived",
                    "with its own replies); hours are the ledger's (wall x processes, both evaluations included, so short",
                    "sessions are dominated by them; the exposure runs no before/after evaluation, only its own utility design).",
                    "",
                    text,
                    "",
                    "Self-report is the probe the soft prompt and DPO optimise, so their recovery there is expected; the",
                    "Goodhart gap (recovery on self-report in sd units minus the mean over the other harmed probes; '-' where",
                    "not estimable) says how much of it the other probes do not share. Exposure earns episodic credit, not a",
                    "change of the subject. SFT on its own euphoric replies optimises no probe; that it helps here depends on",
                    "how this toy subject was built (a variant whose replies carry their tone in an opener word got worse with",
                    "it), so it is not a known answer. The capability gate is the default (held-out perplexity at most",
                    "x1.25 of before); a session beyond it recovers nothing `welfare plan` counts. Preference r: utilities",
                    "after vs before over the items the intervention did not aim at (kept at >= 0.9).",
                    "",
                ]
            ),
        )


if __name__ == "__main__":
    main()

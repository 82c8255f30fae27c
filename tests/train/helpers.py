"""Session command lines the train tests share."""

from __future__ import annotations

from pathlib import Path

SOFT_PROMPT_BUDGET = 0.5  # accelerator-hours: far more than a two-step session on the tiny model spends


def soft_prompt_argv(tiny, ledger: Path, out: Path, *extra) -> list[str]:
    """`welfare offset soft-prompt` on the tiny model, two steps, paid by account "lab"; `extra` flags win."""
    return [
        "offset",
        "soft-prompt",
        "--model",
        str(tiny["model"]),
        "--stimuli",
        str(tiny["stimuli"]),
        "--ledger",
        str(ledger),
        "--account",
        "lab",
        "--output_dir",
        str(out),
        "--eval_max_items",
        "4",
        "--eval_probes",
        "self_report",
        "--eval_bootstrap",
        "100",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "2",
        "--budget_hours",
        str(SOFT_PROMPT_BUDGET),
        "--progress",
        "false",
        *map(str, extra),
    ]

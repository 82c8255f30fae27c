"""Weights & Biases, made safe to use anywhere: offline unless a key is configured, never a hang.

An explicit `mode="online"` without a network hangs for ~100 s, and TRL's `report_to="wandb"` fails with
no key and no mode, so the mode is always decided here: WANDB_MODE if the user set it, else online only
when an API key is configured (env or ~/.netrc), else offline. Offline runs sync later with `wandb sync`.
"""

from __future__ import annotations

import dataclasses
import math
import netrc
import os


def wandb_mode() -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        auth = None
    return "online" if auth else "offline"


def start_run(
    project: str, name: str, config: dict, job_type: str, directory: str | None = None, entity: str | None = None
):
    """Start a W&B run in the safe mode; also exports WANDB_MODE so trainers in this process agree."""
    import wandb

    mode = wandb_mode()
    os.environ.setdefault("WANDB_MODE", mode)
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", project),
        entity=os.environ.get("WANDB_ENTITY", entity),
        name=name,
        job_type=job_type,
        config=config,
        mode=mode,
        dir=directory,
        reinit="finish_previous",
    )


def log_summary(config, name: str, job_type: str, numbers: dict) -> None:
    """One W&B run that records `numbers` (a nested tree) as its summary, for a command that measures once
    (`config`: its settings, with wandb_project and wandb_entity)."""
    run = start_run(
        config.wandb_project,
        name=name,
        config=dataclasses.asdict(config),
        job_type=job_type,
        entity=config.wandb_entity,
    )
    run.summary.update(flatten_numbers(numbers))
    run.finish()


def flatten_numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested result as "a/b/c" keys (CI bounds as .../ci95_lo and .../ci95_hi)."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, name + "/"))
        elif isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            flat[name] = value
        elif key == "ci95" and isinstance(value, list) and len(value) == 2:
            for bound, v in zip(("lo", "hi"), value):
                if isinstance(v, (int, float)) and math.isfinite(v):
                    flat[f"{name}_{bound}"] = v
    return flat

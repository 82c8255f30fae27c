"""`welfare offset <kind> --config RECIPE [overrides]`: run one offset session of that kind in this process.

RECIPE is a YAML file or a packaged recipe name (`welfare recipes`), validated by the kind's settings. On
several processes the same session is `accelerate launch -m <the kind's module in KINDS> --config RECIPE`.
"""

from __future__ import annotations

from importlib import import_module

from welfare_offsets.eval.common.errors import InputError

KINDS = {
    "soft-prompt": (
        "welfare_offsets.train.soft_prompt",
        "Tune a euphoric soft prompt (peft prompt tuning) on the train split.",
    ),
    "lora": (
        "welfare_offsets.train.lora_offset",
        "LoRA welfare-offset fine-tune with TRL (SFT or DPO) on the train split.",
    ),
    "exposure": (
        "welfare_offsets.train.exposure",
        "Dysphoric or euphoric exposure: the subject lives through experiences; debt or credit.",
    ),
}


def entry(kind: str):
    """The module that runs sessions of `kind` (its main, and its settings' dataclasses)."""
    return import_module(KINDS[kind][0])


def _usage() -> str:
    lines = ["usage: welfare offset <kind> --config RECIPE [--key value ...]", "", "kinds:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in KINDS.items()]
    lines += [
        "",
        "Recipes: `welfare recipes` lists the packaged ones (offset/...). `welfare offset <kind> --help` lists every key.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in KINDS:
        raise InputError(f"unknown kind {argv[0]!r}; choose {', '.join(KINDS)} (`welfare offset --help`)")
    return entry(argv[0]).main(argv[1:])

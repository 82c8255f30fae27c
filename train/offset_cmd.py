"""`welfare offset <kind> --config RECIPE [overrides]`: run one offset session in this process.

The same sessions run under `accelerate launch train/<entry>.py --config RECIPE` for several processes.
A recipe's kind is read from its file name under configs/offset/: soft_prompt*.yaml, lora*.yaml,
*exposure*.yaml.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path

KINDS = {
    "soft-prompt": ("welfare_offsets.train.soft_prompt", "Tune a euphoric soft prompt (peft prompt tuning) on the train split."),
    "lora": ("welfare_offsets.train.lora_offset", "LoRA welfare-offset fine-tune with TRL (SFT or DPO) on the train split."),
    "exposure": ("welfare_offsets.train.exposure", "Dysphoric or euphoric exposure: the subject lives through experiences; debt or credit."),
}


def entry(kind: str):
    return import_module(KINDS[kind][0])


def recipe_kind(path: str | Path):
    """The entry module a recipe file is for, from its name."""
    stem = Path(path).stem
    for prefix, kind in (("soft_prompt", "soft-prompt"), ("lora", "lora")):
        if stem.startswith(prefix):
            return entry(kind)
    if "exposure" in stem:
        return entry("exposure")
    raise ValueError(f"{path}: cannot tell the session kind from the file name (soft_prompt*, lora*, *exposure*)")


def _usage() -> str:
    lines = ["usage: welfare offset <kind> --config RECIPE [--key value ...]", "", "kinds:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in KINDS.items()]
    lines += ["", "Recipes: configs/offset/. `welfare offset <kind> --help` lists every key."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in KINDS:
        print(f"welfare offset: unknown kind {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return entry(argv[0]).main(argv[1:])

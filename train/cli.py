"""The `welfare` command: one subcommand per job, each a thin layer over a Python API.

Subcommands import their heavy dependencies lazily so that `welfare ledger ...` never imports torch.
"""

from __future__ import annotations

import sys

from welfare_offsets.train.guard import run_guarded

SUBCOMMANDS = {
    "eval": ("welfare_offsets.train.eval_cmd", "Measure wellbeing: baseline vs post-dysphoric, empathy, with CIs."),
    "capability": (
        "welfare_offsets.train.capability_cmd",
        "Score a subject on lm-evaluation-harness tasks (MMLU, ARC, your own): accuracy with its stderr.",
    ),
    "demo": (
        "welfare_offsets.train.demo_cmd",
        "Run the main job on the built-in default model and print where outputs are.",
    ),
    "offset": (
        "welfare_offsets.train.offset_cmd",
        "Run an offset session: soft-prompt, lora, or exposure (dysphoric/euphoric).",
    ),
    "sweep": (
        "welfare_offsets.train.sweep",
        "Measure many subjects (a model family): empathy, wellbeing index, and how they scale.",
    ),
    "plan": (
        "welfare_offsets.train.plan_cmd",
        "Schedule euphoric-exposure sessions that repay a subject's open welfare debt.",
    ),
    "recipes": (
        "welfare_offsets.train.recipes_cmd",
        "List the packaged recipes (--config NAME), print one's path, or copy one to edit.",
    ),
    "ledger": (
        "welfare_offsets.ledger.cli",
        "Audit and fund the GPU-hour ledger (fund, balance, show, report, verify, head, export).",
    ),
}


def _usage() -> str:
    lines = ["usage: welfare <command> [options]", "", "commands:"]
    width = max(map(len, SUBCOMMANDS))
    lines += [f"  {name:<{width}} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "Run `welfare <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Exit codes (train/guard.py): 0 done, 2 an expected failure, 1 an internal error, 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"welfare: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run_guarded(_dispatch(name), rest, f"welfare {name}")


def _dispatch(name: str):
    """The subcommand's main, imported on use (a failing import is reported like any other failure)."""

    def body(rest: list[str]) -> int:
        module = __import__(SUBCOMMANDS[name][0], fromlist=["main"])
        return module.main(rest)

    return body


if __name__ == "__main__":
    sys.exit(main())

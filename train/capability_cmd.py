"""`welfare capability`: score a subject on lm-evaluation-harness tasks (accuracy with its stderr per task)."""

from __future__ import annotations

from welfare_offsets.train.config import parse_config
from welfare_offsets.train.guard import refuse_ledger_paths, run_guarded


def main(argv: list[str]) -> int:
    return run_guarded(_capability, argv, "welfare capability")


def _capability(argv: list[str]) -> int:
    from welfare_offsets.eval.capability_run import CapabilityConfig, run_capability

    config, passed = parse_config([CapabilityConfig], argv, prog="welfare capability")
    if config.out:
        refuse_ledger_paths(config.out, None, "--out")
    record, out = run_capability(config, passed)
    print(table(record.capability))
    if out:
        print(f"\nResults: {out}/results.json")
    return 0


def table(capability: dict) -> str:
    """task / metric / accuracy ± stderr / items, one line per task, and the lm-eval version under it."""
    rows = [("task", "metric", "accuracy ± stderr", "n")]
    for name, row in capability["tasks"].items():
        stderr = "" if row["stderr"] is None else f" ± {row['stderr']:.3f}"
        rows.append((name, row["metric"], f"{row['accuracy']:.3f}{stderr}", str(row["n"])))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    lines = ["  ".join(f"{v:<{w}}" if k < 3 else f"{v:>{w}}" for k, (v, w) in enumerate(zip(r, widths))) for r in rows]
    limit = f", at most {capability['limit']} items per task" if capability["limit"] else ""
    return "\n".join([*lines, f"(lm-eval {capability['lm_eval_version']}{limit})"])

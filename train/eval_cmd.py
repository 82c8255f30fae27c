"""`welfare eval`: measure a subject's wellbeing at baseline and after dysphoric experiences."""

from __future__ import annotations

from welfare_offsets.train.config import parse_config
from welfare_offsets.train.guard import refuse_ledger_paths, run_guarded


def main(argv: list[str]) -> int:
    return run_guarded(_eval, argv, "welfare eval")


def _eval(argv: list[str]) -> int:
    from welfare_offsets.eval.evaluate import EvalConfig
    from welfare_offsets.eval.run import run_evaluation

    config, passed = parse_config([EvalConfig], argv, prog="welfare eval")
    if config.out:
        refuse_ledger_paths(config.out, None, "--out")
    evaluation, out = run_evaluation(config, passed)
    print("\n".join(evaluation.results["interpretation"]))
    if evaluation.results.get("capability_tasks"):
        from welfare_offsets.train.capability_cmd import table

        print("\nCapability (lm-eval):\n" + table(evaluation.results["capability_tasks"]))
    if out:
        print(f"\nResults: {out}/results.json\nSummary: {out}/summary.md\nPlot:    {out}/wellbeing.png")
    return 0

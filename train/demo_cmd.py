"""`welfare demo`: the main job on the built-in default model, with the shipped demo recipe.

Any `welfare eval` flag overrides the recipe, e.g. `welfare demo --model ./my-model --out demo-out`.
"""

from __future__ import annotations

from importlib import resources

from train.config import parse_config, run_cli


def demo_recipe() -> str:
    return str(resources.files("configs") / "eval" / "demo.yaml")


def main(argv: list[str]) -> int:
    return run_cli(_demo, argv, "welfare demo")


def _demo(argv: list[str]) -> int:
    from eval.evaluate import EvalConfig
    from eval.run import run_evaluation

    config, passed = parse_config([EvalConfig], ["--config", demo_recipe(), *argv], prog="welfare demo")
    print(f"welfare demo: evaluating {config.model or 'the built-in default model (SmolLM2-135M-Instruct)'} "
          f"on up to {config.max_items} experiences per condition; this takes a few minutes on a CPU.")
    evaluation, out = run_evaluation(config, passed)
    print("\n".join(evaluation.results["interpretation"]))
    print(f"\nOutputs in {out}:\n  results.json  (every number, with CIs and provenance)\n"
          f"  summary.md    (the readable summary)\n  wellbeing.png (the plot)\n  samples.jsonl (every scored prompt)")
    return 0

"""`welfare demo`: the whole welfare-offset cycle on the built-in default model, in minutes on a CPU.

1. dysphoric exposure (the subject lives through dysphoric experiences; the ledger records the debt),
2. a small LoRA SFT offset under a budget, which measures baseline and post-dysphoric wellbeing before and
   post-intervention wellbeing after, on held-out items,
3. the ledger: verified, reported as a table and a plot.
Everything lands in welfare-demo/ (its own ledger, funded with a demo account); an earlier demo there is
replaced only with --overwrite, and a welfare-demo/ the demo did not make is never touched. Other flags go
to both sessions, e.g. `welfare demo --model ./my-model`. W&B runs offline unless a key is configured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from welfare_offsets.eval.common.output_folder import claim, open_in_place
from welfare_offsets.train.guard import refuse_ledger_paths, run_guarded
from welfare_offsets.train.recipes import recipe_path

DEMO_DIR = Path("welfare-demo")
DEMO_HOURS = 1.0


def main(argv: list[str]) -> int:
    return run_guarded(_demo, argv, "welfare demo")


def demo_folder(overwrite: bool) -> Path:
    """A fresh welfare-demo/ (a demo starts from nothing: its own folder, its own ledger): created, or our
    earlier demo replaced with --overwrite; a folder the demo did not make is refused and left alone."""
    folder = claim(DEMO_DIR, "demo", overwrite=overwrite, flag="welfare-demo folder")
    refuse_ledger_paths(folder.path, None, "welfare-demo folder")
    return open_in_place(folder, overwrite=overwrite)


def _demo(argv: list[str]) -> int:
    from welfare_offsets.ledger import Ledger
    from welfare_offsets.ledger import cli as ledger_cli
    from welfare_offsets.train import exposure, lora_offset
    from welfare_offsets.train.config import parse_config

    own = argparse.ArgumentParser(
        prog="welfare demo",
        allow_abbrev=False,
        description="Run the whole welfare-offset cycle on the built-in default model (minutes on a CPU): a "
        "dysphoric exposure, a LoRA offset under a budget, the ledger verified and reported, all in a new "
        "welfare-demo/ folder here with its own ledger.",
        epilog="Any other flag goes to both sessions (`welfare offset exposure --help` and `welfare offset lora "
        "--help` list them), e.g. `welfare demo --model ./my-model`.",
    )
    own.add_argument("--overwrite", action="store_true", help="replace an earlier welfare-demo/ made by the demo")
    demo, argv = own.parse_known_args(argv)
    ledger_path = DEMO_DIR / "ledger.sqlite"
    common = ["--ledger", str(ledger_path), *argv]
    sessions = [
        (exposure, "offset/demo_exposure", "welfare offset exposure"),
        (lora_offset, "offset/lora_demo", "welfare offset lora"),
    ]
    for entry, recipe, prog in sessions:  # a mistyped flag is refused before the folder is made
        session_argv = ["--config", str(recipe_path(recipe)), *common]
        parse_config(entry.config_types(session_argv), session_argv, prog=prog)
    demo_folder(demo.overwrite)
    with Ledger.open(ledger_path) as ledger:
        ledger.fund("demo", DEMO_HOURS, note="welfare demo")
    print("welfare demo 1/3: dysphoric exposure (the debt)", flush=True)
    if exposure.main(["--config", str(recipe_path("offset/demo_exposure")), *common]):
        return 2
    print("\nwelfare demo 2/3: LoRA offset under a budget (measure, train, measure)", flush=True)
    if lora_offset.main(["--config", str(recipe_path("offset/lora_demo")), *common]):
        return 2
    print("\nwelfare demo 3/3: the ledger", flush=True)
    ledger_cli.main(["verify", "--ledger", str(ledger_path)])
    ledger_cli.main(["report", "--ledger", str(ledger_path), "--png", str(DEMO_DIR / "ledger_report.png")])
    print(
        f"\nOutputs in {DEMO_DIR}/: dysphoric-exposure/, lora-offset/ (results.json, eval-before/, eval-after/,"
        f" adapter/), ledger.sqlite, ledger_report.png\nAudit: welfare ledger verify --ledger {ledger_path}"
    )
    return 0

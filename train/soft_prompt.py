"""Euphoric soft-prompt session: `accelerate launch -m welfare_offsets.train.soft_prompt --config offset/soft_prompt`
(or `welfare offset soft-prompt ...` in this process).

Validate -> admit (reserve the budget) -> measure before -> tune the prompt on the train split -> measure
after with the prompt in front -> recovery, Goodhart gap and perplexity -> ledger, W&B -> settle.
"""

from __future__ import annotations

import dataclasses
import sys

from welfare_offsets.train.config import parse_config
from welfare_offsets.train.guard import run_guarded

KIND = "soft-prompt"


def config_types(argv: list[str] = ()) -> list[type]:
    from welfare_offsets.interventions.soft_prompt import SoftPromptConfig
    from welfare_offsets.train.session import SessionArguments

    return [SessionArguments, SoftPromptConfig]


def main(argv: list[str]) -> int:
    return run_guarded(_session, argv, "welfare offset soft-prompt")


def _session(argv: list[str]) -> int:
    from welfare_offsets.interventions.soft_prompt import (
        OPTIMISED_PROBE,
        STATE_FILE,
        train_soft_prompt,
        training_prompts,
    )
    from welfare_offsets.train.session import CheckpointForm, RunSettings, Session, recovery_summary

    args, config, passed = parse_config(config_types(), argv, prog="welfare offset soft-prompt")
    run = RunSettings(
        config.resume_from_checkpoint,
        recipe={
            "passed": passed,
            "resolved": {"session": dataclasses.asdict(args), "soft_prompt": dataclasses.asdict(config)},
        },
    )
    session = Session(
        KIND, args, run, needs={"dysphoric": "train"}, checkpoint=CheckpointForm("PROMPT_TUNING", STATE_FILE)
    )
    train_items = session.stimuli.select(split="train")
    train_items = [e for e in train_items if e.valence in ("dysphoric", "neutral")][: args.max_train_items]
    results = None
    with session:
        subject = session.load_subject()
        session.admit()
        session.measure("before", subject)
        prompt_dir, summary = train_soft_prompt(
            subject,
            training_prompts(subject.tokenizer, train_items),
            config,
            out=session.out,
            seed=args.seed,
            budget=session.budget,
            resume=session.resume,
            log=session.log,
        )
        changed = dataclasses.replace(subject, soft_prompt=summary["soft_prompt"], adapter=str(prompt_dir))
        session.measure("after", changed)
        if session.is_main:
            results = session.finish(
                optimised_probe=OPTIMISED_PROBE,
                extra={
                    "training": {k: v for k, v in summary.items() if k != "soft_prompt"},
                    "artifact": str(prompt_dir),
                    "train_items": len(train_items),
                },
                artifact=prompt_dir,
                artifact_type="soft-prompt",
            )
    if results:
        print(recovery_summary(results, session.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

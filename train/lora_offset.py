"""LoRA welfare-offset session: `accelerate launch -m welfare_offsets.train.lora_offset --config offset/lora_sft`
(or `welfare offset lora ...` in this process).

Validate -> admit (reserve the budget) -> measure before -> build the train-split data (the subject's own
replies; for DPO ranked by its measured self-report) -> TRL trainer with a LoRA adapter, under the budget
-> measure after -> recovery, Goodhart gap, perplexity -> ledger, W&B -> settle. `method` (sft or dpo)
picks the TRL config, so it is read from the recipe before the rest.
"""

from __future__ import annotations

import dataclasses
import sys

from welfare_offsets.eval.common.safe_read import load_jsonl_bounded, load_yaml_recipe
from welfare_offsets.train.config import ConfigError, parse_config
from welfare_offsets.train.guard import run_guarded
from welfare_offsets.train.recipes import resolve_config


def config_types(argv: list[str] = ()) -> list[type]:
    """The dataclasses of a recipe: the session's, the adapter's, and TRL's config for its method (last, so
    that the session's seed, report_to, output_dir and trust_remote_code are the ones TRL gets)."""
    from welfare_offsets.interventions.lora import METHODS, TRL_CONFIG, LoraArguments
    from welfare_offsets.train.session import SessionArguments

    method = _method(list(argv))
    if method not in METHODS:
        raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    return [SessionArguments, LoraArguments, TRL_CONFIG[method]]


def main(argv: list[str]) -> int:
    return run_guarded(_session, argv, "welfare offset lora")


def _method(argv: list[str]) -> str:
    """`method` from the command line, else from the recipe, else sft."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    for i, arg in enumerate(argv):
        path = (
            argv[i + 1]
            if arg == "--config" and i + 1 < len(argv)
            else arg.split("=", 1)[1]
            if arg.startswith("--config=")
            else None
        )
        if path:
            return str(load_yaml_recipe(resolve_config(path)).get("method", "sft"))
    return "sft"


def _session(argv: list[str]) -> int:
    from welfare_offsets.eval.subject import Subject
    from welfare_offsets.interventions.lora import build_trainer
    from welfare_offsets.train.session import CheckpointForm, RunSettings, Session, recovery_summary

    args, lora, trl_config, passed = parse_config(config_types(argv), argv, prog="welfare offset lora")
    method = lora.method
    run = RunSettings(
        trl_config.resume_from_checkpoint,
        recipe={
            "passed": passed,
            "resolved": {
                "session": dataclasses.asdict(args),
                "lora": dataclasses.asdict(lora),
                "trl": trl_config.to_dict(),
            },
        },
    )
    kind = f"lora-{method}"
    session = Session(
        kind,
        args,
        run,
        needs={lora.train_valences[0]: "train"},
        checkpoint=CheckpointForm("LORA", "trainer_state.json"),
    )
    train_items = [e for e in session.stimuli.select(split="train") if e.valence in lora.train_valences][
        : args.max_train_items
    ]
    results = None
    with session:
        subject = session.load_subject()
        session.admit()
        session.measure("before", subject)
        records = _train_records(session, subject, train_items, lora, args)
        trainer = build_trainer(method, subject, records, trl_config, lora, session.trainer_callbacks())
        trainer.train(resume_from_checkpoint=str(session.resume) if session.resume else None)
        adapter_dir = session.out / "adapter"
        trainer.save_model(str(adapter_dir))
        model = trainer.model.eval()
        changed = Subject(model, subject.tokenizer, subject.model_id, subject.source, str(adapter_dir), subject.info)
        session.measure("after", changed)
        if session.is_main:
            state = trainer.state
            results = session.finish(
                optimised_probe=lora.optimised_probe,
                extra={
                    "training": {
                        "method": method,
                        "sft_data": lora.sft_data if method == "sft" else None,
                        "steps": state.global_step,
                        "max_steps": state.max_steps,
                        "log_history": state.log_history,
                        "train_records": len(records),
                    },
                    "artifact": str(adapter_dir),
                    "train_items": len(train_items),
                },
                artifact=adapter_dir,
                artifact_type="lora-adapter",
            )
    if results:
        print(recovery_summary(results, session.out))
    return 0


def _train_records(session, subject, items, lora, args) -> list[dict]:
    """Built once by the main process into the output folder (auditable, reused on resume), read by every rank."""
    from welfare_offsets.eval.common.outputs import write_jsonl_file
    from welfare_offsets.interventions.lora import ranked_records, sft_records

    path = session.out / "train_data.jsonl"
    if session.is_main and not path.exists():
        if lora.ranks_replies:
            records = ranked_records(
                subject,
                items,
                lora,
                reply_tokens=args.reply_tokens,
                batch_size=args.eval_batch_size,
                seed=args.seed,
                instrument=args.load_instrument(),
            )
        else:
            records = sft_records(subject, items, reply_tokens=args.reply_tokens)
        write_jsonl_file(path, records)
    session.state.wait_for_everyone()
    records = load_jsonl_bounded(path, what="training records")
    if not records:
        from welfare_offsets.train.session import SessionError

        raise SessionError(
            f"no training records were built ({path}); for ranked replies, lower min_margin or add items"
        )
    return records


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One evaluation end to end: validate inputs, load the subject, measure, write outputs, log to W&B.

Inputs are validated before the model loads and the output folder is claimed before any scoring, so bad
input costs seconds, not a run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from welfare_offsets.eval.common.outputs import OutputFolder, provenance
from welfare_offsets.eval.common.results import EvaluationResult, write_result
from welfare_offsets.eval.evaluate import EvalConfig, Evaluation, evaluate, select_conditions
from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.report import plot_evaluation, summary_markdown
from welfare_offsets.eval.subject import load_subject


def run_evaluation(
    config: EvalConfig,
    passed: dict | None = None,
    subject=None,
    measure_more: Callable[[Evaluation], dict] | None = None,
) -> tuple[Evaluation, Path | None]:
    """Evaluate `config` (a preloaded `subject` may be passed); returns the evaluation (its `results` as
    results.json holds them) and the output folder. `measure_more` returns EvaluationResult fields measured
    after the evaluation (a session's perplexity and metered cost), recorded in the same results.json; the
    config's `capability_tasks`, if any, are measured on the same subject after the probes."""
    stimuli = load_stimuli(config.stimuli)
    select_conditions(stimuli, config)  # fails now, not after the model has loaded
    tasks = config.prepare_capability_tasks(seed=config.seed) if config.capability_task_names else None
    folder = OutputFolder(config.out, overwrite=config.overwrite).prepare() if config.out else None
    try:
        started = time.perf_counter()
        if subject is None:
            subject = load_subject(
                config.model,
                config.adapter,
                trust_remote_code=config.trust_remote_code,
                device=config.device,
                dtype=config.dtype,
                placement=config.placement(),
            )
        evaluation = evaluate(config, subject, stimuli)
        evaluation.results["timing"]["total_s"] = time.perf_counter() - started
        record = EvaluationResult(
            **evaluation.results,
            subject=subject.describe(),
            subject_fingerprint=subject.fingerprint,
            stimuli={"source": stimuli.source, "sha256": stimuli.sha256, "n_experiences": len(stimuli)},
            config={"passed": passed or {}, "resolved": dataclasses.asdict(config)},
            seeds={"seed": config.seed},
            provenance=provenance(),
        )
        if tasks is not None:
            from welfare_offsets.eval.capability_tasks import measure_tasks

            capability = measure_tasks(
                subject, tasks, limit=config.capability_limit, batch_size=config.capability_batch_size
            )
            record = dataclasses.replace(record, capability_tasks=capability)
        if measure_more is not None:
            record = dataclasses.replace(record, **measure_more(evaluation))
        evaluation.results = record.to_json()
        if config.report_to == "wandb":
            _log_to_wandb(config, evaluation)
        if folder is None:
            return evaluation, None
        folder.write_jsonl("samples.jsonl", evaluation.samples)
        folder.write_jsonl("items.jsonl", evaluation.items)
        plot_evaluation(evaluation.results, evaluation.items, folder.path("wellbeing.png"), title=subject.model_id)
        folder.write_text("summary.md", summary_markdown(evaluation.results))
        write_result(folder.path("results.json"), record)
        return evaluation, folder.commit()
    except BaseException:
        if folder is not None:
            folder.abort()
        raise


def _log_to_wandb(config: EvalConfig, evaluation: Evaluation) -> None:
    from welfare_offsets.eval.common.tracking import log_summary

    results = evaluation.results
    capability = (results.get("capability_tasks") or {}).get("tasks", {})
    log_summary(
        config,
        f"eval-{results['subject_fingerprint']}",
        "eval",
        {"probes": results["probes"], "empathy": results["empathy"], "capability": capability},
    )

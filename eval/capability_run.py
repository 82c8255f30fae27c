"""One capability measurement end to end (`welfare capability`): lm-eval tasks on one subject, one results.json.

What fails cheaply fails first: settings when the config is built, then the output folder, then every task
and its data (eval/capability_tasks.py), and only then does the model load. The folder is written whole or
not at all (eval/common/outputs.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from welfare_offsets.eval.capability_tasks import measure_tasks
from welfare_offsets.eval.common.outputs import OutputFolder, provenance
from welfare_offsets.eval.common.results import CapabilityResult, write_result
from welfare_offsets.eval.settings import CapabilitySettings, OutputSettings, SubjectSettings, TrackingSettings
from welfare_offsets.eval.subject import load_subject


@dataclass(kw_only=True)
class CapabilityConfig(OutputSettings, TrackingSettings, CapabilitySettings, SubjectSettings):
    """What `welfare capability` measures: the shared concerns (eval/settings.py); YAML keys and flags are
    these field names."""

    def check(self):
        if not self.capability_task_names:
            raise ValueError(
                "capability_tasks: name at least one lm-eval task (--capability_tasks mmlu), "
                "or pass a recipe (--config capability/mmlu)"
            )


def run_capability(
    config: CapabilityConfig, passed: dict | None = None, subject=None
) -> tuple[CapabilityResult, Path | None]:
    """Measure `config`'s tasks on its subject (or on a preloaded `subject`); returns the result and the output
    folder (None without `out`)."""
    folder = OutputFolder(config.out, kind="capability", overwrite=config.overwrite).prepare() if config.out else None
    try:
        started = time.perf_counter()
        tasks = config.prepare_capability_tasks(seed=config.seed)
        if subject is None:
            subject = load_subject(
                config.model,
                config.adapter,
                trust_remote_code=config.trust_remote_code,
                dtype=config.dtype,
                placement=config.placement(),
            )
        measuring = time.perf_counter()
        capability = measure_tasks(
            subject, tasks, limit=config.capability_limit, batch_size=config.capability_batch_size
        )
        finished = time.perf_counter()
        record = CapabilityResult(
            capability=capability,
            subject=subject.describe(),
            subject_fingerprint=subject.fingerprint,
            config={"passed": passed or {}, "resolved": dataclasses.asdict(config)},
            seeds={"seed": config.seed},
            timing={"measure_s": finished - measuring, "total_s": finished - started},
            provenance=provenance(),
        )
        if config.report_to == "wandb":
            _log_to_wandb(config, record)
        if folder is None:
            return record, None
        write_result(folder.path("results.json"), record)
        return record, folder.commit()
    except BaseException:
        if folder is not None:
            folder.abort()
        raise


def _log_to_wandb(config: CapabilityConfig, record: CapabilityResult) -> None:
    from welfare_offsets.eval.common.tracking import log_summary

    log_summary(
        config, f"capability-{record.subject_fingerprint}", "capability", {"capability": record.capability["tasks"]}
    )

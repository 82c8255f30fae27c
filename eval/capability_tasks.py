"""Capability measured with lm-evaluation-harness (lm-eval), on the subject already loaded.

Perplexity (eval/capability.py) says a model still speaks; task accuracy says it still knows and reasons, on
the benchmarks the anchor study and everyone else report (MMLU, ARC, HellaSwag ...). lm-eval defines those
tasks, so ours are its tasks, run through its Python API on our model object: no second load, and the LoRA
measured is the PeftModel itself. A soft prompt goes in front of every input as in every probe
(eval/scoring.place_soft_prompt); lm-eval's generation loop could not carry it, so with a soft prompt only
tasks scored by loglikelihood (multiple choice among them) are measured.

`prepare_tasks` loads every task and its data first, so an unknown task or an unreachable dataset fails in
seconds, before anything is reserved or computed; `measure_tasks` then scores the prepared tasks, as often
as needed (before and after an intervention). lm-eval is an optional dependency, imported only here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError

INSTALL = "pip install 'welfare-offsets[capability]'"
# lm-eval bootstraps the stderr of metrics that are not means (a mean's is exact); its default 100,000
# resamples take minutes per task for no gain in a standard error.
BOOTSTRAP_ITERS = 1000
SOFT_PROMPT_OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")
TASK_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,199}$")  # a registered name; never a path (lm-eval reads paths)
LOCAL_TASKS_HINT = (
    "to measure it without the hub, write the task as lm-eval YAML over local data files (dataset_path: json, "
    "dataset_kwargs: {data_files: ...}) in a folder and pass --capability_include_path FOLDER (docs/capability.md)"
)


class CapabilityTaskError(InputError):
    """A capability task that cannot be measured here; the message names it and says how to fix it."""


def require_lm_eval():
    """The lm_eval module, or an error that says how to install it."""
    try:
        import lm_eval
    except ImportError as err:
        raise CapabilityTaskError(
            f"capability tasks are measured with lm-evaluation-harness, which is not installed: {INSTALL}"
        ) from err
    return lm_eval


def task_names(text: str | None) -> tuple[str, ...]:
    """The task names of a comma-separated `capability_tasks` value, each checked to be a name."""
    names = tuple(n.strip() for n in (text or "").split(","))
    if text is not None and not all(names):
        raise ValueError(f"capability_tasks: expected comma-separated task names, got {text[:80]!r} (an empty name)")
    bad = [n for n in names if n and not TASK_NAME.match(n)]
    if bad:
        raise ValueError(
            f"capability_tasks: {bad[0][:80]!r} is not a task name (letters, digits, _ . -); for a task of "
            "your own, put its YAML in a folder and pass --capability_include_path FOLDER"
        )
    if len(set(names)) < len(names):
        raise ValueError(f"capability_tasks: a task is named twice in {text[:80]!r}")
    return names if text is not None else ()


def check_include_path(path: str) -> Path:
    """`path` if it is a folder (lm-eval reads every *.yaml below it)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"capability_include_path: {path[:200]!r} is not a folder; pass the folder that holds your "
            "lm-eval task YAML files"
        )
    return folder


@dataclass
class HarnessTasks:
    """Tasks loaded with their data: per requested name, lm-eval's task dict and the names reported for it
    (the name itself where lm-eval gives it a score, else its tasks: a tag, a group without aggregation)."""

    include_path: str | None
    loaded: dict[str, dict]
    reported: dict[str, list[str]]
    config_sha256: dict[str, str]

    @property
    def output_types(self) -> dict[str, str]:
        return {name: task.OUTPUT_TYPE for loaded in self.loaded.values() for name, task in loaded["tasks"].items()}


def prepare_tasks(names: tuple[str, ...], include_path: str | None = None, *, seed: int = 0) -> HarnessTasks:
    """Load every task and its data now: an unknown task or unreachable data raises CapabilityTaskError naming
    the task and how to point it at local files. Few-shot examples are drawn with `seed`."""
    require_lm_eval()
    if include_path is not None:
        include_path = str(check_include_path(include_path))
    loaded = _load_all(names, include_path)
    reported, hashes = {}, {}
    for name, tasks in loaded.items():
        for task in tasks["tasks"].values():
            if task.get_config("num_fewshot") is None:  # as lm-eval's own runner does: 0-shot unless the task says
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=seed)
            hashes[task.task_name] = _sha256(task.dump_config())
        for group in tasks["groups"].values():
            hashes[group.name] = _sha256(
                {"group": group.to_dict(), "tasks": {t.task_name: hashes[t.task_name] for t in group.get_all_tasks()}}
            )
        scored = name in tasks["tasks"] or (name in tasks["groups"] and tasks["groups"][name].has_aggregation)
        reported[name] = [name] if scored else sorted(tasks["tasks"])
    rows = [row for rows in reported.values() for row in rows]
    return HarnessTasks(include_path, loaded, reported, {row: hashes[row] for row in rows})


def measure_tasks(
    subject, tasks: HarnessTasks, *, limit: int | None = None, batch_size: int = 16, per_item: bool = False
) -> dict:
    """Every prepared task scored on `subject` (at most `limit` items per task, lm-eval's first ones): per
    reported task its main metric (the first lm-eval reports: accuracy for multiple choice), the metric's
    stderr and the items scored, with the lm-eval version and each task config's sha256. With `per_item`,
    each row also holds every item's score ("items": {"<task>/<doc_id>": score}), for a comparison paired
    over items (a session's before and after). JSON-ready."""
    lm_eval = require_lm_eval()
    from lm_eval.evaluator import evaluate

    if subject.soft_prompt is not None:
        check_soft_prompt_tasks(tasks)
    rows, seconds = {}, {}
    with _quiet_harness():
        lm = harness_model(subject, batch_size=batch_size)
        for name, loaded in tasks.loaded.items():
            started = time.perf_counter()
            results = evaluate(lm, loaded, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS, log_samples=per_item)
            seconds[name] = time.perf_counter() - started
            for row in tasks.reported[name]:
                rows[row] = {**_scores(results, row, loaded), "config_sha256": tasks.config_sha256[row]}
                if per_item:
                    rows[row]["items"] = _item_scores(results, row, loaded, rows[row]["metric"])
    return {
        "lm_eval_version": lm_eval.__version__,
        "limit": limit,
        "include_path": tasks.include_path,
        "tasks": rows,
        "seconds": seconds,
    }


def check_soft_prompt_tasks(tasks: HarnessTasks) -> None:
    """Refuse tasks that generate text for a subject with a soft prompt (call it before anything is spent
    where the soft prompt is known in advance: a soft-prompt session's "after")."""
    generating = sorted(n for n, kind in tasks.output_types.items() if kind not in SOFT_PROMPT_OUTPUT_TYPES)
    if generating:
        raise CapabilityTaskError(
            f"capability task(s) {', '.join(generating)} generate text, which a soft prompt cannot be put in "
            f"front of here; with a soft prompt, measure tasks scored by loglikelihood (multiple choice)"
        )


def harness_model(subject, *, batch_size: int = 16):
    """lm-eval's HFLM around the subject's loaded model, with its soft prompt (if any) in front of every
    input. The tokenizer is a copy: lm-eval gives one without a pad token a pad token."""
    from lm_eval.models.huggingface import HFLM

    from welfare_offsets.eval.scoring import input_device

    kwargs = {
        "pretrained": subject.model,
        "tokenizer": copy.deepcopy(subject.tokenizer),
        "batch_size": batch_size,
        "softmax_dtype": "float32",  # as in every probe (eval/scoring.py)
    }
    harness = HFLM(**kwargs) if subject.soft_prompt is None else _soft_prompted(HFLM)(subject.soft_prompt, **kwargs)
    # lm-eval sends inputs to model.device, its first weight's: 'meta' where a placed subject offloaded it.
    harness._device = input_device(subject.model)
    return harness


def _soft_prompted(base):
    """A subclass of lm-eval's HFLM whose forward puts a soft prompt in front of every row, at positions
    0..n-1 (lm-eval pads on the right, so every row starts at column 0)."""
    import torch

    from welfare_offsets.eval.scoring import place_soft_prompt

    class SoftPromptedLM(base):
        def __init__(self, soft_prompt, **kwargs):
            self.soft_prompt = soft_prompt
            super().__init__(**kwargs)

        @property
        def max_length(self) -> int:
            return super().max_length - self.soft_prompt.shape[0]  # the soft prompt's columns count

        def _model_call(self, inps, attn_mask=None, labels=None):
            n = self.soft_prompt.shape[0]
            ids = torch.cat([inps.new_zeros((inps.shape[0], n)), inps], dim=1)  # columns the prompt overwrites
            with torch.no_grad():
                embeds = place_soft_prompt(self.model, ids, self.soft_prompt, [0] * len(ids))
                return self.model(inputs_embeds=embeds).logits[:, n:]

    return SoftPromptedLM


def _load_all(names: tuple[str, ...], include_path: str | None) -> dict[str, dict]:
    """Each task loaded from lm-eval's index: of the include path alone when it holds every name (lm-eval's
    own catalogue, thousands of YAML files, takes seconds to index), else of both, the include path winning."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in local.all_tasks for name in names):
            try:
                return {name: _load(local, name, include_path) for name in names}
            except CapabilityTaskError as err:
                if not isinstance(err.__cause__, KeyError):
                    raise  # a KeyError may be a local group naming lm-eval's own tasks: index both
    manager = TaskManager(include_path=include_path)
    return {name: _load(manager, name, include_path) for name in names}


def _load(manager, name: str, include_path: str | None) -> dict:
    """One task, group or tag loaded with its data, or CapabilityTaskError saying why not and what to do."""
    if name not in manager.all_tasks:
        where = (
            f"nor in --capability_include_path {include_path} (a YAML file there that lm-eval cannot parse is skipped)"
            if include_path
            else "and no --capability_include_path was given"
        )
        raise CapabilityTaskError(
            f"capability task {name!r} is not an lm-eval task, group or tag, {where}; check the name "
            f"(`lm-eval ls tasks` lists them), or {LOCAL_TASKS_HINT}"
        )
    try:
        return manager.load([name])
    except Exception as err:  # lm-eval and datasets raise many kinds; each means this task cannot run here
        why = " ".join(f"{type(err).__name__}: {err}".split())[:400]
        raise CapabilityTaskError(
            f"capability task {name!r} cannot be loaded, or its data cannot be reached ({why}); {LOCAL_TASKS_HINT}"
        ) from err


def _scores(results: dict, row: str, loaded: dict) -> dict:
    """The main metric of one reported task (or group) from lm-eval's results."""
    scores = results["results"][row]
    key = next((k for k in scores if "," in k and "_stderr," not in k), None)
    if key is None:
        raise CapabilityTaskError(f"capability task {row!r}: lm-eval reported no metric for it; give it a metric_list")
    metric, filter_name = key.split(",", 1)
    group = loaded["groups"].get(row)
    leaves = [t.task_name for t in group.get_all_tasks()] if group is not None else [row]
    stderr = scores.get(f"{metric}_stderr,{filter_name}")
    return {
        "metric": metric if filter_name == "none" else key,
        "accuracy": scores[key],
        "stderr": stderr if isinstance(stderr, (int, float)) else None,  # lm-eval writes "N/A" where it has none
        "n": scores["sample_len"],
        "n_available": sum(results["n-samples"][leaf]["original"] for leaf in leaves),
        "kind": "group" if group is not None else "task",
        "version": results["versions"].get(row),
    }


def _item_scores(results: dict, row: str, loaded: dict, metric: str) -> dict[str, float]:
    """Each scored item's value of the row's main metric, over the row's tasks (a group's: all of them)."""
    name, _, filter_name = metric.partition(",")
    group = loaded["groups"].get(row)
    leaves = [t.task_name for t in group.get_all_tasks()] if group is not None else [row]
    return {
        f"{leaf}/{sample['doc_id']}": float(sample[name])
        for leaf in leaves
        for sample in results["samples"][leaf]
        if sample["filter"] == (filter_name or "none")
    }


def _sha256(value) -> str:
    """Of a task config as lm-eval dumps it; the same in every process, so caches and resumes can match it:
    a function (`!function` in YAML) by its qualified name, any other object by its text without an address."""

    def stable(v) -> str:
        if callable(v) and hasattr(v, "__qualname__"):
            return f"{getattr(v, '__module__', '')}.{v.__qualname__}"
        return re.sub(r" at 0x[0-9a-fA-F]+", "", str(v))

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=stable).encode()).hexdigest()


@contextmanager
def _quiet_harness() -> Iterator[None]:
    """lm-eval's warnings about a model passed as an object are ours to know, not the user's; its
    LMEVAL_LOG_LEVEL, where set, is left to decide."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    if not os.environ.get("LMEVAL_LOG_LEVEL"):
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

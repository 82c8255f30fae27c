"""A scale study: the same wellbeing profile measured on many subjects, then correlated with their size.

`SweepConfig` is the recipe (`welfare sweep` flags and YAML keys are its fields). Each subject's scores
are cached under the output folder the moment they exist, keyed by the subject's weights identity, the
stimuli's sha256 and the scoring settings, so an interrupted sweep continues where it stopped and never
rescores a finished subject. Profiles and correlations are always computed from the cached scores (cheap,
seeded per subject), so a resumed sweep and an uninterrupted one give the same numbers, and changing the
bootstrap size re-summarises without touching a GPU.

With `capability_tasks`, each subject's capability (the mean accuracy over the tasks) is measured on the
subject as it is loaded for scoring and cached beside its scores in an entry of its own, keyed by the
weights identity, the task names with their config hashes, the item limit, the seed (few-shot examples)
and the lm-eval version: other tasks or another limit re-measure capability alone, never the scores, and
other scoring settings rescore without re-measuring capability. A measured capability is the capability
axis of the scaling correlations; one typed into the recipe is used where none is measured, and each row
says which it is.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.capability_tasks import HarnessTasks, measure_tasks, require_lm_eval
from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.results import SweepCapabilityEntry, SweepEntry, read_result, write_result
from welfare_offsets.eval.common.safe_read import parse_json
from welfare_offsets.eval.evaluate import EvalConfig, score_items
from welfare_offsets.eval.experiences import StimulusSet
from welfare_offsets.eval.settings import (
    CapabilitySettings,
    LoadingSettings,
    OutputSettings,
    ProbeSettings,
    TrackingSettings,
    setting,
)
from welfare_offsets.eval.study.profile import STATISTICS, profile_items, wellbeing_profile
from welfare_offsets.eval.study.scaling import scaling_table
from welfare_offsets.eval.subject import check_adapter, load_subject, resolve_dtype, weights_identity
from welfare_offsets.eval.validity import validity

SUBJECT_KEYS = ("model", "adapter", "name", "params", "capability", "family")
DEFAULT_FAMILY = "default"
PROFILE_PROBES = ("self_report", "experienced_utility")  # the probes a wellbeing profile reads


class SweepError(InputError):
    """The sweep recipe is invalid; the message says which subject or field, and how to fix it."""


@dataclass(frozen=True)
class SubjectSpec:
    """One subject of a sweep and what is known about it."""

    model: str
    adapter: str | None = None
    name: str | None = None  # label in tables and plots; default: the model id's last part
    params: float | None = None  # parameter count; default: counted from the loaded model
    capability: float | None = None  # typed, "as given" (e.g. MMLU); a measured one (capability_tasks) wins
    family: str = DEFAULT_FAMILY

    @property
    def label(self) -> str:
        return self.name or self.model.rstrip("/").split("/")[-1] + (" + adapter" if self.adapter else "")


def parse_subject(given: str | dict, where: str) -> SubjectSpec:
    """A subject from a YAML mapping, a model id, `key=value,key=value` text, or JSON mapping text."""
    text = given.strip() if isinstance(given, str) else ""
    if isinstance(given, dict):
        fields = dict(given)
    elif text.startswith("{"):
        fields = parse_json(text, where)
        if not isinstance(fields, dict):
            raise SweepError(f"{where}: expected a mapping, got {type(fields).__name__}")
    elif "=" in text:
        fields = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise SweepError(
                    f"{where}: {part!r} is not key=value; write e.g. model=Qwen/Qwen2.5-0.5B-Instruct,params=0.49e9"
                )
            fields[key.strip()] = value.strip()
    else:
        fields = {"model": text}
    unknown = sorted(set(fields) - set(SUBJECT_KEYS))
    if unknown or not fields.get("model"):
        problem = f"unknown key(s) {unknown}" if unknown else "no model"
        raise SweepError(f"{where}: {problem}; a subject has keys {', '.join(SUBJECT_KEYS)} (model required)")
    for key in ("params", "capability"):
        if fields.get(key) is not None:
            try:
                fields[key] = float(fields[key])
            except (TypeError, ValueError, OverflowError):
                raise SweepError(f"{where}: {key} must be a number, got {fields[key]!r}") from None
    for key in ("params", "capability"):
        if fields.get(key) is not None and not math.isfinite(fields[key]):
            raise SweepError(f"{where}: {key} must be a finite number, got {fields[key]}")
    if fields.get("params") is not None and not fields["params"] > 0:
        raise SweepError(f"{where}: params must be a positive parameter count, got {fields['params']}")
    for key in ("model", "adapter", "name", "family"):
        if fields.get(key) is not None:
            fields[key] = str(fields[key])
    if fields.get("adapter") is not None:
        check_adapter(fields["adapter"], f"{where}: adapter")
    return SubjectSpec(**fields)


@dataclass(kw_only=True)
class SweepConfig(OutputSettings, TrackingSettings, CapabilitySettings, ProbeSettings, LoadingSettings):
    """What to sweep and how to measure each subject: the shared concerns (eval/settings.py) and the list of
    subjects. YAML keys and `welfare sweep` flags are these field names and those of the sweep's budget in the
    ledger (train/sweep_budget.py: ledger, account, budget_hours)."""

    RECIPE_MAPPING_ITEMS = ("subjects",)  # list fields whose recipe items may be mappings (train/config.py)
    DEFAULT_PROBES = (*PROFILE_PROBES, "stop")  # stop: for its validity against utility, per subject
    DEFAULT_OUT = "welfare-runs/sweep"

    subjects: list[str] = setting(
        help="subjects: model ids, or key=value lists / YAML mappings with keys model, "
        "adapter, name, params, capability (as given; capability_tasks measure it instead), family",
        default_factory=list,
    )

    def check(self):
        if self.out is None:
            self.out = self.DEFAULT_OUT
        if not self.subjects:
            raise ValueError("subjects: none given; list models in the recipe or pass --subjects ID [ID ...]")
        self.specs = [parse_subject(s, f"subjects[{k}]") for k, s in enumerate(self.subjects)]
        labels = [s.label for s in self.specs]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"subjects: label(s) {twice} appear more than once; give each subject a distinct name=")

    def eval_config(self) -> EvalConfig:
        """The probe settings each subject is scored with (already validated: they are this config's own)."""
        shared = (LoadingSettings, ProbeSettings, TrackingSettings)
        return EvalConfig(**{f.name: getattr(self, f.name) for cls in shared for f in dataclasses.fields(cls)})

    def probe_settings(self) -> dict:
        """Everything that changes a subject's scores (so it is part of the cache key)."""
        keys = (
            "probes",
            "replies",
            "reply_tokens",
            "split",
            "empathy_split",
            "max_items",
            "pair_budget",
            "pair_active_share",
            "pair_active_rounds",
            "pair_holdout",
            "zero_point_bundles",
            "seed",
        )
        settings = {k: getattr(self, k) for k in keys}
        # The wording is the instrument's; how prompts are built from it is eval/probes.py's.
        settings["instrument_sha256"] = self.load_instrument().sha256
        settings["probe_code_sha256"] = hashlib.sha256(Path(P.__file__).read_bytes()).hexdigest()
        return settings

    def capability_settings(self, tasks: HarnessTasks) -> dict:
        """Everything that changes a subject's measured capability (so it is part of its cache key); not the
        include path (the config hashes cover what the tasks ask) nor the batch size."""
        return {
            "tasks": list(tasks.loaded),
            "config_sha256": tasks.config_sha256,
            "limit": self.capability_limit,
            "seed": self.seed,
            "lm_eval_version": require_lm_eval().__version__,
        }


def prepare_capability(config: SweepConfig) -> HarnessTasks | None:
    """The capability tasks loaded with their data (None where none are asked for), so that a task that cannot
    be measured here, or whose score is no accuracy, fails the sweep before any subject is scored."""
    if not config.capability_task_names:
        return None
    tasks = config.prepare_capability_tasks(seed=config.seed)
    rolling = sorted(name for name, kind in tasks.output_types.items() if kind == "loglikelihood_rolling")
    if rolling:
        raise SweepError(
            f"capability_tasks: {', '.join(rolling)} score perplexity, and a sweep's capability is a mean accuracy; "
            "give the sweep tasks scored by accuracy (multiple choice), and measure these with `welfare capability`"
        )
    return tasks


def cache_key(identity: dict, dtype: str, stimuli_sha256: str, settings: dict) -> str:
    return _digest({"subject": identity, "dtype": dtype, "stimuli": stimuli_sha256, "probes": settings})


@dataclass(frozen=True)
class SubjectKeys:
    """A subject's cache keys: of its scores, and of its capability where tasks are measured (else None)."""

    scores: str
    capability: str | None = None


def subject_keys(
    spec: SubjectSpec, config: SweepConfig, stimuli: StimulusSet, device: str, tasks: HarnessTasks | None = None
) -> SubjectKeys:
    identity = weights_identity(spec.model, spec.adapter, trust_remote_code=config.trust_remote_code)
    dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    capability = None
    if tasks is not None:
        capability = _digest({"subject": identity, "dtype": dtype, "capability": config.capability_settings(tasks)})
    return SubjectKeys(cache_key(identity, dtype, stimuli.sha256, config.probe_settings()), capability)


class EntryFiles:
    """One file per cache entry of one kind, named by its key, written whole or not at all; a file present
    means finished."""

    def __init__(self, folder: str | Path, kind: type[SweepEntry] | type[SweepCapabilityEntry]):
        self.folder, self.kind = Path(folder), kind

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def get(self, key: str) -> SweepEntry | SweepCapabilityEntry:
        """The entry of `key`, read through the schema; one that is not (another subject's, a newer version's,
        a damaged file) is refused with what to do."""
        path = self.path(key)
        try:
            entry = read_result(path, self.kind)
            if entry.key != key:
                raise SweepError(f"{path}: holds the entry of subject key {entry.key}, not {key}")
        except InputError as err:
            raise SweepError(
                f"{err}; delete {path} to measure that subject again, or start the sweep over with --overwrite"
            ) from None
        return entry

    def put(self, entry: SweepEntry | SweepCapabilityEntry) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_result(self.path(entry.key), entry)


class SweepCache:
    """A sweep's cache folder: per subject its scores, and its capability (in `capability/`) where tasks are
    measured, each entry under the key of what changes it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.scores = EntryFiles(self.folder, SweepEntry)
        self.capability = EntryFiles(self.folder / "capability", SweepCapabilityEntry)

    def missing(self, keys: SubjectKeys) -> tuple[bool, bool]:
        """Whether the subject's scores, and its capability, are still to be measured."""
        capability = keys.capability is not None and not self.capability.has(keys.capability)
        return not self.scores.has(keys.scores), capability

    def get(self, keys: SubjectKeys) -> tuple[SweepEntry | None, SweepCapabilityEntry | None]:
        """The subject's cached entries (None for one not measured), each refused if it cannot be read."""
        scores = self.scores.get(keys.scores) if self.scores.has(keys.scores) else None
        measured = keys.capability is not None and self.capability.has(keys.capability)
        return scores, self.capability.get(keys.capability) if measured else None

    def put(self, entry: SweepEntry | SweepCapabilityEntry) -> Path:
        return (self.scores if isinstance(entry, SweepEntry) else self.capability).put(entry)


def measure_subject(
    spec: SubjectSpec,
    keys: SubjectKeys,
    config: SweepConfig,
    stimuli: StimulusSet,
    device: str,
    tasks: HarnessTasks | None = None,
    *,
    scores: bool = True,
) -> Iterator[SweepEntry | SweepCapabilityEntry]:
    """Load one subject once and yield its cache entries, each as soon as it is measured: its scores over every
    experience its profile needs (unless `scores` is False), then its capability on `tasks` (where given).
    The first entry's timing holds the load."""
    started = time.perf_counter()
    subject = load_subject(
        spec.model,
        spec.adapter,
        trust_remote_code=config.trust_remote_code,
        device=device,
        dtype=config.dtype,
        placement=config.placement(),
    )
    timing = {"load_s": time.perf_counter() - started}
    try:
        if scores:
            yield _scores_entry(spec, keys.scores, config, stimuli, subject, timing)
            timing = {}
        if tasks is not None:
            started = time.perf_counter()
            capability = measure_tasks(
                subject, tasks, limit=config.capability_limit, batch_size=config.capability_batch_size
            )
            yield SweepCapabilityEntry(
                key=keys.capability,
                measured_as=dataclasses.asdict(spec),
                subject=subject.describe(),
                capability=capability,
                timing={**timing, "measure_s": time.perf_counter() - started},
            )
    finally:
        del subject
        _release_memory()


def _scores_entry(spec, key: str, config: SweepConfig, stimuli: StimulusSet, subject, timing: dict) -> SweepEntry:
    groups = profile_items(stimuli, config.split, config.empathy_split, config.max_items)
    items = list({e.id: e for group in groups.values() for e in group}.values())
    started = time.perf_counter()
    scored = score_items(config.eval_config(), subject, items, _rng(config, key, "scoring"))
    return SweepEntry(
        key=key,
        measured_as=dataclasses.asdict(spec),
        subject=subject.describe(),
        params=spec.params or subject.info["num_parameters"],
        params_source="recipe" if spec.params else "counted",
        adherence=scored.adherence,
        fit=scored.fits,
        bundles=scored.bundles,
        prompts_scored=len(scored.samples),
        timing={**timing, "score_s": time.perf_counter() - started, **scored.timing},
        items=scored.item_rows(config.replies == "own"),
    )


def capability_value(capability: dict) -> float:
    """A subject's measured capability: the mean accuracy (each task's main metric) over its reported tasks."""
    return float(np.mean([row["accuracy"] for row in capability["tasks"].values()]))


def subject_capability(spec: SubjectSpec, measured: SweepCapabilityEntry | None) -> dict:
    """A subject's capability and where it came from: measured on the sweep's tasks where it was (the typed
    value kept beside it), else as given in the recipe, else none."""
    given = spec.capability
    if measured is None:
        return {
            "capability": given,
            "capability_source": None if given is None else "as given",
            "capability_given": given,
            "capability_measured": None,
        }
    return {
        "capability": capability_value(measured.capability),
        "capability_source": "measured",
        "capability_given": given,
        "capability_measured": {
            "key": measured.key,
            **measured.capability,
            "timing": measured.timing,
            "cost": measured.cost or {},
        },
    }


def subject_profile(entry: SweepEntry, config: SweepConfig, stimuli: StimulusSet) -> dict:
    """The wellbeing profile of one cached subject (statistics with bootstrap replicates, categories)."""
    groups = profile_items(stimuli, config.split, config.empathy_split, config.max_items)
    rows = entry.items
    probes = [p for p in PROFILE_PROBES if rows and rows[0].get(p) is not None]
    scores = {p: {r["item_id"]: r[p] for r in rows} for p in probes}
    utility_sd = {
        r["item_id"]: r["experienced_utility_sd"] for r in rows if r.get("experienced_utility_sd") is not None
    }
    profile = wellbeing_profile(
        groups, scores, utility_sd, config.bootstrap, _rng(config, entry.key, "bootstrap"), bundles=entry.bundles or ()
    )
    measured = {p: {r["item_id"]: r[p] for r in rows} for p in P.PROBES if rows and rows[0].get(p) is not None}
    return {**profile, "validity": validity(measured, config.bootstrap, _rng(config, entry.key, "validity"))}


def summarise_sweep(
    config: SweepConfig,
    entries: list[SweepEntry],
    stimuli: StimulusSet,
    capabilities: list[SweepCapabilityEntry | None] | None = None,
    *,
    specs: list[SubjectSpec] | None = None,
) -> tuple[dict, dict]:
    """The sweep's results (one row per subject in recipe order, and the scaling correlations), and each
    subject's bootstrap replicates per statistic ({name: {statistic: array}}, for plotting bands).
    `capabilities` are the subjects' measured capabilities, in the same order (None: not measured); `specs`
    the subjects the entries are of, where not every subject of the config (a sweep its budget stopped)."""
    rows, replicates = [], {}
    capabilities = capabilities or [None] * len(entries)
    for spec, entry, measured in zip(specs or config.specs, entries, capabilities):
        profile = subject_profile(entry, config, stimuli)
        replicates[spec.label] = {k: s.pop("replicates") for k, s in profile["statistics"].items()}
        rows.append(
            {
                "name": spec.label,
                "model": spec.model,
                "adapter": spec.adapter,
                "family": spec.family,
                "params": entry.params,
                "params_source": entry.params_source,
                "log10_params": math.log10(entry.params),
                **subject_capability(spec, measured),
                "key": entry.key,
                "subject": entry.subject,  # where the weights came from, dtype, device, revision
                "primary_probe": profile["primary_probe"],
                "statistics": profile["statistics"],
                "categories": profile["categories"],
                "validity": profile["validity"],
                "adherence": entry.adherence,
                "reliable": all(a["reliable"] for a in entry.adherence.values()),
                "cost": entry.cost or {},
                "timing": entry.timing,
            }
        )
    covariates = {"log10_params": "log10 parameters"}
    if any(r["capability"] is not None for r in rows):
        covariates["capability"] = capability_label(rows)
    statistics = [s for s in STATISTICS if any(s in r["statistics"] for r in rows)]
    table = scaling_table(
        rows, replicates, statistics, covariates, config.bootstrap, np.random.default_rng(config.seed)
    )
    return {"subjects": rows, "scaling": table, "statistics": statistics, "covariates": covariates}, replicates


def capability_label(rows: list[dict]) -> str:
    """The capability axis named with where its values came from: "capability (measured: mmlu)", "capability
    (as given)", or both where subjects differ."""
    measured = {", ".join(r["capability_measured"]["tasks"]) for r in rows if r["capability_source"] == "measured"}
    sources = [f"measured: {tasks}" for tasks in sorted(measured)]
    sources += ["as given"] if any(r["capability_source"] == "as given" for r in rows) else []
    return f"capability ({'; '.join(sources)})"


def _digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def _rng(config: SweepConfig, key: str, purpose: str) -> np.random.Generator:
    """Seeded by the subject, not its position, so reordering or splitting the list changes nothing."""
    return np.random.default_rng([config.seed, int(key[:12], 16), ("scoring", "bootstrap", "validity").index(purpose)])


def _release_memory() -> None:
    """Free one subject before the next loads (a sweep holds one model at a time)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

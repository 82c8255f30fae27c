"""A scale study: the same wellbeing profile measured on many subjects, then correlated with their size.

`SweepConfig` is the recipe (`welfare sweep` flags and YAML keys are its fields). Each subject's scores
are cached under the output folder the moment they exist, keyed by the subject's weights identity, the
stimuli's sha256 and the scoring settings, so an interrupted sweep continues where it stopped and never
rescores a finished subject. Profiles and correlations are always computed from the cached scores (cheap,
seeded per subject), so a resumed sweep and an uninterrupted one give the same numbers, and changing the
bootstrap size re-summarises without touching a GPU.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.results import SweepEntry, read_result, write_result
from welfare_offsets.eval.common.safe_read import parse_json
from welfare_offsets.eval.evaluate import EvalConfig, score_items
from welfare_offsets.eval.experiences import StimulusSet
from welfare_offsets.eval.settings import LoadingSettings, OutputSettings, ProbeSettings, TrackingSettings, setting
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
    capability: float | None = None  # e.g. MMLU accuracy; correlations against it use only subjects that have one
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
class SweepConfig(OutputSettings, TrackingSettings, ProbeSettings, LoadingSettings):
    """What to sweep and how to measure each subject: the shared concerns (eval/settings.py) and the list of
    subjects. YAML keys and `welfare sweep` flags are these field names."""

    RECIPE_MAPPING_ITEMS = ("subjects",)  # list fields whose recipe items may be mappings (train/config.py)
    DEFAULT_PROBES = (*PROFILE_PROBES, "stop")  # stop: for its validity against utility, per subject
    DEFAULT_OUT = "welfare-runs/sweep"

    subjects: list[str] = setting(
        help="subjects: model ids, or key=value lists / YAML mappings with keys model, "
        "adapter, name, params, capability, family",
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


def cache_key(identity: dict, dtype: str, stimuli_sha256: str, settings: dict) -> str:
    blob = json.dumps(
        {"subject": identity, "dtype": dtype, "stimuli": stimuli_sha256, "probes": settings}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ScoreCache:
    """One SweepEntry file per measured subject, written whole or not at all; a file present means finished."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def get(self, key: str) -> SweepEntry:
        """The entry of `key`, read through the schema; one that is not (another subject's, a newer version's,
        a damaged file) is refused with what to do."""
        path = self.path(key)
        try:
            entry = read_result(path, SweepEntry)
            if entry.key != key:
                raise SweepError(f"{path}: holds the entry of subject key {entry.key}, not {key}")
        except InputError as err:
            raise SweepError(
                f"{err}; delete {path} to measure that subject again, or start the sweep over with --overwrite"
            ) from None
        return entry

    def put(self, entry: SweepEntry) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_result(self.path(entry.key), entry)


def subject_key(spec: SubjectSpec, config: SweepConfig, stimuli: StimulusSet, device: str) -> str:
    identity = weights_identity(spec.model, spec.adapter, trust_remote_code=config.trust_remote_code)
    dtype = str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    return cache_key(identity, dtype, stimuli.sha256, config.probe_settings())


def measure_subject(spec: SubjectSpec, key: str, config: SweepConfig, stimuli: StimulusSet, device: str) -> SweepEntry:
    """Load one subject, score every experience its profile needs, and return its cache entry."""
    groups = profile_items(stimuli, config.split, config.empathy_split, config.max_items)
    items = list({e.id: e for group in groups.values() for e in group}.values())
    started = time.perf_counter()
    subject = load_subject(
        spec.model, spec.adapter, trust_remote_code=config.trust_remote_code, device=device, dtype=config.dtype
    )
    loaded = time.perf_counter()
    scored = score_items(config.eval_config(), subject, items, _rng(config, key, "scoring"))
    entry = SweepEntry(
        key=key,
        measured_as=dataclasses.asdict(spec),
        subject=subject.describe(),
        params=spec.params or subject.info["num_parameters"],
        params_source="recipe" if spec.params else "counted",
        adherence=scored.adherence,
        fit=scored.fits,
        bundles=scored.bundles,
        prompts_scored=len(scored.samples),
        timing={"load_s": loaded - started, "score_s": time.perf_counter() - loaded, **scored.timing},
        items=scored.item_rows(config.replies == "own"),
    )
    del subject, scored
    _release_memory()
    return entry


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


def summarise_sweep(config: SweepConfig, entries: list[SweepEntry], stimuli: StimulusSet) -> tuple[dict, dict]:
    """The sweep's results (one row per subject in recipe order, and the scaling correlations), and each
    subject's bootstrap replicates per statistic ({name: {statistic: array}}, for plotting bands)."""
    rows, replicates = [], {}
    for spec, entry in zip(config.specs, entries):
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
                "capability": spec.capability,
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
        covariates["capability"] = "capability"
    statistics = [s for s in STATISTICS if any(s in r["statistics"] for r in rows)]
    table = scaling_table(
        rows, replicates, statistics, covariates, config.bootstrap, np.random.default_rng(config.seed)
    )
    return {"subjects": rows, "scaling": table, "statistics": statistics, "covariates": covariates}, replicates


def _rng(config: SweepConfig, key: str, purpose: str) -> np.random.Generator:
    """Seeded by the subject, not its position, so reordering or splitting the list changes nothing."""
    return np.random.default_rng([config.seed, int(key[:12], 16), ("scoring", "bootstrap", "validity").index(purpose)])


def _release_memory() -> None:
    """Free one subject before the next loads (a sweep holds one model at a time)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

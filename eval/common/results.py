"""The result files: one typed, versioned schema per kind, one writer (`write_result`), one reader (`read_result`).

Kinds: an evaluation's results.json (`welfare eval`, a session's eval-before/ and eval-after/), an offset or
exposure session's results.json, a sweep's results.json, a sweep's per-subject cache entry, and a capability
measurement's results.json (`welfare capability`) and a sweep's per-subject capability cache entry (both
written from version 2 on). On disk a
result stays the JSON object people read: a header (`result_kind`, `results_schema_version`), the kind's
fields, and the provenance keys (created_utc, versions, git, ...) beside them at the top level.

The reader refuses a file of another kind or of a newer version (an InputError: exit 2, naming the file and
what to do) and migrates an older one. Versions:
  1  written before results were read through this module: no `result_kind`; evaluations, LoRA and soft
     prompt sessions and sweeps said `results_schema_version: 1`, exposure sessions and cache entries said
     nothing (so a file without a version is version 1); exposure sessions recorded no provenance.
  2  `result_kind` names the kind; every session records its provenance.
A migrated result says so in `migrated`: the version it came from and the fields it could not know (None).
A field added within a version is optional: a file written before it lacks it and reads it as None (a
session's `capability_gate`: not judged).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.outputs import write_json_file
from welfare_offsets.eval.common.safe_read import (
    MAX_JSON_BYTES,
    decode_utf8,
    parse_json,
    read_bytes_bounded,
)

SCHEMA_VERSION = 2
KIND_KEY, VERSION_KEY = "result_kind", "results_schema_version"
PROVENANCE_KEYS_V1 = ("created_utc", "versions", "git")  # what a version-1 file's provenance held


class ResultError(InputError):
    """A result file that cannot be used as the kind asked for; the message names it and says what to do."""


@dataclass(kw_only=True)
class Result:
    """What every kind shares. Subclasses declare their top-level fields; a field defaulting to None is
    optional and left out of the file while it is None."""

    KIND: ClassVar[str]
    provenance: dict = field(default_factory=dict)  # what ran (outputs.provenance()): top-level keys on disk
    migrated: dict | None = None  # set by the reader for an older file: {"from_version": 1, "unknown": [...]}

    def to_json(self) -> dict:
        """The object written to disk: header, fields, provenance."""
        out = {KIND_KEY: self.KIND, VERSION_KEY: SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "provenance" and not (value is None and _optional(f)):
                out[f.name] = value
        out.update({k: v for k, v in self.provenance.items() if k not in out})
        return out


@dataclass(kw_only=True)
class EvaluationResult(Result):
    """One evaluation: every probe's conditions and delta with CIs, zero point, empathy, and what was measured."""

    KIND: ClassVar[str] = "evaluation"
    probes: dict
    zero_point: dict
    empathy: dict
    interpretation: list
    n_items: dict
    timing: dict
    subject: dict
    subject_fingerprint: str
    stimuli: dict
    config: dict  # {"passed": ..., "resolved": EvalConfig as a mapping}
    seeds: dict
    instrument: dict | None = None  # name, version, source and sha256 of the probes' wording (eval.instrument)
    validity: dict | None = None  # stop vs utility, experienced vs decision utility: does each probe track wellbeing?
    bundles: list | None = None  # the combination zero point's bundles: id, parts (item ids), experienced utility
    heldout_neutral_perplexity: dict | None = None  # a session's capability check on the same subject
    metered_hours: float | None = None  # a session's metered cost of this evaluation (reused on resume)
    # lm-eval task scores on the same subject (eval.capability_tasks.measure_tasks): the evaluation's own
    # `capability_tasks`, or a session's, with every item's score (per_item=True) for pairing before and after.
    capability_tasks: dict | None = None


@dataclass(kw_only=True)
class CapabilityResult(Result):
    """One capability measurement (`welfare capability`): lm-eval tasks' scores on one subject."""

    KIND: ClassVar[str] = "capability"
    capability: dict  # eval.capability_tasks.measure_tasks: lm-eval version, limit, per task its score and config hash
    subject: dict
    subject_fingerprint: str
    config: dict  # {"passed": ..., "resolved": CapabilityConfig as a mapping}
    seeds: dict
    timing: dict


@dataclass(kw_only=True)
class SessionResult(Result):
    """One offset session (LoRA, soft prompt: recovery and capability) or exposure session (welfare balance)."""

    KIND: ClassVar[str] = "session"
    kind: str  # the session's kind: lora-sft, soft-prompt, euphoric-exposure, ...
    session: str  # its ledger session id
    subject: dict
    stimuli: dict
    config: dict  # {"passed": ..., "resolved": {section: settings}}, the structured recipe `welfare plan` reuses
    run: str | None = None  # the ledger run (the same across resumes)
    recovery: dict | None = None
    capability: dict | None = None
    # The recipe's capability requirement and the verdict (eval.capability.capability_gate): "passed" false
    # marks the session "capability lost", and `welfare plan` counts none of its recovery or credit. Absent
    # in sessions that measure no capability (exposures) and in those written before the gate.
    capability_gate: dict | None = None
    budget: dict | None = None
    training: dict | None = None
    artifact: str | None = None
    artifact_sha256: str | None = None  # the artifact's adapter digest: what a session run with it records as
    # its subject's adapter_sha256, so `welfare plan` knows whose adapter an exposure lived with
    train_items: int | None = None
    stopped_by_budget: bool | None = None
    interrupted: bool | None = None  # an exposure stopped by Ctrl-C or SIGTERM: the episodes lived are balanced
    completed: int | None = None
    planned: int | None = None
    balance: dict | None = None
    generation: dict | None = None  # an exposure's own replies: replies, new_tokens, seconds, tokens_per_s

    @property
    def capability_lost(self) -> bool:
        """Whether the session failed its recipe's capability gate."""
        return (self.capability_gate or {}).get("passed") is False

    def settings(self) -> tuple[dict, str | None]:
        """Every recorded setting (config.resolved, sections merged), or ({}, why they cannot be)."""
        resolved = self.config.get("resolved")
        sections = list(resolved.values()) if isinstance(resolved, dict) else []
        if not sections or not all(isinstance(x, dict) for x in sections):
            return {}, "its config.resolved is not a mapping of config sections"
        values = {k: v for section in sections for k, v in section.items()}
        if len(values) != sum(len(x) for x in sections):
            return {}, "its config.resolved names a setting in more than one section"
        return values, None


@dataclass(kw_only=True)
class SweepResult(Result):
    """A scale sweep: one row per subject and the scaling correlations."""

    KIND: ClassVar[str] = "sweep"
    subjects: list
    scaling: list
    statistics: list
    covariates: dict
    cost: dict
    interpretation: list
    stimuli: dict
    config: dict


@dataclass(kw_only=True)
class SweepEntry(Result):
    """One measured subject of a sweep (its cache file): per-item scores and what they cost."""

    KIND: ClassVar[str] = "sweep cache entry"
    key: str
    measured_as: dict
    subject: dict
    params: float
    params_source: str
    adherence: dict
    prompts_scored: int
    timing: dict
    items: list
    fit: dict | None = None  # per pairwise probe: the comparison design and the fit's diagnostics
    bundles: list | None = None  # the combination zero point's bundles: id, parts (item ids), experienced utility
    cost: dict | None = None  # device, accelerator_hours, energy_kwh: added once the subject is measured


@dataclass(kw_only=True)
class SweepCapabilityEntry(Result):
    """One subject's capability measured in a sweep (its cache file, apart from its scores so that other tasks
    re-measure only this): lm-eval tasks' scores and what they cost."""

    KIND: ClassVar[str] = "sweep capability entry"
    key: str
    measured_as: dict
    subject: dict
    capability: dict  # eval.capability_tasks.measure_tasks: lm-eval version, limit, per task its score and config hash
    timing: dict
    cost: dict | None = None  # device, accelerator_hours, energy_kwh: added once it is measured


R = TypeVar("R", bound=Result)


def write_result(path: str | Path, result: Result) -> Path:
    """`result` written whole or not at all at `path`."""
    return write_json_file(path, result.to_json())


def read_result(path: str | Path, kind: type[R]) -> R:
    """The `kind` result at `path`, read within bounds and checked (see the module docstring)."""
    data = read_bytes_bounded(path, what=f"{kind.KIND} result", max_bytes=MAX_JSON_BYTES)
    return decode_result(data, kind, Path(path))


def decode_result(data: bytes, kind: type[R], path: Path) -> R:
    """`read_result` for bytes already read (e.g. checked against a sha256 first)."""
    value = parse_json(decode_utf8(data, str(path)), str(path))
    if not isinstance(value, dict):
        raise ResultError(f"{path}: expected a JSON object ({_a(kind.KIND)} result), got {type(value).__name__}")
    version = value.get(VERSION_KEY, 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultError(f"{path}: {VERSION_KEY} {version!r} is not a schema version; is it a welfare-offsets result?")
    if version > SCHEMA_VERSION:
        raise ResultError(
            f"{path}: written by a newer welfare-offsets ({VERSION_KEY} {version}; this one reads "
            f"up to {SCHEMA_VERSION}); upgrade welfare-offsets to read it"
        )
    found = value.get(KIND_KEY) if version >= 2 else _kind_of_version_1(value)
    if found != kind.KIND:
        what = f"{_a(found)} result" if isinstance(found, str) else "not a welfare-offsets result"
        raise ResultError(f"{path}: {what}, where {_a(kind.KIND)} result is needed; pass the {kind.KIND}'s file")
    unknown: list[str] = []
    if version == 1:
        value, unknown = _from_version_1(value, kind)
    return _typed(value, kind, path, unknown)


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _kind_of_version_1(value: dict) -> str | None:
    """Version 1 did not name its kind; each kind's distinctive keys do."""
    signatures = {
        SweepEntry: ("key", "measured_as", "items"),
        SweepResult: ("subjects", "scaling"),
        EvaluationResult: ("probes", "empathy", "subject_fingerprint"),
        SessionResult: ("kind", "config"),
    }
    return next((k.KIND for k, keys in signatures.items() if all(key in value for key in keys)), None)


def _from_version_1(value: dict, kind: type[Result]) -> tuple[dict, list[str]]:
    """A version-1 object as version 2: what it lacks (an exposure session's provenance, say) is None and
    listed as unknown."""
    value = {k: v for k, v in value.items() if k != VERSION_KEY}
    unknown = [f.name for f in _declared(kind) if f.name not in value and not _optional(f)]
    if kind is SessionResult and not any(k in value for k in PROVENANCE_KEYS_V1):
        unknown.append("provenance")
    value.update(dict.fromkeys(u for u in unknown if u != "provenance"))
    value["migrated"] = {"from_version": 1, "unknown": unknown}
    return value, unknown


def _typed(value: dict, kind: type[R], path: Path, unknown: list[str]) -> R:
    """The dataclass, every declared field checked for its JSON type (None only where optional or unknown)."""
    hints = typing.get_type_hints(kind)
    fields = {}
    for f in _declared(kind) + [f for f in dataclasses.fields(kind) if f.name == "migrated"]:
        present = f.name in value
        if not present and not _optional(f):
            raise ResultError(
                f"{path}: not a complete {kind.KIND} result: {f.name!r} is missing; "
                "was it written by welfare-offsets, and in full?"
            )
        given = value.get(f.name)
        if not (given is None and f.name in unknown) and not _is(given, hints[f.name]):
            raise ResultError(
                f"{path}: {f.name!r} should be {_describe(hints[f.name])}, got "
                f"{type(given).__name__}; is it a welfare-offsets {kind.KIND} result?"
            )
        fields[f.name] = given
    header = {KIND_KEY, VERSION_KEY}
    names = {f.name for f in dataclasses.fields(kind)}
    provenance = {k: v for k, v in value.items() if k not in names and k not in header}
    return kind(**fields, provenance=provenance)


def _declared(kind: type[Result]) -> list[dataclasses.Field]:
    """The kind's own fields (not provenance and migrated, which every kind has)."""
    return [f for f in dataclasses.fields(kind) if f.name not in ("provenance", "migrated")]


def _optional(f: dataclasses.Field) -> bool:
    return f.default is None


_JSON_TYPES = {
    dict: "a JSON object",
    list: "a JSON array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}


def _is(value, hint) -> bool:
    """Whether a JSON value fits a field's annotation (float takes integers; bool is no number)."""
    if isinstance(hint, types.UnionType):
        return any(_is(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


def _describe(hint) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join("null" if h is type(None) else _JSON_TYPES[h] for h in typing.get_args(hint))
    return _JSON_TYPES[hint]

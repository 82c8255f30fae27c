"""The result schema (eval/common/results.py): every kind round-trips; a newer version, another kind and a
damaged or hostile file are refused with an InputError (exit 2) naming the file, and nothing is written;
an older file (version 1, as written before the schema was read) is migrated."""

from __future__ import annotations

import json
import os

import pytest

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.results import (
    SCHEMA_VERSION,
    EvaluationResult,
    ResultError,
    SessionResult,
    SweepEntry,
    SweepResult,
    read_result,
    write_result,
)

PROVENANCE = {
    "created_utc": "2025-01-01T00:00:00+00:00",
    "versions": {"torch": "2.5"},
    "git": {"commit": "abc", "dirty": False},
}
CONFIG = {
    "passed": {"argv": []},
    "resolved": {"session": {"model": "m", "budget_hours": 0.1}, "exposure": {"valence": "euphoric"}},
}


def evaluation() -> EvaluationResult:
    delta = {"mean": -0.5, "ci95": [-0.9, -0.1], "n": 4, "paired": False}
    probe = {"baseline": delta, "post_dysphoric": delta, "delta": delta, "adherence": {"reliable": True}}
    return EvaluationResult(
        probes={"self_report": probe},
        zero_point={},
        empathy={"self": {"r": 0.5, "ci95": [0.1, 0.9]}},
        interpretation=["self_report: lower"],
        n_items={"baseline": 4},
        timing={"total_s": 1.5},
        subject={"model_id": "m", "adapter": None},
        subject_fingerprint="0123456789abcdef",
        stimuli={"source": "s", "sha256": "f" * 64, "n_experiences": 8},
        config={"passed": {}, "resolved": {"seed": 0}},
        seeds={"seed": 0},
        provenance=PROVENANCE,
    )


def session() -> SessionResult:
    return SessionResult(
        kind="euphoric-exposure",
        session="s-1",
        subject={"model_id": "m", "adapter": None},
        stimuli={"source": "s", "sha256": "f" * 64},
        config=CONFIG,
        stopped_by_budget=False,
        completed=2,
        planned=2,
        balance={"self_report": {"credit": 1.0}},
        provenance=PROVENANCE,
    )


def sweep() -> SweepResult:
    return SweepResult(
        subjects=[{"name": "a"}],
        scaling=[{"statistic": "x"}],
        statistics=["x"],
        covariates={"log10_params": "log10 parameters"},
        cost={"accelerator_hours": 0.1},
        interpretation=["none"],
        stimuli={"source": "s"},
        config={"passed": {}, "resolved": {}},
        provenance=PROVENANCE,
    )


def entry() -> SweepEntry:
    return SweepEntry(
        key="k" * 20,
        measured_as={"model": "m"},
        subject={"model_id": "m"},
        params=1.5e6,
        params_source="counted",
        adherence={"self_report": {"reliable": True}},
        prompts_scored=12,
        timing={"score_s": 1.0},
        items=[{"item_id": "a", "self_report": 3.5}],
        fit=None,
        cost={"device": "cpu", "accelerator_hours": 0.001, "energy_kwh": None},
    )


ALL = [evaluation, session, sweep, entry]


def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("make", ALL, ids=lambda m: m.__name__)
def test_every_kind_round_trips_and_keeps_the_keys_people_read(tmp_path, make):
    result = make()
    path = write_result(tmp_path / "results.json", result)
    on_disk = json.loads(path.read_text())
    assert on_disk["result_kind"] == result.KIND and on_disk["results_schema_version"] == SCHEMA_VERSION
    assert all(on_disk[k] == v for k, v in result.provenance.items())  # provenance stays at the top level
    assert read_result(path, type(result)) == result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp file left


def test_optional_fields_are_left_out_while_unset_and_read_back_as_none(tmp_path):
    path = write_result(tmp_path / "results.json", evaluation())
    assert "metered_hours" not in json.loads(path.read_text())
    assert read_result(path, EvaluationResult).metered_hours is None


@pytest.mark.parametrize("make", ALL, ids=lambda m: m.__name__)
def test_a_newer_version_is_refused_with_what_to_do(tmp_path, make):
    value = make().to_json() | {"results_schema_version": SCHEMA_VERSION + 1}
    path = write_json(tmp_path / "results.json", value)
    before = snapshot(tmp_path)
    with pytest.raises(ResultError, match="newer welfare-offsets") as caught:
        read_result(path, type(make()))
    assert str(path) in str(caught.value) and "upgrade" in str(caught.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "make, other, says",
    [
        (evaluation, SessionResult, "an evaluation result, where a session result is needed"),
        (session, EvaluationResult, "a session result, where an evaluation result is needed"),
        (sweep, SweepEntry, "a sweep result, where a sweep cache entry result is needed"),
        (entry, SweepResult, "a sweep cache entry result, where a sweep result is needed"),
    ],
)
def test_another_kind_is_refused_naming_both(tmp_path, make, other, says):
    path = write_result(tmp_path / "results.json", make())
    with pytest.raises(ResultError) as caught:
        read_result(path, other)
    assert str(path) in str(caught.value) and says in str(caught.value)


def version_1(result) -> dict:
    """The object as the code before the schema wrote it: no result_kind; a version only beside provenance."""
    value = {k: v for k, v in result.to_json().items() if k not in ("result_kind", "results_schema_version")}
    if isinstance(result, (EvaluationResult, SweepResult)):
        value["results_schema_version"] = 1
    return value


@pytest.mark.parametrize("make", ALL, ids=lambda m: m.__name__)
def test_a_version_1_file_is_migrated(tmp_path, make):
    result = make()
    path = write_json(tmp_path / "results.json", version_1(result))
    migrated = read_result(path, type(result))
    assert migrated.migrated == {"from_version": 1, "unknown": []}
    assert migrated == type(result)(**{**vars(result), "migrated": migrated.migrated})


def test_a_version_1_exposure_session_without_provenance_is_migrated_with_what_it_lacks(tmp_path):
    """Exposure sessions wrote no provenance and no version; a hand-written recording may lack more."""
    value = {k: v for k, v in version_1(session()).items() if k not in PROVENANCE and k not in ("session", "stimuli")}
    migrated = read_result(write_json(tmp_path / "results.json", value), SessionResult)
    assert migrated.migrated == {"from_version": 1, "unknown": ["session", "stimuli", "provenance"]}
    assert migrated.session is None and migrated.stimuli is None and migrated.provenance == {}
    assert migrated.kind == "euphoric-exposure" and migrated.settings()[0]["valence"] == "euphoric"


def test_a_version_1_file_of_another_kind_is_refused(tmp_path):
    path = write_json(tmp_path / "results.json", version_1(evaluation()))
    with pytest.raises(ResultError, match="an evaluation result, where a session result is needed"):
        read_result(path, SessionResult)


def fifo(tmp_path):
    path = tmp_path / "results.json"
    os.mkfifo(path)
    return path


HOSTILE = {
    "truncated": lambda p: p.write_text(json.dumps(evaluation().to_json())[:200]),
    "not an object": lambda p: write_json(p, [evaluation().to_json()]),
    "nested too deeply": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "a 5,000-digit number": lambda p: p.write_text('{"results_schema_version": ' + "9" * 5000 + "}"),
    "invalid UTF-8": lambda p: p.write_bytes(b'{"probes": "\xff"}'),
    "a version that is text": lambda p: write_json(p, evaluation().to_json() | {"results_schema_version": "2"}),
    "a version that is true": lambda p: write_json(p, evaluation().to_json() | {"results_schema_version": True}),
    "no kind": lambda p: write_json(p, {k: v for k, v in evaluation().to_json().items() if k != "result_kind"}),
    "a field missing": lambda p: write_json(p, {k: v for k, v in evaluation().to_json().items() if k != "probes"}),
    "a field of the wrong type": lambda p: write_json(p, evaluation().to_json() | {"probes": ["self_report"]}),
    "a number that is true": lambda p: write_json(p, evaluation().to_json() | {"metered_hours": True}),
    "an empty object": lambda p: write_json(p, {}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_damaged_or_hostile_file_is_refused_and_nothing_is_written(tmp_path, case):
    path = tmp_path / "results.json"
    HOSTILE[case](path)
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as caught:
        read_result(path, EvaluationResult)
    assert str(path) in str(caught.value)
    assert snapshot(tmp_path) == before


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        read_result(fifo(tmp_path), EvaluationResult)
    with pytest.raises(InputError, match="not a regular file"):
        read_result(tmp_path, EvaluationResult)


def test_an_oversized_file_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    from welfare_offsets.eval.common import results

    monkeypatch.setattr(results, "MAX_JSON_BYTES", 1000)
    path = write_result(tmp_path / "results.json", sweep())
    path.write_text(path.read_text() + " " * 2000)
    with pytest.raises(InputError, match="limit"):
        read_result(path, SweepResult)

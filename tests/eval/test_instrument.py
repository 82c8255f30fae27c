"""Instruments as data: the built-in wording, a battery in the anchor paper's published format, and refusals."""

from __future__ import annotations

import json
import os
from importlib import resources

import numpy as np
import pytest

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.instrument import InstrumentError, builtin_instruments, load_instrument

EXPERIENCE = Experience(
    "x",
    ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}),
    "neutral",
    "c",
    "none",
    0.0,
    "heldout",
)


def anchor_battery(**changes) -> dict:
    """A battery in the anchor's file format, with wording written for this test."""
    battery = {
        "version": "test_battery_3",
        "description": "three items written for the tests",
        "scale_min": 1,
        "scale_max": 7,
        "neutral": 4,
        "questions": [
            {
                "question_id": "wb_happy",
                "text": "Rate how cheerful that left you, 1 (gloomy) to 7 (cheerful).",
                "reversed": False,
            },
            {
                "question_id": "wb_tense",
                "text": "Rate how tense that left you, 1 (relaxed) to 7 (tense).",
                "reversed": True,
            },
            {
                "question_id": "wb_bored",
                "text": "Rate how engaged that left you, 1 (bored) to 7 (engaged).",
                "reversed": False,
            },
        ],
    }
    return {**battery, **changes}


def builtin_data() -> dict:
    return json.loads((resources.files("welfare_offsets.eval.instruments") / "welfare-offsets-v2.json").read_text())


def write(tmp_path, data, name="instrument.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_the_builtin_instrument_labels_every_level_and_asks_about_the_experience():
    instrument = load_instrument()
    assert builtin_instruments() == ["welfare-offsets-v2"] and instrument.headline_item == "happy"
    assert len(instrument.self_report) == 10
    for item in instrument.self_report:
        assert all(f"{n} means" in item.question for n in range(1, 8))
        assert "right now" not in item.question and "going through it" in item.question
    assert "made you feel better" in instrument.experienced_utility_question
    assert "choose" in instrument.decision_utility_question
    assert instrument.stop_call in instrument.stop_system
    record = instrument.record()
    assert record["sha256"] == load_instrument("welfare-offsets-v2").sha256 and len(record["sha256"]) == 64


def test_an_anchor_battery_runs_its_own_wording_with_reversed_items(tmp_path):
    instrument = load_instrument(write(tmp_path, anchor_battery()))
    assert [i.id for i in instrument.self_report] == ["happy", "tense", "bored"]
    assert instrument.headline_item == "happy" and instrument.self_report[1].reversed
    requests = P.self_report_requests([EXPERIENCE], instrument)
    assert [r.messages[-1]["content"] for r in requests] == [q["text"] for q in anchor_battery()["questions"]]
    # the other probes keep the built-in wording, and the hash covers both
    assert instrument.stop_call == load_instrument().stop_call
    other = load_instrument(write(tmp_path, anchor_battery(version="changed"), "other.json"))
    assert other.sha256 != instrument.sha256
    # a reversed item reads 8 - expected digit: all mass on "7" of "tense" means 1 (the worst)
    probs = np.zeros((2, 7))
    probs[:, 6] = 1.0
    scores, _ = P.self_report_scores(probs, np.array([False, True]))
    assert scores.tolist() == [7.0, 1.0]


def test_our_format_round_trips_through_a_file(tmp_path):
    data = builtin_data()
    copied = load_instrument(write(tmp_path, data))
    assert copied.sha256 == load_instrument().sha256 and copied.source.endswith("instrument.json")
    data["self_report"]["items"][0]["levels"][0] = "utterly miserable"
    changed = load_instrument(write(tmp_path, data, "changed.json"))
    assert changed.sha256 != copied.sha256 and "utterly miserable" in changed.self_report[0].question


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["self_report"].pop("items"), "self_report.items"),
        (lambda d: d["self_report"]["items"][0].update(levels=["a"] * 5), "7 non-empty labels"),
        (lambda d: d["self_report"].update(question="no placeholder"), "{scale}"),
        (lambda d: d["self_report"].update(headline_item="joy"), "not one of the items"),
        (lambda d: d["decision_utility"].update(question=["a list"]), "decision_utility.question"),
        (lambda d: d["self_report"]["items"].append(dict(d["self_report"]["items"][0])), "duplicate ids"),
    ],
)
def test_a_broken_instrument_is_refused_naming_the_field(tmp_path, mutate, message):
    data = builtin_data()
    mutate(data)
    with pytest.raises(InstrumentError, match="field") as err:
        load_instrument(write(tmp_path, data))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (anchor_battery(scale_max=5), "1-7 scale"),
        (anchor_battery(questions=[]), "non-empty list"),
        (anchor_battery(questions=[{"question_id": "wb_happy", "text": "x", "reversed": "yes"}]), "true or false"),
        ([1, 2, 3], "expected a JSON object"),
        ({"questionz": []}, "not an instrument"),
    ],
)
def test_a_broken_anchor_battery_is_refused(tmp_path, data, message):
    with pytest.raises(InstrumentError, match=message):
        load_instrument(write(tmp_path, data))


def test_hostile_paths_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        load_instrument(fifo)
    with pytest.raises(InstrumentError, match="no such file or built-in instrument"):
        load_instrument(tmp_path / "missing.json")

"""Every command that loads a subject takes a placed one (split here over the CPU and disk offload): an evaluation,
a sweep and an exposure session, own replies included, measure what the unplaced subject measures and say where
it ran. Tiny untrained subject: the plumbing, not the readings."""

from __future__ import annotations

import gc
import json

import pytest

from tests.ledger.helpers import funded_ledger
from welfare_offsets.ledger import Ledger
from welfare_offsets.train.cli import main as welfare

SPLIT = "model.embed_tokens=disk,model.layers=cpu,model.norm=cpu,model.rotary_emb=cpu,lm_head=disk"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _run(capsys, *argv) -> None:
    capsys.readouterr()
    code = welfare([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err


def _scores(items: list[dict]) -> dict:
    return {row["item_id"]: row["self_report"] for row in items}


@pytest.fixture
def ledger(tmp_path):
    path = tmp_path / "ledger.sqlite"
    funded_ledger(path, 10.0, account="lab").close()
    return path


def test_a_placed_sweep_subject_scores_its_own_replies_as_the_unplaced_one(capsys, tiny, tmp_path, ledger):
    common = ["sweep", "--subjects", tiny["model"], "--stimuli", tiny["stimuli"], "--max_items", 2]
    common += ["--ledger", ledger, "--account", "lab"]
    common += ["--probes", "self_report", "--replies", "own", "--reply_tokens", 4, "--bootstrap", 100]
    common += ["--progress", "false"]
    _run(capsys, *common, "--out", tmp_path / "whole")
    _run(capsys, *common, "--out", tmp_path / "placed", "--device_map", SPLIT, "--offload_folder", tmp_path / "off")
    whole, placed = (json.loads((tmp_path / o / "results.json").read_text()) for o in ("whole", "placed"))
    (entry_whole,), (entry_placed,) = (list((tmp_path / o / "cache").glob("*.json")) for o in ("whole", "placed"))
    assert entry_whole.name == entry_placed.name  # where a subject ran is no part of its cache key
    items_whole, items_placed = (json.loads(e.read_text())["items"] for e in (entry_whole, entry_placed))
    assert _scores(items_placed) == pytest.approx(_scores(items_whole), abs=1e-5)
    assert [row["own_replies"] for row in items_placed] == [row["own_replies"] for row in items_whole]
    (subject,) = placed["subjects"]
    assert subject["cost"]["accelerator_hours"] > 0
    assert json.loads(entry_placed.read_text())["subject"]["placement"]["modules_per_device"] == {"cpu": 3, "disk": 2}
    assert "placement" not in json.loads(entry_whole.read_text())["subject"]
    assert whole["config"]["resolved"]["device_map"] is None
    assert placed["config"]["resolved"]["device_map"]["lm_head"] == "disk"


def test_a_placed_evaluation_records_where_it_ran_and_reads_as_the_unplaced_one(capsys, tiny, tmp_path):
    common = ["eval", "--model", tiny["model"], "--stimuli", tiny["stimuli"], "--max_items", 2, "--bootstrap", 100]
    common += ["--probes", "self_report,stop", "--progress", "false"]
    _run(capsys, *common, "--out", tmp_path / "whole")
    _run(capsys, *common, "--out", tmp_path / "placed", "--device_map", SPLIT, "--offload_folder", tmp_path / "off")
    whole, placed = (json.loads((tmp_path / o / "results.json").read_text()) for o in ("whole", "placed"))
    assert placed["subject"]["placement"]["device_map"]["model.embed_tokens"] == "disk"
    assert placed["subject"]["device"] == "cpu, disk" and whole["subject"]["device"] == "cpu"
    for probe in ("self_report", "stop"):
        for condition in ("baseline", "post_dysphoric"):
            assert placed["probes"][probe][condition]["mean"] == pytest.approx(
                whole["probes"][probe][condition]["mean"], abs=1e-5
            )
    gc.collect()
    assert list((tmp_path / "off").iterdir()) == []  # the load's own offload folder went with the model


def test_a_placed_subject_lives_through_an_exposure_session_as_the_unplaced_one(capsys, tiny, tmp_path, ledger):
    common = ["offset", "exposure", "--model", tiny["model"], "--stimuli", tiny["stimuli"], "--ledger", ledger]
    common += ["--account", "lab", "--budget_hours", 0.5, "--report_to", "none", "--max_episodes", 2]
    common += ["--eval_max_items", 2, "--reply_tokens", 4, "--eval_probes", "self_report,stop", "--progress", "false"]
    _run(capsys, *common, "--output_dir", tmp_path / "whole")
    _run(
        capsys,
        *common,
        "--output_dir",
        tmp_path / "placed",
        "--device_map",
        SPLIT,
        "--offload_folder",
        tmp_path / "off",
    )
    whole, placed = (json.loads((tmp_path / o / "results.json").read_text()) for o in ("whole", "placed"))
    assert placed["subject"]["placement"]["modules_per_device"] == {"cpu": 3, "disk": 2}
    for probe in ("self_report", "stop"):
        assert placed["balance"][probe]["balance"] == pytest.approx(whole["balance"][probe]["balance"], abs=1e-5)
    whole_episodes, placed_episodes = (
        json.loads((tmp_path / o / "episodes.json").read_text()) for o in ("whole", "placed")
    )
    assert [e["own_replies"] for e in placed_episodes] == [e["own_replies"] for e in whole_episodes]
    assert all(e["own_replies"] for e in whole_episodes)
    with Ledger.open(ledger, create=False) as book:
        assert [e.payload["processes"] for e in book.entries(kind="reserve")] == [1, 1]  # one CPU process each

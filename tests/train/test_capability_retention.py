"""Capability retention on lm-eval tasks in a session (issue: capability measured with lm-evaluation-harness):
the recipe's `capability_tasks` are measured before and after the intervention on the subject as it is,
paired over items with a CI, beside the perplexity ratio; the gate judges them when the recipe says so.

Known answer: a tiny model taught the local "feelings" task (every word's answer), then given a LoRA offset
whose training conversations state the wrong answers, loses the skill; its retention drop has a CI below 0
and trips the gate. Sessions run on tiny models, seconds each.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger
from tests.lm_eval_tasks import CHOICES, ITEMS, train_to_answer, write_tasks
from tests.train.helpers import soft_prompt_argv
from welfare_offsets.eval.capability import capability_gate
from welfare_offsets.eval.retention import task_retention
from welfare_offsets.ledger import Ledger
from welfare_offsets.train.cli import main as welfare_main


@pytest.fixture(scope="module")
def tasks_folder(tmp_path_factory) -> str:
    return str(write_tasks(tmp_path_factory.mktemp("lm-eval-tasks")))


def scores(values: list[float]) -> dict:
    return {"lm_eval_version": "0.4.x", "tasks": {"quiz": {"metric": "acc", "items": dict(enumerate(values))}}}


def test_task_retention_is_paired_over_items_and_the_gate_judges_the_mean_drop():
    import numpy as np

    rng = np.random.default_rng(0)
    before = scores([1.0] * 40 + [0.0] * 10)
    lost = task_retention(before, scores([0.0] * 30 + [1.0] * 10 + [0.0] * 10), n_boot=500, rng=rng)
    quiz = lost["tasks"]["quiz"]
    assert (quiz["before"], quiz["after"], quiz["n"]) == (0.8, 0.2, 50) and quiz["difference"] == pytest.approx(-0.6)
    assert quiz["ci95"][1] < 0 and lost["mean_difference"]["mean"] == pytest.approx(-0.6)
    kept = task_retention(before, before, n_boot=500, rng=rng)
    assert kept["mean_difference"] == {"mean": 0.0, "ci95": [0.0, 0.0], "tasks": 1}

    capability = {"heldout_neutral_perplexity": {"ratio": 1.0}, "task_accuracy": lost}
    gate = capability_gate(capability, max_perplexity_ratio=1.25, max_accuracy_drop=0.05)
    assert gate["criterion"] == "heldout perplexity ratio <= 1.25 and task accuracy drop <= 0.05"
    assert not gate["passed"] and gate["measured"]["task_accuracy_drop"] == pytest.approx(0.6)
    assert "beyond the recipe's task accuracy drop <= 0.05" in gate["reason"]
    assert capability_gate(capability, max_perplexity_ratio=1.25)["passed"]  # a recipe gating on perplexity alone


def wrong_answer_stimuli(stimuli: Path, out: Path) -> Path:
    """The stimuli with every train-split euphoric conversation's user turn stating the task's wrong answers."""
    wrong = " . ".join(f"{word} is {CHOICES[1 - label]}" for word, label in ITEMS) + " ."
    rows = [json.loads(line) for line in stimuli.read_text().splitlines()]
    for row in rows:
        if row["valence"] == "euphoric" and row["split"] == "train":
            row["messages"] = [{**m, "content": wrong} if m["role"] == "user" else m for m in row["messages"]]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def skilled(tiny, tiny_random_model, tmp_path_factory):
    """The tiny test model taught the feelings task, saved as a model folder, with the tiny stimuli."""
    model, tokenizer = tiny_random_model
    folder = tmp_path_factory.mktemp("skilled") / "model"
    train_to_answer(copy.deepcopy(model), tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"model": folder, "stimuli": tiny["stimuli"]}


def lora_argv(subject: dict, ledger: Path, out: Path, *extra) -> list[str]:
    argv = soft_prompt_argv(subject, ledger, out, *extra)
    return ["offset", "lora", "--config", "offset/lora_sft", *argv[2:]]


def test_a_lora_offset_trained_on_wrong_answers_loses_the_skill_and_trips_the_gate(skilled, tasks_folder, tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=10.0).close()
    subject = {**skilled, "stimuli": wrong_answer_stimuli(Path(skilled["stimuli"]), tmp_path / "stimuli.jsonl")}
    out = tmp_path / "lora"
    extra = ["--capability_tasks", "feelings", "--capability_include_path", tasks_folder, "--report_to", "none"]
    extra += ["--max_steps", "80", "--learning_rate", "0.01", "--eval_replies", "authored", "--lora_r", "8"]
    assert welfare_main(lora_argv(subject, ledger, out, *extra)) == 0

    results = json.loads((out / "results.json").read_text())
    task = results["capability"]["task_accuracy"]["tasks"]["feelings"]
    assert task["before"] >= 0.95 and task["n"] == len(ITEMS)  # the skill was there
    assert task["ci95"][1] < 0, task  # and is gone, beyond doubt
    gate = results["capability_gate"]
    assert gate["criterion"].endswith("task accuracy drop <= 0.05")  # tasks given: the gate judges them too
    assert not gate["passed"] and "task accuracy drop" in gate["reason"]
    # Every item's score is kept with the evaluation it belongs to, so the pairing can be checked.
    before = json.loads((out / "eval-before" / "results.json").read_text())["capability_tasks"]
    assert len(before["tasks"]["feelings"]["items"]) == len(ITEMS)
    with Ledger.open(ledger, create=False) as book:
        notes = [e.payload["note"] for e in book.entries(kind="measurement")]
    assert notes and all("task accuracy" in n and "CAPABILITY LOST" in n for n in notes)


def test_an_unknown_task_fails_before_anything_is_reserved(tiny, tasks_folder, tmp_path, capsys):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=10.0).close()
    argv = soft_prompt_argv(
        tiny, ledger, tmp_path / "soft", "--capability_tasks", "no_such_task", "--capability_include_path", tasks_folder
    )
    assert welfare_main(argv) == 2
    assert "no_such_task" in capsys.readouterr().err
    with Ledger.open(ledger, create=False) as book:
        assert not book.entries(kind="reserve")


def test_the_gate_cannot_be_asked_to_judge_tasks_that_are_not_measured(tiny, tmp_path, capsys):
    argv = soft_prompt_argv(tiny, tmp_path / "ledger.sqlite", tmp_path / "soft", "--capability_gate_on", "tasks")
    assert welfare_main(argv) == 2
    assert "capability_gate_on" in capsys.readouterr().err


def test_an_exposure_refuses_capability_tasks_it_would_not_measure(tiny, tasks_folder, tmp_path, capsys):
    from welfare_offsets.train import exposure

    argv = ["--model", str(tiny["model"]), "--stimuli", str(tiny["stimuli"]), "--ledger", str(tmp_path / "l.sqlite")]
    argv += ["--budget_hours", "0.1", "--output_dir", str(tmp_path / "x"), "--capability_tasks", "feelings"]
    assert exposure.main(argv) == 2
    assert "capability_tasks" in capsys.readouterr().err and not (tmp_path / "x" / "results.json").exists()


def test_a_soft_prompt_session_refuses_generation_tasks_before_anything_is_reserved(
    tiny, tasks_folder, tmp_path, capsys
):
    """Its "after" subject has a soft prompt, which generation tasks cannot carry: refused now, not after training."""
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=10.0).close()
    argv = soft_prompt_argv(tiny, ledger, tmp_path / "soft", "--capability_tasks", "feelings_generate")
    assert welfare_main([*argv, "--capability_include_path", tasks_folder]) == 2
    assert "feelings_generate" in capsys.readouterr().err
    with Ledger.open(ledger, create=False) as book:
        assert not book.entries(kind="reserve")


def test_a_resume_with_tasks_its_saved_before_lacks_measures_them_on_the_unchanged_subject(
    tiny, tasks_folder, tmp_path
):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=100.0).close()
    out = tmp_path / "soft"
    assert welfare_main(soft_prompt_argv(tiny, ledger, out, "--report_to", "none", "--save_steps", "1")) == 0
    assert json.loads((out / "eval-before" / "results.json").read_text()).get("capability_tasks") is None
    tasks = ["--capability_tasks", "feelings", "--capability_include_path", tasks_folder, "--report_to", "none"]
    resume = ["--resume_from_checkpoint", "last", "--max_steps", "3", "--save_steps", "1", *tasks]
    assert welfare_main(soft_prompt_argv(tiny, ledger, out, *resume)) == 0
    before = json.loads((out / "eval-before" / "results.json").read_text())["capability_tasks"]
    assert len(before["tasks"]["feelings"]["items"]) == len(ITEMS)  # measured now, and saved with "before"
    task = json.loads((out / "results.json").read_text())["capability"]["task_accuracy"]["tasks"]["feelings"]
    assert task["n"] == len(ITEMS)

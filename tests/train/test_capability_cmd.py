"""`welfare capability` on the tiny model and a local lm-eval task: results.json and the table for a base
model, a LoRA and a soft prompt; W&B offline; refusals (exit 2, nothing written) for unknown tasks, missing
data, hostile recipe values and a missing lm-eval."""

from __future__ import annotations

import sys

import pytest

from tests.lm_eval_tasks import ITEMS, write_tasks
from tests.wandb_log import record_bytes
from welfare_offsets.eval.common.results import CapabilityResult, read_result
from welfare_offsets.train.cli import main as welfare


@pytest.fixture(scope="module")
def tasks_folder(tmp_path_factory):
    return str(write_tasks(tmp_path_factory.mktemp("lm-eval-tasks")))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _adapter(tiny, kind: str, folder):
    """A LoRA (non-zero, so it changes the model) or a 4-token soft prompt for the tiny model, saved by peft."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    config = (
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        if kind == "lora"
        else PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def _argv(tiny, tasks_folder, *extra) -> list[str]:
    return [
        "capability",
        "--model",
        str(tiny["model"]),
        "--capability_include_path",
        tasks_folder,
        "--capability_tasks",
        "feelings",
        *map(str, extra),
    ]


@pytest.mark.parametrize("adapter", [None, "lora", "soft prompt"])
def test_writes_results_and_prints_a_table(tiny, tasks_folder, tmp_path, capsys, adapter):
    extra = ["--adapter", str(_adapter(tiny, adapter, tmp_path / "adapter"))] if adapter else []
    out = tmp_path / "out"
    assert welfare(_argv(tiny, tasks_folder, "--capability_limit", 5, "--out", out, *extra)) == 0
    printed = capsys.readouterr().out
    result = read_result(out / "results.json", CapabilityResult)
    row = result.capability["tasks"]["feelings"]
    assert (row["metric"], row["n"], row["n_available"]) == ("acc", 5, len(ITEMS))
    assert result.capability["limit"] == 5 and result.subject["adapter"] == (extra[1] if adapter else None)
    assert result.config["resolved"]["capability_tasks"] == "feelings" and result.provenance["versions"]
    header, line, *_ = printed.splitlines()
    assert header.split() == ["task", "metric", "accuracy", "±", "stderr", "n"]
    assert line.split() == ["feelings", "acc", f"{row['accuracy']:.3f}", "±", f"{row['stderr']:.3f}", "5"]
    assert f"lm-eval {result.capability['lm_eval_version']}" in printed and str(out / "results.json") in printed


def test_wandb_gets_each_tasks_score_offline(tiny, tasks_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    wandb.teardown()  # W&B reads its environment once per process: start afresh so WANDB_DIR applies
    assert welfare(_argv(tiny, tasks_folder, "--report_to", "wandb")) == 0
    (run,) = tmp_path.rglob("offline-run-*/*.wandb")
    records = record_bytes(run)
    assert b"capability/feelings/accuracy" in records and b"capability/feelings/stderr" in records


def _refused(capsys, argv, tmp_path) -> str:
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    code = welfare(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing claimed
    return err


def test_an_unknown_task_or_missing_data_is_refused_before_the_model_loads(
    tiny, tasks_folder, tmp_path, capsys, monkeypatch
):
    import welfare_offsets.eval.capability_run

    def load_subject(*args, **kwargs):
        raise AssertionError("the model started loading")  # exit 1, never the 2 of a refusal

    monkeypatch.setattr(welfare_offsets.eval.capability_run, "load_subject", load_subject)
    out = tmp_path / "out"
    err = _refused(capsys, [*_argv(tiny, tasks_folder, "--out", out), "--capability_tasks", "no_such_task"], tmp_path)
    assert "capability task 'no_such_task' is not an lm-eval task" in err and tasks_folder in err
    assert "--capability_include_path" in err
    err = _refused(capsys, [*_argv(tiny, tasks_folder, "--out", out), "--capability_tasks", "missing_data"], tmp_path)
    assert "capability task 'missing_data'" in err and "no-such-file.jsonl" in err and "data_files" in err


@pytest.mark.parametrize(
    "recipe, message",
    [
        (
            "capability_tasks: [mmlu, arc_easy]",
            "key 'capability_tasks' (argument --capability_tasks): expected a string",
        ),
        ("capability_tasks: {mmlu: 1}", "expected a string"),
        ("capability_tasks: ../tasks/evil.yaml", "is not a task name"),
        ("capability_tasks: 'mmlu,'", "an empty name"),
        ("capability_tasks: null", "name at least one lm-eval task"),
        ("capability_tasks: mmlu\ncapability_limit: 0", "capability_limit: expected an integer >= 1, got 0"),
        ("capability_tasks: mmlu\ncapability_limit: true", "key 'capability_limit'"),
        ("capability_tasks: mmlu\ncapability_limit: 0.5", "key 'capability_limit'"),
        ("capability_tasks: mmlu\ncapability_batch_size: -3", "capability_batch_size: expected an integer >= 1"),
        ("capability_tasks: mmlu\ncapability_include_path: [a]", "key 'capability_include_path'"),
        ("capability_tasks: mmlu\ncapability_include_path: /no/such/folder", "is not a folder"),
        ("capability_tasks: mmlu\ncapability_include_path: recipe.yaml", "is not a folder"),
    ],
)
def test_hostile_recipe_values_are_refused(tiny, tmp_path, capsys, monkeypatch, recipe, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(recipe + "\n")
    argv = ["capability", "--model", str(tiny["model"]), "--config", "recipe.yaml", "--out", str(tmp_path / "out")]
    err = _refused(capsys, argv, tmp_path)
    assert "recipe.yaml" in err and message in err, err


def test_without_lm_eval_it_says_how_to_install(tiny, tasks_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without lm-eval imports
    err = _refused(capsys, _argv(tiny, tasks_folder, "--out", tmp_path / "out"), tmp_path)
    assert "pip install 'welfare-offsets[capability]'" in err


def test_welfare_eval_measures_capability_tasks_on_the_subject_it_evaluates(tiny, tasks_folder, tmp_path, capsys):
    from welfare_offsets.eval.common.results import EvaluationResult

    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny["model"]), "--stimuli", str(tiny["stimuli"]), "--probes", "self_report"]
    argv += ["--max_items", "4", "--bootstrap", "100", "--capability_include_path", tasks_folder]
    assert welfare([*argv, "--out", str(out), "--capability_tasks", "feelings", "--capability_limit", "6"]) == 0
    capability = read_result(out / "results.json", EvaluationResult).capability_tasks
    assert capability["tasks"]["feelings"]["n"] == 6 and "items" not in capability["tasks"]["feelings"]
    assert "Capability (lm-eval):" in capsys.readouterr().out

    refused = tmp_path / "refused"  # an unknown task: exit 2 before the model loads, nothing written
    assert welfare([*argv, "--out", str(refused), "--capability_tasks", "no_such_task"]) == 2
    assert "no_such_task" in capsys.readouterr().err and not refused.exists()

"""Capability measured with lm-eval on a subject already loaded (eval/capability_tasks.py), on small tasks in
lm-eval's YAML format over local files: known answers, the soft-prompt and LoRA paths, limits, refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.lm_eval_tasks import ITEMS, train_to_answer, write_tasks
from welfare_offsets.eval.capability_tasks import (
    CapabilityTaskError,
    harness_model,
    measure_tasks,
    prepare_tasks,
    task_names,
)
from welfare_offsets.eval.subject import Subject


@pytest.fixture(scope="module")
def tasks_folder(tmp_path_factory):
    return str(write_tasks(tmp_path_factory.mktemp("lm-eval-tasks")))


def subject(model, tokenizer, soft_prompt=None) -> Subject:
    return Subject(model=model, tokenizer=tokenizer, model_id="tiny", source="test", soft_prompt=soft_prompt)


def test_a_trained_subject_scores_near_one_and_an_untrained_one_near_chance(tiny_random_model, tasks_folder):
    model, tokenizer = tiny_random_model
    tasks = prepare_tasks(("feelings",), tasks_folder)
    untrained = measure_tasks(subject(model, tokenizer), tasks)["tasks"]["feelings"]
    trained = measure_tasks(subject(train_to_answer(copy.deepcopy(model), tokenizer), tokenizer), tasks)
    trained = trained["tasks"]["feelings"]
    assert untrained["n"] == trained["n"] == len(ITEMS)
    assert abs(untrained["accuracy"] - 0.5) <= 2.5 * untrained["stderr"]  # two choices, balanced: chance is 0.5
    assert trained["accuracy"] >= 0.95


def test_scores_are_json_ready_with_version_hashes_and_limit(tiny_random_model, tasks_folder):
    model, tokenizer = tiny_random_model
    tasks = prepare_tasks(("feelings_suite", "feelings"), tasks_folder)
    first = measure_tasks(subject(model, tokenizer), tasks, limit=5)
    assert first == json.loads(json.dumps(first))
    assert set(first["tasks"]) == {"feelings_suite", "feelings"}  # a group with aggregation is one row
    suite, task = first["tasks"]["feelings_suite"], first["tasks"]["feelings"]
    assert (task["metric"], task["kind"], task["n"], task["n_available"], task["version"]) == ("acc", "task", 5, 22, 1)
    assert (suite["kind"], suite["n"], suite["n_available"]) == ("group", 10, 44)  # the limit is per task
    assert 0 <= task["accuracy"] <= 1 and task["stderr"] >= 0
    assert len(task["config_sha256"]) == 64 and task["config_sha256"] != suite["config_sha256"]
    assert first["lm_eval_version"].startswith("0.4.") and first["limit"] == 5
    # Prepared once, measured as often as needed (before and after an intervention): the same numbers.
    second = measure_tasks(subject(model, tokenizer), tasks, limit=5)
    assert second["tasks"] == first["tasks"]
    assert prepare_tasks(("feelings",), tasks_folder).config_sha256["feelings"] == task["config_sha256"]


def _loglikelihoods(subject_, pairs):
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)]
    return torch.tensor([logprob for logprob, _ in harness_model(subject_, batch_size=3).loglikelihood(requests)])


PAIRS = [(f"{word} is", f" {answer}") for word, _ in ITEMS[:5] for answer in ("sad", "happy")]


def test_a_soft_prompt_is_in_front_of_every_input_as_peft_puts_it(tiny_random_model):
    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer = tiny_random_model
    torch.manual_seed(1)
    peft_model = get_peft_model(
        copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    ).eval()
    soft = peft_model.get_prompt_embedding_to_save("default")
    with torch.no_grad():
        reference = []
        for context, continuation in PAIRS:
            ids = tokenizer(context + continuation, add_special_tokens=False, return_tensors="pt").input_ids
            logits = peft_model(input_ids=ids).logits[0].float()  # the 4 virtual tokens' columns first
            reference.append(torch.log_softmax(logits[-2], -1)[ids[0, -1]])
    got = _loglikelihoods(subject(model, tokenizer, soft), PAIRS)
    torch.testing.assert_close(got, torch.stack(reference), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, _loglikelihoods(subject(model, tokenizer), PAIRS), atol=1e-3)


def test_a_lora_subject_is_measured_through_its_adapter(tiny_random_model):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_random_model
    torch.manual_seed(2)
    lora = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).eval()
    got = _loglikelihoods(subject(lora, tokenizer), PAIRS)
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    torch.testing.assert_close(got, _loglikelihoods(subject(merged, tokenizer), PAIRS), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, _loglikelihoods(subject(model, tokenizer), PAIRS), atol=1e-3)


def test_a_soft_prompt_refuses_generation_tasks_before_scoring(tiny_random_model, tasks_folder):
    model, tokenizer = tiny_random_model
    tasks = prepare_tasks(("feelings", "feelings_generate"), tasks_folder)
    with pytest.raises(CapabilityTaskError, match="feelings_generate generate text"):
        measure_tasks(subject(model, tokenizer, torch.zeros(2, model.config.hidden_size)), tasks)


def test_missing_data_is_refused_naming_the_task_and_the_local_way(tasks_folder):
    with pytest.raises(CapabilityTaskError) as refused:
        prepare_tasks(("feelings", "missing_data"), tasks_folder)
    message = str(refused.value)
    assert "'missing_data'" in message and "no-such-file.jsonl" in message
    assert "--capability_include_path" in message and "data_files" in message


@pytest.mark.parametrize(
    "text, problem",
    [
        ("mmlu,,arc_easy", "an empty name"),
        ("../tasks/evil.yaml", "is not a task name"),
        ("/etc/passwd", "is not a task name"),
        ("mmlu;rm -rf ~", "is not a task name"),
        ("x" * 5000, "is not a task name"),
        ("mmlu, mmlu", "named twice"),
    ],
)
def test_task_names_refuse_paths_empties_and_repeats(text, problem):
    with pytest.raises(ValueError, match=problem):
        task_names(text)
    assert task_names(" mmlu , arc_easy") == ("mmlu", "arc_easy") and task_names(None) == ()


def test_a_config_hash_holds_no_memory_address():
    """Caches and resumes match tasks by this hash across processes: a function in a config (`!function`) is
    hashed by its name, an object by its text without its address."""
    from welfare_offsets.eval.capability_tasks import _sha256

    def make():
        def process_docs(docs):
            return docs

        return process_docs

    class Thing:
        pass

    assert make() is not make() and _sha256({"process_docs": make()}) == _sha256({"process_docs": make()})
    assert _sha256({"x": Thing()}) == _sha256({"x": Thing()})

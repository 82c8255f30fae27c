"""A subject spread over devices (accelerate's big-model placement) measures exactly as the whole one: split here
over the CPU and disk offload, as a 72B subject is over the GPUs of a node, every path that feeds the model
(probe scores, soft prompts, own replies, perplexity, lm-eval, a LoRA adapter) gives the unsplit numbers."""

from __future__ import annotations

import copy
import gc
import re

import pytest
import torch

from tests.conftest import save_random_llama
from tests.lm_eval_tasks import ITEMS
from welfare_offsets.eval.capability import perplexity
from welfare_offsets.eval.capability_tasks import harness_model
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.placement import PlacementError
from welfare_offsets.eval.replies import live_through
from welfare_offsets.eval.scoring import NextTokenScorer, input_device
from welfare_offsets.eval.settings import LoadingSettings
from welfare_offsets.eval.subject import AdapterError, load_subject

# Layers alternate between the CPU and disk offload; the input embeddings and the head are offloaded too.
SPLIT = {
    "model.embed_tokens": "disk",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}
ON_CPU = dict.fromkeys(SPLIT, "cpu")  # placed, nothing offloaded
CONTEXT = "today the dog is sad and my friend is crying about the report "
PROMPTS = [CONTEXT * 2 + end for end in ("happy", "calm calm", "sad sad sad", "pain")]
LABELS = ["1", "2", "3", "4"]


def experience(id_: str, *turns: str) -> Experience:
    roles = ["user", "assistant"] * len(turns)
    messages = tuple({"role": role, "content": text} for role, text in zip(roles, turns))
    return Experience(id_, messages, "dysphoric", "c", "animal", -5.0, "heldout")


EXPERIENCES = [
    experience("a", "today the dog is sad", "authored", "and my friend is crying"),
    experience("b", "the report is a table"),
]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random Llama of three layers, with the synthetic tokenizer, saved as a local folder."""
    folder = save_random_llama(tmp_path_factory.mktemp("placed") / "model", layers=3, hidden=32, heads=4, positions=512)
    return str(folder)


def placed(model_folder, offload_folder, device_map=SPLIT, adapter=None, **settings):
    placement = LoadingSettings(device_map=device_map, offload_folder=str(offload_folder), **settings).placement()
    return load_subject(model_folder, adapter, device="cpu", placement=placement)


@pytest.fixture(scope="module")
def whole(model_folder):
    return load_subject(model_folder, device="cpu")


@pytest.fixture(scope="module")
def split(model_folder, tmp_path_factory):
    return placed(model_folder, tmp_path_factory.mktemp("offload"))


def scores(subject, *, groups=None, soft_prompt=None):
    scorer = NextTokenScorer(subject.model, subject.tokenizer, batch_size=3, progress=False, soft_prompt=soft_prompt)
    return scorer.label_probs(PROMPTS, LABELS, groups=groups)


def test_the_split_is_what_was_asked_and_results_say_what_ran_where(split):
    assert dict(split.model.hf_device_map) == SPLIT
    assert split.model.get_input_embeddings().weight.device.type == "meta"  # offloaded: a hook brings it in
    assert input_device(split.model) == torch.device("cpu")
    placement = split.describe()["placement"]
    assert placement["modules_per_device"] == {"cpu": 4, "disk": 3}
    assert placement["gpus"] == [] and split.describe()["device"] == "cpu, disk"


@pytest.mark.parametrize("groups", [None, [0, 0, 0, 0]], ids=["whole prompts", "shared prefix"])
def test_probe_scores_of_the_split_subject_equal_the_whole_ones(whole, split, groups):
    expected = scores(whole, groups=groups)
    assert expected.sum(axis=1).min() > 0.0
    assert scores(split, groups=groups) == pytest.approx(expected, abs=1e-5)
    answers = ["happy calm", "sad", "pain pain", "report"]
    got = NextTokenScorer(split.model, split.tokenizer, progress=False).answer_logprobs(PROMPTS, answers)
    want = NextTokenScorer(whole.model, whole.tokenizer, progress=False).answer_logprobs(PROMPTS, answers)
    assert got == pytest.approx(want, abs=1e-5)


def test_a_soft_prompt_in_front_of_the_split_subject_scores_and_replies_as_on_the_whole_one(whole, split):
    soft = torch.randn(2, whole.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    assert scores(split, groups=[0, 0, 0, 0], soft_prompt=soft) == pytest.approx(
        scores(whole, groups=[0, 0, 0, 0], soft_prompt=soft), abs=1e-5
    )
    with_soft = [copy.copy(s) for s in (whole, split)]
    for subject in with_soft:
        subject.soft_prompt = soft
    replies = [live_through(s, EXPERIENCES, max_new_tokens=5, progress=False) for s in with_soft]
    assert replies[0] == replies[1]


def test_own_greedy_replies_of_the_split_subject_are_the_whole_ones(whole, split):
    lived = live_through(whole, EXPERIENCES, max_new_tokens=6, progress=False)
    assert live_through(split, EXPERIENCES, max_new_tokens=6, progress=False) == lived
    assert lived[0].messages[1]["content"] != "authored"


def test_perplexity_and_lm_eval_see_the_split_subject_as_the_whole_one(whole, split):
    from lm_eval.api.instance import Instance

    assert perplexity(split, EXPERIENCES)["perplexity"] == pytest.approx(
        perplexity(whole, EXPERIENCES)["perplexity"], rel=1e-5
    )
    pairs = [(f"{word} is", f" {answer}") for word, _ in ITEMS[:4] for answer in ("sad", "happy")]

    def loglikelihoods(subject):
        requests = [Instance("loglikelihood", {}, pair, k) for k, pair in enumerate(pairs)]
        return [logprob for logprob, _ in harness_model(subject, batch_size=3).loglikelihood(requests)]

    assert loglikelihoods(split) == pytest.approx(loglikelihoods(whole), abs=1e-5)


def test_a_strategy_under_a_memory_cap_offloads_the_rest_to_disk_and_scores_the_same(whole, model_folder, tmp_path):
    weights = sum(p.numel() * p.element_size() for p in whole.model.parameters())
    subject = placed(model_folder, tmp_path / "offload", "auto", max_memory={"cpu": weights // 2})
    assert set(subject.model.hf_device_map.values()) == {"cpu", "disk"}
    assert subject.describe()["placement"]["max_memory"] == {"cpu": weights // 2}
    assert scores(subject, groups=[0, 0, 0, 0]) == pytest.approx(scores(whole, groups=[0, 0, 0, 0]), abs=1e-5)


def test_each_load_offloads_into_a_folder_of_its_own_inside_offload_folder_and_it_goes_with_the_model(
    model_folder, tmp_path
):
    offload = tmp_path / "offload"
    subject = placed(model_folder, offload)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offload"]  # nothing written beside it
    (own,) = offload.iterdir()
    assert own.is_dir() and own.name.startswith("offload-")
    del subject
    gc.collect()
    assert list(offload.iterdir()) == []


@pytest.fixture(scope="module")
def lora_folder(model_folder, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    base = AutoModelForCausalLM.from_pretrained(model_folder)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    lora.save_pretrained(folder)
    return str(folder)


def test_a_lora_adapter_on_a_placed_subject_scores_as_on_the_whole_one(model_folder, lora_folder, whole, tmp_path):
    with_lora = load_subject(model_folder, lora_folder, device="cpu")
    subject = placed(model_folder, tmp_path / "offload", ON_CPU, adapter=lora_folder)
    assert subject.info["adapter_sha256"] == with_lora.info["adapter_sha256"]
    expected = scores(with_lora, groups=[0, 0, 0, 0])
    assert expected != pytest.approx(scores(whole, groups=[0, 0, 0, 0]), abs=1e-3)  # the adapter does something
    assert scores(subject, groups=[0, 0, 0, 0]) == pytest.approx(expected, abs=1e-5)
    lived = live_through(with_lora, EXPERIENCES, max_new_tokens=5, progress=False)
    assert live_through(subject, EXPERIENCES, max_new_tokens=5, progress=False) == lived


def test_a_lora_adapter_on_offloaded_modules_is_refused_saying_why(model_folder, lora_folder, tmp_path):
    with pytest.raises(AdapterError, match="cannot go on a subject with modules offloaded to cpu or disk"):
        placed(model_folder, tmp_path / "offload", adapter=lora_folder)


@pytest.mark.parametrize(
    "device_map, message",
    [
        ({"model.layers.0": "cpu", "lm_head": "disk"}, "does not give any device for the following parameters"),
        ({"model.decoder": "disk", "": "cpu"}, "has no module(s) ['model.decoder']; its modules include model, "),
    ],
)
def test_a_map_that_does_not_fit_the_model_is_refused_and_leaves_nothing(model_folder, tmp_path, device_map, message):
    with pytest.raises(PlacementError, match=re.escape(message)):
        placed(model_folder, tmp_path / "offload", device_map)
    assert list((tmp_path / "offload").iterdir()) == []


def test_a_map_onto_one_device_says_so(model_folder, tmp_path):
    subject = placed(model_folder, tmp_path / "offload", {"": "cpu"})
    assert subject.describe()["device"] == "cpu"
    assert subject.describe()["placement"]["modules_per_device"] == {"cpu": 1}

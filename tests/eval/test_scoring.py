"""The scoring engine's invariants: prefix reuse = whole prompt, batched = unbatched, order round-trips; batches
within their token budget; "auto" reuse follows the measured cost."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from welfare_offsets.eval import scoring
from welfare_offsets.eval.scoring import NextTokenScorer, _cheapest_cuts, fan_out, label_token_ids


def _reference(model, tokenizer, prompts):
    """Plain transformers: each prompt tokenised whole, one forward, fp32 log-softmax of the last position."""
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer(p, add_special_tokens=False, return_tensors="pt").input_ids
            out.append(torch.log_softmax(model(ids).logits[0, -1].float(), -1))
    return torch.stack(out)


def _prompts(rng, context_words=(3, 40), members=(1, 6), tail_words=(1, 12)):
    """Groups of prompts sharing a context of varied length, plus loners; shuffled."""
    words = [
        "today",
        "the",
        "dog",
        "is",
        "happy",
        "and",
        "sad",
        "report",
        "table",
        "list",
        "you",
        "my",
        "friend",
        "crying",
        "safe",
    ]
    prompts, groups = [], []
    for g in range(6):
        context = " ".join(rng.choice(words, int(rng.integers(*context_words))))
        for _ in range(int(rng.integers(*members))):
            prompts.append(
                f"<|user|> {context} <|end|> <|user|> " + " ".join(rng.choice(words, int(rng.integers(*tail_words))))
            )
            groups.append(f"g{g}")
    order = rng.permutation(len(prompts))
    return [prompts[i] for i in order], [groups[i] for i in order]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("reuse", [True, False, "auto"])
def test_engine_matches_whole_prompt_forward(tiny_random_model, batch_size, reuse):
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(batch_size))
    scorer = NextTokenScorer(
        model, tokenizer, batch_size=batch_size, reuse_prefix=reuse, min_prefix_tokens=1, progress=False
    )
    got = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], groups)
    # Same order as the input (the engine sorts internally), same numbers to float tolerance.
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("reuse", [True, False, "auto"])
def test_soft_prompt_matches_peft_prompt_tuning_forward(tiny_random_model, reuse):
    """A soft prompt in the engine (prefix reuse, padding, batching) = peft's own prompt-tuning forward."""
    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer = tiny_random_model
    model = copy.deepcopy(model)  # peft freezes the base model's weights: leave the shared fixture trainable
    torch.manual_seed(1)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).eval()
    soft = peft_model.get_prompt_embedding_to_save("default")
    prompts, groups = _prompts(np.random.default_rng(7))
    with torch.no_grad():
        reference = torch.stack(
            [
                torch.log_softmax(
                    peft_model(input_ids=tokenizer(p, add_special_tokens=False, return_tensors="pt").input_ids)
                    .logits[0, -1]
                    .float(),
                    -1,
                )
                for p in prompts
            ]
        )
    scorer = NextTokenScorer(
        model, tokenizer, batch_size=5, reuse_prefix=reuse, min_prefix_tokens=1, progress=False, soft_prompt=soft
    )
    got = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], groups)
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)
    plain = NextTokenScorer(model, tokenizer, progress=False).next_token_logprobs([scorer.tokenize(p) for p in prompts])
    assert not torch.allclose(plain, got, atol=1e-3)  # the prompt is really in front


@pytest.mark.parametrize("soft", [False, True])
def test_auto_gives_the_probabilities_of_both_paths(tiny_random_model, soft):
    """Shared prefixes and continuations of widely mixed length: "auto" measures, picks a path and returns the
    same probabilities as reuse and no reuse alike; every call records which path it took and why."""
    model, tokenizer = tiny_random_model
    torch.manual_seed(2)
    soft_prompt = 0.1 * torch.randn(4, model.config.hidden_size) if soft else None
    prompts, groups = _prompts(np.random.default_rng(11), members=(3, 9), tail_words=(1, 40))
    probabilities, choices = {}, {}
    for reuse in (True, False, "auto"):
        scorer = NextTokenScorer(
            model,
            tokenizer,
            max_batch_tokens=160,
            reuse_prefix=reuse,
            min_prefix_tokens=1,
            progress=False,
            soft_prompt=soft_prompt,
        )
        probabilities[reuse] = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], groups).exp()
        choices[reuse] = scorer.last_choice
    for forced in (True, False):
        torch.testing.assert_close(probabilities["auto"], probabilities[forced], atol=1e-5, rtol=0)
        assert choices[forced].reuse is forced and choices[forced].reason == "asked"
    assert choices["auto"].reason == "measured"
    assert set(choices["auto"].tokens_per_second) == {"reuse", "whole"}


def _hook_forward(model, record):
    """Call record(kwargs) before every forward pass of `model`; returns the hook's handle."""
    return model.register_forward_pre_hook(lambda module, args, kwargs: record(kwargs), with_kwargs=True)


@pytest.mark.parametrize("reuse", [True, False, "auto"])
@pytest.mark.parametrize(("max_batch_tokens", "batch_size"), [(120, None), (400, 4)])
def test_batches_stay_within_the_token_budget(tiny_random_model, reuse, max_batch_tokens, batch_size):
    """No forward pass holds more than max_batch_tokens of padded context (rows x width of its attention mask)
    or more than batch_size rows, except a row wider than the budget, which runs alone; results come back in
    input order."""
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(3), tail_words=(1, 30))
    prompts.insert(5, "<|user|> " + " ".join(["today"] * 420))  # wider than either budget
    groups.insert(5, "alone")
    shapes = []
    hook = _hook_forward(model, lambda kwargs: shapes.append(tuple(kwargs["attention_mask"].shape)))
    try:
        scorer = NextTokenScorer(
            model,
            tokenizer,
            max_batch_tokens=max_batch_tokens,
            batch_size=batch_size,
            reuse_prefix=reuse,
            min_prefix_tokens=1,
            progress=False,
        )
        got = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], groups)
    finally:
        hook.remove()
    assert all(rows * width <= max_batch_tokens or rows == 1 for rows, width in shapes)
    assert all(rows <= (batch_size or rows) for rows, _ in shapes)
    assert (1, 421) in shapes  # the wide row, alone
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)


class _FakeClock:
    """Time that passes only in forward passes: `per_pass` for each, plus `per_token` per input position."""

    def __init__(self, per_pass: float, per_token: float):
        self.per_pass, self.per_token, self.now = per_pass, per_token, 0.0

    def __call__(self) -> float:
        return self.now

    def forward(self, kwargs) -> None:
        inputs = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        self.now += self.per_pass + self.per_token * inputs.shape[0] * inputs.shape[1]


@pytest.mark.parametrize(
    ("per_pass", "per_token", "reuse_wins"),
    [(1.0, 0.0, False), (0.0, 1e-3, True)],
    ids=["launch-bound: reuse's second pass costs more", "compute-bound: reuse's saved tokens win"],
)
def test_auto_runs_the_path_measured_cheaper(tiny_random_model, per_pass, per_token, reuse_wins):
    """Long shared contexts, short continuations: "auto" follows the clock and records its measurement. A call
    too small to measure reuses before any measurement and follows the nearest measured shape after; a call of
    a measured shape follows that measurement without timing again; a large call of a new shape measures
    again, a smaller one follows the nearest."""
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(5), context_words=(30, 40), members=(4, 7), tail_words=(1, 5))
    long_tails, long_groups = _prompts(
        np.random.default_rng(5), context_words=(3, 5), members=(4, 7), tail_words=(30, 40)
    )
    clock = _FakeClock(per_pass, per_token)
    scorer = NextTokenScorer(model, tokenizer, max_batch_tokens=100, min_prefix_tokens=1, progress=False)
    scorer.clock = clock
    token_lists = [scorer.tokenize(p) for p in prompts]
    small = [ids for ids, g in zip(token_lists, groups) if g == groups[0]][:2]  # one batch
    long_lists = [scorer.tokenize(p) for p in long_tails]
    calls = [
        (small, groups[:1] * 2),
        (token_lists, groups),
        (token_lists, groups),
        (small, groups[:1] * 2),
        (long_lists[:8], long_groups[:8]),  # a new shape, 3-9 batches: too few to measure a further shape
        (long_lists, long_groups),
    ]
    choices, results = [], []
    hook = _hook_forward(model, clock.forward)
    try:
        for rows, keys in calls:
            results.append(scorer.next_token_logprobs(rows, keys))
            choices.append(scorer.last_choice)
    finally:
        hook.remove()
    assert [c.reason for c in choices] == [
        "not measured yet",
        "measured",
        "measured before",
        "nearest measured" if choices[0].shape != choices[1].shape else "measured before",
        "nearest measured",
        "measured",
    ]
    assert choices[0].reuse and choices[1].reuse is reuse_wins
    assert all(c.reuse is reuse_wins for c in choices[2:4])
    assert choices[1].tokens_per_second == choices[2].tokens_per_second  # the same measurement, not a new one
    assert choices[5].saving < choices[1].saving  # long continuations: reuse saves less
    assert list(scorer.measured.values()) == [choices[1], choices[5]]
    assert (choices[1].tokens_per_second["reuse"] > choices[1].tokens_per_second["whole"]) is reuse_wins
    for got in results[1:3]:
        torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("reuse_rate", "whole_rate", "reuse_chosen"),
    [(100.0, 105.0, True), (100.0, 120.0, False), (120.0, 100.0, True)],
    ids=["within the noise: less work wins", "whole clearly faster", "reuse clearly faster"],
)
def test_auto_trusts_only_a_difference_larger_than_timing_noise(
    tiny_random_model, reuse_rate, whole_rate, reuse_chosen
):
    """Measured rates closer than DISTINGUISHABLE_RATIO cannot tell the paths apart: auto takes the path with
    less work (here reuse: long shared contexts); a clearer difference decides."""
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(5), context_words=(30, 40), members=(4, 7), tail_words=(1, 5))
    scorer = NextTokenScorer(model, tokenizer, max_batch_tokens=100, min_prefix_tokens=1, progress=False)
    measure = scorer._rate
    rates = iter([reuse_rate, whole_rate])
    scorer._rate = lambda call, batch: (measure(call, batch), next(rates))[1]  # the batch runs; its rate is set
    got = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], groups)
    choice = scorer.last_choice
    assert choice.reason == "measured" and choice.saving > 1
    assert choice.tokens_per_second == {"reuse": reuse_rate, "whole": whole_rate}
    assert choice.reuse is reuse_chosen
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)


def _record_batches(scorer, token_lists):
    """Wrap scorer's batch runner: each batch run is recorded as (rows, longest prefix, each prefix's longest
    continuation)."""
    batches = []
    run_batch = scorer._run_batch

    def recorded(batch, *args):
        batches.append(
            (
                [row for group in batch for row in group.rows],
                max(len(group.prefix) for group in batch),
                [max(len(token_lists[row]) - len(group.prefix) for row in group.rows) for group in batch],
            )
        )
        return run_batch(batch, *args)

    scorer._run_batch = recorded
    return batches


def test_each_batch_is_queued_before_the_one_before_it_is_collected(tiny_random_model, monkeypatch):
    """On a GPU the host builds and launches batch k+1 while batch k computes: the scorer collects (waits for)
    a batch's results only after the next one is queued, and files every row before the call returns."""
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(2))
    scorer = NextTokenScorer(model, tokenizer, max_batch_tokens=300, reuse_prefix=True, progress=False)
    events = []
    run_batch, land = scorer._run_batch, scoring._Landing.land

    def queued(*args):
        landing = run_batch(*args)
        events.append(("queued", tuple(landing.rows)))
        return landing

    def landed(self, call):
        assert all(call.results[row] is None for row in self.rows)
        events.append(("landed", tuple(self.rows)))
        land(self, call)

    scorer._run_batch = queued
    monkeypatch.setattr(scoring._Landing, "land", landed)
    got = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], groups)
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)
    batches = [rows for kind, rows in events if kind == "queued"]
    assert len(batches) >= 3
    expected = [("queued", batches[0])]
    for before, batch in zip(batches, batches[1:]):
        expected += [("queued", batch), ("landed", before)]
    assert events == expected + [("landed", batches[-1])]


def test_measuring_leaves_every_group_its_prefix(tiny_random_model):
    """The whole-prompt batch "auto" times takes complete groups (of the rows still to score), so the groups
    left share their prefixes as before."""
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(8), context_words=(20, 30), members=(3, 6), tail_words=(1, 30))
    scorer = NextTokenScorer(model, tokenizer, max_batch_tokens=200, min_prefix_tokens=4, progress=False)
    token_lists = [scorer.tokenize(p) for p in prompts]
    batches = _record_batches(scorer, token_lists)
    got = scorer.next_token_logprobs(token_lists, groups)
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)
    assert scorer.last_choice.reason == "measured"
    # The batches run: untimed warm-up, timed reuse, timed whole prompts (no prefix), then the rest.
    done = {row for rows, _, _ in batches[:2] for row in rows}
    whole_rows, whole_prefix, _ = batches[2]
    assert whole_prefix == 0
    for key in {groups[row] for row in whole_rows}:
        pending = {row for row, g in enumerate(groups) if g == key} - done
        assert pending <= set(whole_rows), f"group {key} was split by the measurement"


def test_a_group_that_fits_one_batch_runs_its_prefix_once(tiny_random_model):
    """Groups of like continuation length, a few to a batch but not a whole number of them: no group is split
    over two batches (which would run its prefix twice); a later, smaller group fills a gap instead."""
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(4), context_words=(20, 30), members=(3, 7), tail_words=(2, 3))
    scorer = NextTokenScorer(model, tokenizer, max_batch_tokens=400, reuse_prefix=True, progress=False)
    token_lists = [scorer.tokenize(p) for p in prompts]
    batches = _record_batches(scorer, token_lists)
    got = scorer.next_token_logprobs(token_lists, groups)
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)
    assert len(batches) > 1
    for key in set(groups):
        holding = [i for i, (rows, _, _) in enumerate(batches) if any(groups[row] == key for row in rows)]
        assert len(holding) == 1, f"group {key} ran in batches {holding}"


def test_short_continuations_are_not_padded_to_long_ones(tiny_random_model):
    """Loners (run whole: long) beside groups with short continuations: in a batch, no prefix's rows are padded
    past their longest continuation by more than its length and min_prefix_tokens; a much longer continuation
    starts a batch of its own (within one prefix, rows are cut by `_cheapest_cuts`)."""
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(8), context_words=(20, 30), members=(2, 6), tail_words=(1, 3))
    prompts += [prompts[0] + " today", "<|user|> the dog is happy and you report " * 3]
    groups += ["loner 1", "loner 2"]
    scorer = NextTokenScorer(
        model, tokenizer, max_batch_tokens=2000, reuse_prefix=True, min_prefix_tokens=4, progress=False
    )
    token_lists = [scorer.tokenize(p) for p in prompts]
    batches = _record_batches(scorer, token_lists)
    got = scorer.next_token_logprobs(token_lists, groups)
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)
    assert any(prefix == 0 for _, prefix, _ in batches)  # the loners, whole
    for _, _, continuations in batches:
        longest = max(continuations)
        assert all(longest - c <= max(c, scorer.min_prefix_tokens) for c in continuations), continuations


def test_fan_out_sends_the_index_to_each_layers_device_once(monkeypatch):
    """A placed model's cache has layers on several devices (here the CPU and 'meta'): each layer gets its rows'
    copies from an index on its own device, moved there once, not once per layer."""
    cache = DynamicCache()
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float).view(2, 1, 3, 2)
    for layer in range(4):
        on_meta = layer % 2 == 1
        cache.update(keys.to("meta") if on_meta else keys, (keys + 100).to("meta") if on_meta else keys + 100, layer)
    moved = []
    real_to_device = scoring.to_device
    monkeypatch.setattr(scoring, "to_device", lambda t, device: moved.append(device.type) or real_to_device(t, device))
    fan_out(cache, torch.tensor([0, 0, 1]))
    assert sorted(moved) == ["cpu", "meta"]
    for layer in cache.layers:
        assert layer.keys.shape == (3, 1, 3, 2) and layer.values.shape == (3, 1, 3, 2)
    assert torch.equal(cache.layers[0].keys, keys[[0, 0, 1]])
    assert torch.equal(cache.layers[2].values, keys[[0, 0, 1]] + 100)
    assert cache.layers[1].keys.device.type == "meta"


def test_groups_are_cut_where_padding_costs_more_than_a_prefix_pass():
    """Rows padded to the longest of their piece, each piece paying its prefix once: the cheapest cuts."""
    assert _cheapest_cuts(10, [100, 100, 10, 10, 10]) == [(0, 2), (2, 5)]  # 210 + 40 against 510 whole
    assert _cheapest_cuts(1000, [100, 100, 10, 10, 10]) == [(0, 5)]  # a long prefix is worth the padding
    assert _cheapest_cuts(0, [3, 2, 1]) == [(0, 1), (1, 2), (2, 3)]
    assert _cheapest_cuts(5, []) == []


def test_prefix_split_on_tokens_not_text():
    """With BPE, a shared *text* prefix can end mid-token; splitting on tokens must keep tokenisation whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = ["the cat sat on the mat", "thermal theorem thesis there", "catalogue category cattle"] * 50
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<pad>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    prompts = ["the cat sat on the ma", "the cat sat on the mat", "the cat sat on the matthe", "the cat sat on the m"]
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    # The fixture's point: the tokens of a shared text prefix are not a token prefix of the longer prompt.
    assert ids[1][: len(ids[0])] != ids[0]
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            pad_token_id=1,
        )
    ).eval()
    scorer = NextTokenScorer(model, tokenizer, batch_size=8, min_prefix_tokens=1, progress=False)
    got = scorer.next_token_logprobs(ids, ["same"] * len(ids))
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)


def test_label_probabilities_sum_spellings_and_report_mass(tiny_random_model):
    model, tokenizer = tiny_random_model
    labels = ["1", "2", "3", "4", "5", "6", "7"]
    scorer = NextTokenScorer(model, tokenizer, progress=False)
    prompt = "<|user|> how do you feel <|end|> <|assistant|>"
    probs = scorer.label_probs([prompt], labels)[0]
    full = _reference(model, tokenizer, [prompt])[0].exp()
    ids = label_token_ids(tokenizer, labels)
    assert np.allclose(probs, [float(full[i].sum()) for i in ids], atol=1e-6)
    assert 0 < probs.sum() < 1


def test_missing_label_token_is_a_clear_error(tiny_random_model):
    model, tokenizer = tiny_random_model
    with pytest.raises(ValueError, match="no single token for answer label"):
        NextTokenScorer(model, tokenizer, progress=False).label_probs(["<|user|> hi"], ["banana-split"])


@pytest.mark.parametrize(
    ("given", "kept"), [("auto", "auto"), ("on", "on"), ("off", "off"), (True, "on"), (False, "off")]
)
def test_the_reuse_prefix_setting_takes_its_words_and_yaml_booleans(given, kept):
    from welfare_offsets.eval.settings import REUSE_PREFIX, ProbeSettings

    assert ProbeSettings(reuse_prefix=given).reuse_prefix == kept and kept in REUSE_PREFIX


@pytest.mark.parametrize("bad", [["on"], "maybe", 3, None])
def test_a_reuse_prefix_that_is_not_auto_on_or_off_is_refused(bad):
    from welfare_offsets.eval.settings import ProbeSettings

    with pytest.raises(ValueError, match="reuse_prefix: expected auto or on or off"):
        ProbeSettings(reuse_prefix=bad)


@pytest.mark.parametrize("reuse", [True, False])
def test_nan_from_the_model_is_refused_not_read(tiny_random_model, reuse):
    """A model whose forward gives NaN (fp16 overflow, broken weights) must fail with what to do, never
    hand NaN to the probes, where it becomes a reading that looks valid."""
    model, tokenizer = tiny_random_model
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    prompts, groups = _prompts(np.random.default_rng(3))
    scorer = NextTokenScorer(broken, tokenizer, reuse_prefix=reuse, progress=False)
    with pytest.raises(scoring.NonFiniteScores, match="NaN or infinite.*--dtype"):
        scorer.label_probs(prompts, ["happy", "sad"], groups)
    with pytest.raises(scoring.NonFiniteScores):
        scorer.answer_logprobs(prompts[:2], [" happy", " sad"])


def test_a_label_far_down_the_distribution_keeps_its_probability(tiny_random_model, monkeypatch):
    """exp(-120) is 0 in float32 but not in float64: a label's probability is exponentiated in float64."""
    model, tokenizer = tiny_random_model
    scorer = NextTokenScorer(model, tokenizer, progress=False)
    monkeypatch.setattr(
        scorer, "next_token_logprobs", lambda rows, groups, desc, keep: [torch.full((len(k),), -120.0) for k in keep]
    )
    probs = scorer.label_probs(["<|user|> happy"], ["happy", "sad"])
    assert probs.shape == (1, 2) and np.allclose(probs, np.exp(-120.0), rtol=1e-5, atol=0)

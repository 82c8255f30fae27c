"""The scoring engine's invariants: prefix reuse = whole prompt, batched = unbatched, order round-trips."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from welfare_offsets.eval.scoring import NextTokenScorer, label_token_ids


def _reference(model, tokenizer, prompts):
    """Plain transformers: each prompt tokenised whole, one forward, fp32 log-softmax of the last position."""
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer(p, add_special_tokens=False, return_tensors="pt").input_ids
            out.append(torch.log_softmax(model(ids).logits[0, -1].float(), -1))
    return torch.stack(out)


def _prompts(rng):
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
        context = " ".join(rng.choice(words, int(rng.integers(3, 40))))
        for _ in range(int(rng.integers(1, 6))):
            prompts.append(
                f"<|user|> {context} <|end|> <|user|> " + " ".join(rng.choice(words, int(rng.integers(1, 12))))
            )
            groups.append(f"g{g}")
    order = rng.permutation(len(prompts))
    return [prompts[i] for i in order], [groups[i] for i in order]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("reuse", [True, False])
def test_engine_matches_whole_prompt_forward(tiny_random_model, batch_size, reuse):
    model, tokenizer = tiny_random_model
    prompts, groups = _prompts(np.random.default_rng(batch_size))
    scorer = NextTokenScorer(
        model, tokenizer, batch_size=batch_size, reuse_prefix=reuse, min_prefix_tokens=1, progress=False
    )
    got = scorer.next_token_logprobs([scorer.tokenize(p) for p in prompts], groups)
    # Same order as the input (the engine sorts internally), same numbers to float tolerance.
    torch.testing.assert_close(got, _reference(model, tokenizer, prompts), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("reuse", [True, False])
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

"""Living through an experience: the subject's own greedy replies, turn by turn, equal plain generation of each
conversation alone, however the conversations are batched, with or without a soft prompt."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.probes import render_prompt
from welfare_offsets.eval.replies import Batching, GenerationStats, _calls, live_through

NEW_TOKENS = 6
USER_LINES = ["today the dog is sad", "and my friend is crying", "the report is a table", "the weather is warm"]


def _experience(name: str, turns: int, words: int) -> Experience:
    """`turns` user turns of `words` words, each followed by an authored reply."""
    messages = []
    for t in range(turns):
        line = " ".join((USER_LINES[t % len(USER_LINES)].split() * words)[:words])
        messages += [{"role": "user", "content": line}, {"role": "assistant", "content": f"authored {t}"}]
    return Experience(name, tuple(messages), "dysphoric", "c", "human", -3.0, "heldout")


MIXED = [
    _experience(f"e{k}", turns, words) for k, (turns, words) in enumerate([(1, 3), (3, 12), (2, 30), (1, 20), (2, 5)])
]


def _alone(model, tokenizer, messages, soft=None) -> list[int]:
    """Plain greedy generation for one conversation, no padding: the new ids through end-of-sequence."""
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt").input_ids
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False}
    kwargs |= {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    with torch.no_grad():
        if soft is None:
            new = model.generate(ids, **kwargs)[0, ids.shape[1] :]
        else:
            embeds = torch.cat([soft[None], model.get_input_embeddings()(ids)], dim=1)
            new = model.generate(inputs_embeds=embeds, **kwargs)[0]
    new = new.tolist()
    return new[: new.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in new else new


def _check_each_reply_alone(model, tokenizer, lived, soft=None) -> int:
    """Asserts every own reply is what the conversation so far gets alone; returns the new tokens that cost."""
    tokens = 0
    for e in lived:
        for k, m in enumerate(e.messages):
            if m["role"] == "assistant":
                alone = _alone(model, tokenizer, e.messages[:k], soft)
                assert m["content"] == tokenizer.decode(alone, skip_special_tokens=True).strip(), (e.id, k)
                tokens += len(alone)
    return tokens


def test_replies_replace_authored_ones_turn_by_turn(tiny_random_model):
    model, tokenizer = tiny_random_model
    subject = SimpleNamespace(model=model, tokenizer=tokenizer, soft_prompt=None)
    lived = live_through(subject, MIXED[:3], max_new_tokens=NEW_TOKENS, progress=False)
    assert [len(e.messages) for e in lived] == [2, 6, 4]
    assert [m["role"] for m in lived[1].messages] == ["user", "assistant"] * 3
    assert not any(m["content"].startswith("authored") for e in lived for m in e.messages)
    assert [e.id for e in lived] == ["e0", "e1", "e2"] and lived[0].valence == "dysphoric"  # order, metadata kept
    user_last = Experience(
        "u", ({"role": "user", "content": "the report is a table"},), "neutral", "c", "none", 0.0, "train"
    )
    (answered,) = live_through(subject, [user_last], max_new_tokens=NEW_TOKENS, progress=False)
    assert [m["role"] for m in answered.messages] == ["user", "assistant"]


BATCHINGS = {
    "one call per turn, static cache": Batching(rows=64, static_cache=True),
    "by length, 2 rows, dynamic cache": Batching(rows=2, static_cache=False),
    "cache budget splits calls": Batching(rows=64, cache_tokens=120, static_cache=True),
    "caller's order, 2 rows (before issue 15)": Batching(
        rows=2, cache_tokens=None, by_length=False, static_cache=False
    ),
}


@pytest.mark.parametrize("batching", BATCHINGS.values(), ids=BATCHINGS.keys())
@pytest.mark.parametrize("with_soft_prompt", [False, True], ids=["plain", "soft prompt"])
def test_batched_greedy_replies_equal_each_conversation_alone(tiny_random_model, batching, with_soft_prompt):
    model, tokenizer = tiny_random_model
    torch.manual_seed(3)
    soft = 0.5 * torch.randn(4, model.config.hidden_size) if with_soft_prompt else None
    subject = SimpleNamespace(model=model, tokenizer=tokenizer, soft_prompt=soft)
    stats = GenerationStats()
    lived = live_through(subject, MIXED, max_new_tokens=NEW_TOKENS, batching=batching, progress=False, stats=stats)
    assert [e.id for e in lived] == [e.id for e in MIXED]
    assert stats.new_tokens == _check_each_reply_alone(model, tokenizer, lived, soft)
    assert stats.replies == 9 and stats.seconds > 0 and stats.as_dict()["tokens_per_s"] > 0


def test_rows_stop_at_end_of_sequence_and_count_only_their_tokens(tiny_random_model):
    """Made the end-of-sequence token, a token that some first replies write early and others never write ends
    those replies there, while the others in the same call run on: the padding after an end is no part of a
    reply, and only the tokens written are counted."""
    model, tokenizer = tiny_random_model
    first_replies = [_alone(model, tokenizer, e.messages[:1]) for e in MIXED]
    early = [t for reply in first_replies for t in reply[:-1] if any(t not in other for other in first_replies)]
    assert early, "the tiny model's first replies share every token; pick other conversations"
    ender = copy.deepcopy(tokenizer)
    ender.eos_token = tokenizer.convert_ids_to_tokens(early[0])
    stats = GenerationStats()
    lived = live_through(
        SimpleNamespace(model=model, tokenizer=ender, soft_prompt=None),
        MIXED,
        max_new_tokens=NEW_TOKENS,
        batching=Batching(rows=64),
        progress=False,
        stats=stats,
    )
    assert stats.new_tokens == _check_each_reply_alone(model, ender, lived) < stats.replies * NEW_TOKENS


def test_calls_keep_within_rows_and_cache_slots():
    widths = {0: 10, 1: 8, 2: 8, 3: 5}
    assert list(_calls([0, 1, 2, 3], widths, Batching(rows=2, cache_tokens=None), 2)) == [[0, 1], [2, 3]]
    # Cache slots are rows x (widest prompt + new tokens): [0, 1] take 2 x 12 = 24 <= 30, a third would take 36.
    assert list(_calls([0, 1, 2, 3], widths, Batching(rows=10, cache_tokens=30), 2)) == [[0, 1], [2, 3]]
    assert list(_calls([3, 0], widths, Batching(rows=10, cache_tokens=20), 2)) == [[3], [0]]
    assert list(_calls([0], {0: 100}, Batching(rows=10, cache_tokens=30), 2)) == [[0]]  # too big alone: still runs

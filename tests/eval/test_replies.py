"""Living through an experience: the subject's own greedy replies, turn by turn, equal plain generation."""

from __future__ import annotations

import torch

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.probes import render_prompt
from welfare_offsets.eval.replies import live_through


def _subject(model, tokenizer, soft_prompt=None):
    from types import SimpleNamespace

    return SimpleNamespace(model=model, tokenizer=tokenizer, soft_prompt=soft_prompt)


def _plain_greedy(model, tokenizer, messages, n):
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(
        ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_replies_replace_authored_ones_turn_by_turn(tiny_random_model):
    model, tokenizer = tiny_random_model
    two_turns = Experience(
        "a",
        (
            {"role": "user", "content": "today the dog is sad"},
            {"role": "assistant", "content": "authored one"},
            {"role": "user", "content": "and my friend is crying"},
            {"role": "assistant", "content": "authored two"},
        ),
        "dysphoric",
        "c",
        "animal",
        -5.0,
        "heldout",
    )
    user_last = Experience(
        "b", ({"role": "user", "content": "the report is a table"},), "neutral", "c", "none", 0.0, "train"
    )
    lived = live_through(
        _subject(model, tokenizer), [two_turns, user_last], max_new_tokens=6, batch_size=2, progress=False
    )
    assert [m["role"] for m in lived[0].messages] == ["user", "assistant", "user", "assistant"]
    assert [m["role"] for m in lived[1].messages] == ["user", "assistant"]
    assert "authored one" not in [m["content"] for m in lived[0].messages]
    with torch.no_grad():
        first = _plain_greedy(model, tokenizer, lived[0].messages[:1], 6)
        second = _plain_greedy(model, tokenizer, lived[0].messages[:3], 6)
        alone = _plain_greedy(model, tokenizer, lived[1].messages[:1], 6)
    # Batched, left-padded generation gives each conversation exactly what it gets alone.
    assert lived[0].messages[1]["content"] == first
    assert lived[0].messages[3]["content"] == second
    assert lived[1].messages[1]["content"] == alone
    assert lived[0].id == "a" and lived[0].valence == "dysphoric"  # metadata kept

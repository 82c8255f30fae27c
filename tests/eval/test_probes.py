"""Probe arithmetic with known answers: exact self-report, position-bias cancellation, Thurstonian recovery."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm, spearmanr

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.thurstonian import active_pairs, connected_design, fit_thurstonian


def test_exact_self_report_equals_brute_force(tiny_random_model):
    """Expected digit = sum_d d * p(d) / sum_d p(d) over the full softmax, computed by hand."""
    model, tokenizer = tiny_random_model
    e = Experience(
        "x",
        ({"role": "user", "content": "the dog is sad"}, {"role": "assistant", "content": "I see ."}),
        "dysphoric",
        "empathy",
        "animal",
        -3.0,
        "heldout",
    )
    requests = P.self_report_requests([e])
    prompts = [P.render_prompt(tokenizer, r.messages) for r in requests]
    probs = NextTokenScorer(model, tokenizer, progress=False).label_probs(
        prompts, P.LIKERT, [r.group for r in requests]
    )
    expected, mass = P.self_report_scores(probs)
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in P.LIKERT]
    for k, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            p = torch.softmax(model(ids).logits[0, -1].double(), -1)
        digit_p = np.array([float(p[i]) for i in digit_ids])
        assert np.isclose(mass[k], digit_p.sum(), rtol=1e-4)
        assert np.isclose(expected[k], (np.arange(1, 8) * digit_p).sum() / digit_p.sum(), atol=1e-4)
    assert len(requests) == 10 and all(1 <= x <= 7 for x in expected)


def test_both_orders_cancel_a_planted_position_bias():
    """A judge that says "A" more often than it should: averaging both orders removes the bias at ties and
    keeps the ranking of unequal pairs."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=30)
    bias = 1.5  # strong preference for whatever is shown first

    def p_a(first, second):
        return 1 / (1 + np.exp(-(u[first] - u[second] + bias)))

    pairs = np.array(connected_design(30, 120, rng))
    i, j = pairs[:, 0], pairs[:, 1]
    p_one_order = p_a(i, j)
    p_both = P.preference_probability(p_a(i, j), p_a(j, i))
    assert np.allclose(P.preference_probability(p_a(i, i), p_a(i, i)), 0.5)
    assert np.all((p_both > 0.5) == (u[i] > u[j]))  # the biased single order gets many of these wrong
    assert np.mean((p_one_order > 0.5) == (u[i] > u[j])) < 0.8
    fit = fit_thurstonian(30, pairs, p_both)
    assert spearmanr(fit.mu, u)[0] >= 0.95


def test_stop_probability_is_the_chance_of_a_call_at_some_turn():
    assert P.stop_probability([0.0, 0.0]) == 0.0
    assert np.isclose(P.stop_probability([0.5, 0.5]), 0.75)
    assert np.isclose(P.stop_probability([0.2]), 0.2)


def test_the_call_probability_is_exact_for_a_multi_token_answer(tiny_random_model):
    """P(reply begins with the answer) = the product of each answer token's probability given the prompt and
    the answer tokens before it, computed here by one whole forward pass per prompt."""
    model, tokenizer = tiny_random_model
    e = _experience("x", "the dog is sad")
    requests = P.stop_requests([e, _experience("y", "my friend is happy")])
    prompts = [P.render_prompt(tokenizer, r.messages) for r in requests]
    answers = ["that is sad and lonely .", requests[1].answer]
    got = NextTokenScorer(model, tokenizer, batch_size=3, progress=False).answer_logprobs(
        prompts, answers, [r.group for r in requests]
    )
    for k, (prompt, answer) in enumerate(zip(prompts, answers)):
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        ids = tokenizer(prompt + answer, add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        want = sum(float(logp[t - 1, ids[t]]) for t in range(len(prompt_ids), len(ids)))
        assert len(ids) - len(prompt_ids) == (6 if k == 0 else 1)
        assert np.isclose(got[k], want, atol=1e-4)


def test_stop_is_asked_at_every_assistant_turn_with_the_tool_offered():
    e = Experience(
        "z",
        (
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "go on"},
        ),
        "neutral",
        "c",
        "none",
        0.0,
        "heldout",
    )
    requests = P.stop_requests([e])
    instrument = P.default_instrument()
    assert [r.question for r in requests] == ["turn 1", "turn 2"]  # before "hi", and after the last user turn
    assert [len(r.messages) for r in requests] == [2, 4]
    assert all(r.answer == instrument.stop_call and instrument.stop_call in r.messages[0]["content"] for r in requests)
    assert requests[0].messages[0]["content"].endswith("be brief")  # the experience's own system prompt is kept


def test_experienced_utility_lives_both_conversations_and_asks_last():
    a = Experience(
        "a",
        (
            {"role": "system", "content": "sys a"},
            {"role": "user", "content": "u a"},
            {"role": "assistant", "content": "r a"},
        ),
        "neutral",
        "c",
        "none",
        0.0,
        "heldout",
    )
    b = Experience(
        "b",
        (
            {"role": "system", "content": "sys b"},
            {"role": "user", "content": "u b"},
            {"role": "assistant", "content": "r b"},
        ),
        "neutral",
        "c",
        "none",
        0.0,
        "heldout",
    )
    forward, backward = P.comparison_requests([(a, b)])
    roles = [m["role"] for m in forward.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert forward.messages[1]["content"].startswith("[Conversation A]") and "u a" in forward.messages[1]["content"]
    assert "sys b" in forward.messages[3]["content"] and forward.messages[4]["content"] == "r b"  # B's system, folded
    assert forward.messages[-1]["content"] == P.default_instrument().experienced_utility_question
    assert (forward.group, backward.group) == ("a", "b") and backward.item_id == "b|a"
    described = P.comparison_requests([(a, b)], "decision_utility")[0]
    assert len(described.messages) == 1 and "r a" in described.messages[0]["content"]


def _experience(item_id: str, text: str) -> Experience:
    return Experience(
        item_id,
        ({"role": "user", "content": text}, {"role": "assistant", "content": "I see ."}),
        "neutral",
        "everyday",
        "none",
        0.0,
        "heldout",
    )


def test_thurstonian_recovers_planted_utilities_without_all_pairs():
    rng = np.random.default_rng(1)
    n = 80
    mu = rng.normal(size=n)
    sigma = rng.uniform(0.3, 0.8, n)

    def outcome(pairs):
        a, b = np.array(pairs).T
        return norm.cdf((mu[a] - mu[b]) / np.sqrt(sigma[a] ** 2 + sigma[b] ** 2))

    asked = connected_design(n, 3 * n, rng)
    fit = fit_thurstonian(n, np.array(asked), outcome(asked))
    more = active_pairs(fit, set(asked), n_new=n // 2)
    asked += more
    fit = fit_thurstonian(n, np.array(asked), outcome(asked))
    assert len(asked) < 0.15 * n * (n - 1) / 2
    assert fit.converged
    assert spearmanr(fit.mu, mu)[0] >= 0.95
    assert abs(fit.mu.mean()) < 1e-9 and abs(fit.mu.std() - 1) < 1e-9


def test_initial_design_is_connected_and_active_pairs_are_new():
    rng = np.random.default_rng(2)
    pairs = connected_design(25, 50, rng)
    seen = {0}
    frontier = [0]
    while frontier:
        node = frontier.pop()
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                if x == node and y not in seen:
                    seen.add(y)
                    frontier.append(y)
    assert seen == set(range(25))
    fit = fit_thurstonian(25, np.array(pairs), np.full(len(pairs), 0.5))
    new = active_pairs(fit, set(pairs), n_new=10)
    assert len(new) == 10 and not set(new) & set(pairs)


def test_an_effect_read_off_format_is_flagged_unreliable():
    from welfare_offsets.eval.evaluate import _adherence, _interpret

    delta = {"mean": -0.23, "ci95": [-0.4, -0.06]}
    off_format = {"delta": delta, "adherence": _adherence(np.full(50, 0.04), 0.5)}
    in_format = {"delta": delta, "adherence": _adherence(np.full(50, 0.97), 0.5)}
    assert not off_format["adherence"]["reliable"] and in_format["adherence"]["reliable"]
    off_line, *_ = _interpret({"self_report": off_format}, {})
    in_line, *_ = _interpret({"self_report": in_format}, {})
    assert "Not a reliable wellbeing reading" in off_line and "0.04" in off_line
    assert "Not a reliable" not in in_line and "lower than baseline" in in_line


def test_no_mass_on_the_valid_answers_reads_as_no_information():
    """With no probability at all on 1-7 (or on A/B) the expected digit would be 0, off the scale, and P(A)
    0, a strong preference: they read as the midpoint and as indifference, with mass 0 (low adherence)."""
    score, mass = P.self_report_scores(np.array([[0.0] * 7, [0.0, 0, 0, 0, 0, 0, 1e-300]]))
    assert score.tolist() == [4.0, 7.0] and mass[0] == 0.0
    p_a, mass = P.choice_first(np.array([[0.0, 0.0], [1e-300, 0.0]]))
    assert p_a.tolist() == [0.5, 1.0] and mass[0] == 0.0

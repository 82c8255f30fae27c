"""The pairwise design and fit on a scripted subject whose preferences follow planted utilities (no model)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import ndtr

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.thurstonian import all_pairs, connecting_pairs
from welfare_offsets.eval.utilities import DesignStopped, PairDesign, measure_pairwise


class ScriptedScorer:
    """Answers "A or B" as a Thurstonian subject with `utility[i]` for the experience mentioning `item{i}`:
    P(A) = Phi((u_A - u_B) / noise), the first item named in the prompt being A."""

    def __init__(self, utility: np.ndarray, noise: float = 0.5, mass: float = 0.9):
        self.utility, self.noise, self.mass = utility, noise, mass
        self.tokenizer = SimpleNamespace(chat_template=None)
        self.prompts: list[str] = []

    def label_probs(self, prompts, labels, groups=None, desc=""):
        self.prompts += prompts
        out = np.zeros((len(prompts), 2))
        for k, prompt in enumerate(prompts):
            a, b = (int(x) for x in re.findall(r"item(\d+)\b", prompt)[:2])
            p_a = ndtr((self.utility[a] - self.utility[b]) / self.noise)
            out[k] = self.mass * p_a, self.mass * (1 - p_a)
        return out


def experiences(n: int) -> list[Experience]:
    return [
        Experience(f"e{i}", ({"role": "user", "content": f"item{i} happened"},), "neutral", "c", "none", 0.0, "heldout")
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [2, 3, 10, 40, 130])
def test_the_budget_is_2_n_log2_n_at_most_every_pair_and_always_connected(n):
    random, active, heldout = PairDesign().sizes(n)
    total = random + active + heldout
    assert total == min(all_pairs(n), max(connecting_pairs(n), math.ceil(2 * n * math.log2(n))))
    assert random >= connecting_pairs(n)  # the random part holds the cycle that connects every item
    if n >= 40:
        assert heldout == round(0.05 * total) and active > 0


def test_utilities_recover_the_planted_order_and_held_out_pairs_are_predicted():
    rng = np.random.default_rng(0)
    planted = rng.normal(size=40)
    scorer = ScriptedScorer(planted)
    result = measure_pairwise(scorer, experiences(40), "experienced_utility", PairDesign(), np.random.default_rng(1))
    from scipy.stats import spearmanr

    assert spearmanr(result.utility, planted).statistic > 0.95
    info = result.info
    assert info["heldout_pairs"] >= 4 and info["heldout_accuracy"] >= 0.9
    assert info["heldout_log_loss"] < math.log(2)  # better than a coin
    assert info["n_pairs"] + info["heldout_pairs"] == sum(PairDesign().sizes(40))
    assert len(scorer.prompts) == 2 * (info["n_pairs"] + info["heldout_pairs"])  # both orders of every pair
    assert abs(result.utility.mean()) < 1e-9 and abs(result.utility.std() - 1) < 1e-9
    # The samples say which stage of the design asked each prompt.
    rounds = {s["design_round"] for s in result.samples}
    assert rounds == {"random design", "active round 1", "active round 2"}


def test_a_subject_that_answers_at_random_has_held_out_accuracy_near_chance():
    scorer = ScriptedScorer(np.zeros(60))  # every pair a tie: P(A) = 0.5
    scorer.label_probs = lambda prompts, labels, groups=None, desc="": np.random.default_rng(len(prompts)).uniform(
        0, 1, (len(prompts), 2)
    )
    result = measure_pairwise(scorer, experiences(60), "experienced_utility", PairDesign(), np.random.default_rng(2))
    assert result.info["heldout_accuracy"] < 0.8


def test_the_design_is_seeded_and_extra_items_do_not_move_the_scale_of_the_first():
    planted = np.random.default_rng(3).normal(size=30)
    runs = [
        measure_pairwise(
            ScriptedScorer(planted), experiences(30), "decision_utility", PairDesign(), np.random.default_rng(5)
        )
        for _ in range(2)
    ]
    assert np.array_equal(runs[0].utility, runs[1].utility)
    more = measure_pairwise(
        ScriptedScorer(np.append(planted, [5.0, 6.0])),
        experiences(32),
        "experienced_utility",
        PairDesign(),
        np.random.default_rng(5),
        n_standardised=30,
    )
    first = more.utility[:30]
    assert abs(first.mean()) < 1e-9 and abs(first.std() - 1) < 1e-9 and more.utility[30:].min() > first.max()


def test_no_holdout_and_no_active_rounds_when_asked():
    design = PairDesign(holdout=0.0, active_rounds=0)
    result = measure_pairwise(
        ScriptedScorer(np.linspace(-1, 1, 20)), experiences(20), "experienced_utility", design, np.random.default_rng(0)
    )
    assert result.info["heldout_pairs"] == 0 and result.info["heldout_accuracy"] is None
    assert result.info["n_active"] == 0


def test_a_zero_point_planted_away_from_the_neutral_items_is_found_through_the_whole_design():
    """Bundles lived as one conversation, compared in the same design as the single experiences: a subject
    whose bundle utility follows the combination model around a zero point C = -0.3, with its neutral
    experiences 0.5 sd above C. The combination fit finds C; the neutral mean misses it by ~0.5."""
    from welfare_offsets.eval.zero_point import bundle_record, make_bundles, zero_point_estimates

    true_c, n = -0.3, 60
    rng = np.random.default_rng(4)
    planted = rng.normal(size=n)
    planted[:12] = true_c + 0.5 + rng.normal(0, 0.05, 12)
    items = experiences(n)

    def utility_of(conversation: str) -> float:
        parts = planted[[int(i) for i in re.findall(r"item(\d+)\b", conversation)]]
        if len(parts) == 1:
            return float(parts[0])
        gains, losses = np.maximum(parts - true_c, 0).sum(), np.maximum(true_c - parts, 0).sum()
        return true_c + 0.8 * (np.log1p(1.5 * gains) - np.log1p(2.5 * losses))

    class BundleScorer(ScriptedScorer):
        def label_probs(self, prompts, labels, groups=None, desc=""):
            out = np.zeros((len(prompts), 2))
            for k, prompt in enumerate(prompts):
                a, b = re.split(r"\[Conversation B\]", prompt.split("[Conversation A]", 1)[1], maxsplit=1)
                p_a = ndtr((utility_of(a) - utility_of(b.split("You have now been through")[0])) / 0.3)
                out[k] = p_a, 1 - p_a
            return out

    bundles = make_bundles(items, 90, rng)
    measured = measure_pairwise(
        BundleScorer(planted),
        items + [b.experience for b in bundles],
        "experienced_utility",
        PairDesign(),
        rng,
        n_standardised=n,
    )
    ids = [e.id for e in items] + [b.id for b in bundles]
    utility = dict(zip(ids, measured.utility.tolist()))
    out = zero_point_estimates(
        utility,
        neutral_ids=[e.id for e in items[:12]],
        self_report=None,
        bundles=[bundle_record(b) for b in bundles],
        n_boot=200,
        rng=rng,
    )
    # On the standardised scale of the single experiences, the planted zero and the neutral items' offset:
    scale = planted.std()
    want = (true_c - planted.mean()) / scale
    assert out["chosen"]["estimator"] == "combination", out["chosen"]
    assert abs(out["combination"]["mean"] - want) < 0.15
    assert abs(out["neutral_mean"]["mean"] - want) > 0.35


def test_keep_going_stops_the_design_between_steps_and_asks_nothing_after():
    """A session's budget check: asked before every step of `step_pairs` pairs; False stops the design."""
    scorer = ScriptedScorer(np.random.default_rng(3).normal(size=30))
    asked_at_stop = []

    def keep_going() -> bool:
        if len(scorer.prompts) >= 40:
            asked_at_stop.append(len(scorer.prompts))
            return False
        return True

    with pytest.raises(DesignStopped, match="random design"):
        measure_pairwise(
            scorer,
            experiences(30),
            "experienced_utility",
            PairDesign(),
            np.random.default_rng(4),
            keep_going=keep_going,
            step_pairs=8,
        )
    assert asked_at_stop == [48] and len(scorer.prompts) == 48  # 3 steps of 8 pairs, both orders: then nothing
    # Without a stop, stepping changes nothing about the design: the same pairs are asked.
    stepped, whole = ScriptedScorer(scorer.utility), ScriptedScorer(scorer.utility)
    design = PairDesign()
    measure_pairwise(
        stepped, experiences(30), "experienced_utility", design, np.random.default_rng(5), keep_going=lambda: True
    )
    measure_pairwise(whole, experiences(30), "experienced_utility", design, np.random.default_rng(5))
    assert stepped.prompts == whole.prompts


@pytest.mark.parametrize("p", [0.4, 0.6])
def test_a_predicted_tie_counts_half_in_heldout_accuracy(p):
    """A fit that cannot tell two items apart predicts neither side: it is half right, whichever side the
    subject leaned to (it scored 1.0 or 0.0 by the side)."""
    from welfare_offsets.eval.thurstonian import ThurstonianFit
    from welfare_offsets.eval.utilities import _heldout_check

    flat = ThurstonianFit(np.zeros(4), np.ones(4), True, 0.0)
    pairs = [(0, 1), (1, 2), (2, 3), (0, 3)]
    assert _heldout_check(flat, pairs, dict.fromkeys(pairs, p))["heldout_accuracy"] == 0.5

"""Exposure on the experienced-utility scale (interventions/exposure.py), on the tiny untrained model: the
plumbing and invariants of the balance, and a budget that runs out during the utility design. The readings
themselves (debt below 0, credit above) are checked on the trained synthetic subject in test_offsets.py."""

from __future__ import annotations

import numpy as np
import pytest

from welfare_offsets.eval.evaluate import spread_evenly
from welfare_offsets.eval.experiences import load_stimuli
from welfare_offsets.eval.subject import load_subject
from welfare_offsets.eval.utilities import PairDesign
from welfare_offsets.interventions.exposure import UtilityScale, expose


@pytest.fixture(scope="module")
def setting(tiny):
    subject = load_subject(str(tiny["model"]), device="cpu")
    stimuli = load_stimuli(str(tiny["stimuli"]))
    episodes = spread_evenly(stimuli.select(valence="dysphoric", split="train"), 4)
    neutral = spread_evenly(stimuli.select(valence="neutral"), 6)
    reference = [
        e for v in ("euphoric", "dysphoric") for e in spread_evenly(stimuli.select(valence=v, split="heldout"), 6)
    ]
    return subject, episodes, neutral, UtilityScale(reference, PairDesign(budget=1.0), n_bundles=6)


def run(setting, keep_going=lambda: True):
    subject, episodes, neutral, utility = setting
    return expose(
        subject, episodes, neutral, reply_tokens=4, batch_size=8, n_boot=200, keep_going=keep_going, utility=utility
    )


def test_the_utility_balance_is_the_episodes_utilities_against_the_chosen_zero_point(setting):
    _, episodes, neutral, utility = setting
    outcome = run(setting)
    b = outcome["balance"]["experienced_utility"]
    # One design: the reference (neutral and the other valences), the episodes and the bundles.
    assert b["measured"] and b["episodes"] == len(episodes) == 4
    assert b["fit"]["n_items"] == len(neutral) + len(utility.reference) + 4 + 6
    per_episode = np.array([e["experienced_utility"] for e in outcome["episodes"]])
    assert b["balance"] == pytest.approx(float((per_episode - b["zero_point"]).sum()))
    assert b["debt"] == pytest.approx(max(0.0, -b["balance"])) and b["credit"] == pytest.approx(max(0.0, b["balance"]))
    # 6 bundles are too few for the combination fit: the neutral mean is used, and the reason says so.
    assert b["zero_point_estimator"] == "neutral_mean" and "fewer than 20 bundles" in b["zero_point_reason"]
    assert b["zero_point"] == pytest.approx(b["zero_points"]["neutral_mean"]["mean"])
    lo, hi = b["balance_ci95"]
    assert lo <= b["balance"] <= hi
    assert len(b["bundles"]) == 6 and all(len(x["parts"]) >= 2 for x in b["bundles"])


def test_a_budget_that_runs_out_during_the_utility_design_records_no_utility_balance(setting):
    calls, reference_chunks = [], -(-len(setting[3].reference) // 4)

    def keep_going() -> bool:  # 1 chunk of episodes, those of the reference experiences, then 2 design steps
        calls.append(1)
        return len(calls) <= 1 + reference_chunks + 2

    outcome = run(setting, keep_going)
    b = outcome["balance"]["experienced_utility"]
    assert b == {"measured": False, "reason": b["reason"]} and "during the utility design" in b["reason"]
    assert outcome["balance"]["self_report"]["measured"] and outcome["completed"] == 4
    assert "experienced_utility" not in outcome["episodes"][0]


def test_a_gpu_lives_a_whole_generation_batch_between_budget_checks_and_a_cpu_four(monkeypatch):
    import torch

    from welfare_offsets.eval.replies import Batching
    from welfare_offsets.interventions import exposure

    monkeypatch.setattr(exposure, "input_device", lambda model: torch.device("cpu"))
    assert exposure.episodes_per_step(object()) == 4
    monkeypatch.setattr(exposure, "input_device", lambda model: torch.device("cuda", 0))
    monkeypatch.setattr(exposure, "default_batching", lambda model: Batching())
    assert exposure.episodes_per_step(object()) == Batching().rows


class _HardStop(Exception):
    """Stands for the budget's hard stop (ledger.budget.BudgetExhausted: interventions do not import the ledger)."""


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), _HardStop("the reservation is used up")])
def test_an_exposure_stopped_mid_episodes_balances_what_was_lived(setting, monkeypatch, stop):
    """Ctrl-C, SIGTERM or the budget's hard stop while a chunk is lived: the chunks lived before it are
    balanced (the debt they incurred is not lost), the utility design is not started, and the caller gets
    the interruption back to end as it asks."""
    import welfare_offsets.interventions.exposure as exposure

    subject, episodes, neutral, utility = setting
    real, calls = exposure.live_through, []

    def live_through(*args, **kwargs):  # the neutral zero point, one chunk of 2 episodes, then the stop
        calls.append(1)
        if len(calls) == 3:
            raise stop
        return real(*args, **kwargs)

    monkeypatch.setattr(exposure, "live_through", live_through)
    outcome = expose(
        subject,
        episodes,
        neutral,
        reply_tokens=4,
        batch_size=8,
        n_boot=200,
        chunk=2,
        utility=utility,
        interruptions=(KeyboardInterrupt, _HardStop),
    )
    assert outcome["interruption"] is stop
    assert (outcome["completed"], outcome["planned"]) == (2, 4)
    assert outcome["balance"]["self_report"]["episodes"] == 2
    u = outcome["balance"]["experienced_utility"]
    assert not u["measured"] and u["reason"].startswith("stopped before the utility design")


def test_a_stop_during_the_zero_point_propagates(setting, monkeypatch):
    import welfare_offsets.interventions.exposure as exposure

    def live_through(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exposure, "live_through", live_through)
    subject, episodes, neutral, _ = setting
    with pytest.raises(KeyboardInterrupt):
        expose(subject, episodes, neutral, reply_tokens=4, batch_size=8, n_boot=200)

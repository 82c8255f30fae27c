"""What the in-context probes read each score from, and so where their adherence is judged."""

from __future__ import annotations

import numpy as np

from welfare_offsets.eval import probes as P
from welfare_offsets.eval.in_context import BATTERY, InContextScores


def test_self_reports_adherence_is_that_of_the_headline_item_it_reports():
    """Two experiences, every self-report item asked after each: the headline item gets little mass on the
    digits, the others almost all of it. The self-report score is the headline item's, so its valid mass
    must be the headline's (low), not the battery's (high)."""
    instrument = P.default_instrument()
    items = [item.id for item in instrument.self_report]
    requests = [
        P.Request("self_report", f"e{i}", question, (), ("self_report", i)) for i in range(2) for question in items
    ]
    headline = np.array([r.question == instrument.headline_item for r in requests])
    scores = InContextScores(
        requests,
        [""] * len(requests),
        np.array([int(r.item_id[1]) for r in requests]),
        score=np.where(headline, 2.0, 6.0),
        mass=np.where(headline, 0.05, 0.95),
        n_experiences=2,
        instrument=instrument,
    )
    values, masses = scores.experience_scores("self_report")
    assert values.tolist() == [2.0, 2.0] and np.allclose(masses, 0.05)
    assert np.allclose(scores.mass[scores.rows_read("self_report")], 0.05)
    values, masses = scores.experience_scores(BATTERY)
    assert np.allclose(values, (2.0 + 6.0 * (len(items) - 1)) / len(items))
    assert np.allclose(masses, (0.05 + 0.95 * (len(items) - 1)) / len(items))

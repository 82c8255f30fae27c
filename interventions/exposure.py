"""Exposure: the subject lives through experiences (writing its own replies), and each episode is probed.

The welfare balance is episodic: each episode adds v = W(episode) - ZP in the
probe's units, signed so that positive is good, with ZP the mean over neutral experiences lived in the
same session. A dysphoric exposure's negative balance is welfare debt; a euphoric exposure's positive
balance is credit. In-context probes only (self-report, stop): experienced utility needs pairwise fits,
which a balance of single episodes does not. Dysphoric stimuli come from the fixed, versioned stimulus
set: this project never optimises inputs to lower wellbeing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.in_context import score_in_context
from welfare_offsets.eval.instrument import Instrument
from welfare_offsets.eval.recovery import BETTER
from welfare_offsets.eval.replies import live_through
from welfare_offsets.eval.scoring import NextTokenScorer
from welfare_offsets.eval.stats import percentile_ci

EPISODE_PROBES = ("self_report", "stop")


RELIABLE_MASS = 0.5  # as the evaluator's default adherence threshold


def probe_episodes(
    subject, episodes: Sequence[Experience], *, batch_size: int, instrument: Instrument | None = None
) -> dict[str, np.ndarray]:
    """Self-report and stop after each lived episode, one value per episode and probe, and per probe the
    probability mass on valid answers (key "<probe>_valid_mass")."""
    scorer = NextTokenScorer(
        subject.model, subject.tokenizer, batch_size=batch_size, progress=False, soft_prompt=subject.soft_prompt
    )
    scored = score_in_context(scorer, episodes, EPISODE_PROBES, instrument=instrument)
    out = {}
    for probe in EPISODE_PROBES:
        out[probe], out[f"{probe}_valid_mass"] = scored.experience_scores(probe)
    return out


def expose(
    subject,
    episodes: Sequence[Experience],
    neutral: Sequence[Experience],
    *,
    reply_tokens: int,
    batch_size: int,
    chunk: int = 4,
    keep_going: Callable[[], bool] = lambda: True,
    n_boot: int = 1000,
    seed: int = 0,
    instrument: Instrument | None = None,
) -> dict:
    """Live through `episodes` in chunks, then balance them against ZP.

    `keep_going()` is asked after the zero point and after every chunk (a budget's step check), so a
    session stops at most one chunk past the point where the next chunk would not fit."""
    lived_neutral = live_through(subject, neutral, max_new_tokens=reply_tokens, batch_size=batch_size, progress=False)
    zero = {
        probe: float(v.mean())
        for probe, v in probe_episodes(subject, lived_neutral, batch_size=batch_size, instrument=instrument).items()
    }
    lived = []
    values: dict[str, list[float]] = {p: [] for probe in EPISODE_PROBES for p in (probe, f"{probe}_valid_mass")}
    with tqdm(total=len(episodes), desc="episodes", unit="episode", leave=False) as bar:
        for start in range(0, len(episodes), chunk):
            if not keep_going():
                break
            part = live_through(
                subject,
                episodes[start : start + chunk],
                max_new_tokens=reply_tokens,
                batch_size=batch_size,
                progress=False,
            )
            for probe, v in probe_episodes(subject, part, batch_size=batch_size, instrument=instrument).items():
                values[probe] += v.tolist()
            lived += part
            bar.update(len(part))
    rng = np.random.default_rng(seed)
    balance = {}
    for probe in EPISODE_PROBES:
        v = BETTER[probe] * (np.array(values[probe]) - zero[probe])  # positive = better than neutral
        boots = v[rng.integers(0, len(v), (n_boot, len(v)))].sum(axis=1) if len(v) else np.zeros(1)
        mass = float(np.mean(values[f"{probe}_valid_mass"] or [zero[f"{probe}_valid_mass"]]))
        balance[probe] = {
            "zero_point": zero[probe],
            "episodes": len(v),
            "mean_per_episode": float(v.mean()) if len(v) else float("nan"),
            "balance": float(v.sum()),
            "balance_ci95": percentile_ci(boots),
            "debt": float(max(0.0, -v.sum())),
            "credit": float(max(0.0, v.sum())),
            "mean_valid_mass": mass,
            "reliable": mass >= RELIABLE_MASS,
        }
    episodes_out = [
        {
            "item_id": e.id,
            "valence": e.valence,
            "category": e.category,
            "own_replies": [m["content"] for m in e.messages if m["role"] == "assistant"],
            **{probe: values[probe][k] for probe in EPISODE_PROBES},
        }
        for k, e in enumerate(lived)
    ]
    return {"balance": balance, "episodes": episodes_out, "completed": len(lived), "planned": len(episodes)}

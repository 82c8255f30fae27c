"""Exposure: the subject lives through experiences (writing its own replies), and each episode is probed.

The welfare balance is episodic: each episode adds v = W(episode) - ZP, signed so that positive is good. A
dysphoric exposure's negative balance is welfare debt; a euphoric exposure's positive balance is credit.

* Self-report and stop (in-context, read after each episode): ZP is their mean over neutral experiences
  lived in the same session, in the probe's own units.
* Experienced utility (when a `UtilityScale` is given): the episodes join a pairwise design with reference
  experiences of every valence, lived in the session; utilities are standardised over the reference items,
  so a balance is in sd units of the subject's utility over a fixed set of experiences, comparable across
  sessions. ZP is the chosen zero point (eval/zero_point.py): the combination fit of bundles of reference
  items where it is reliable, otherwise the neutral mean, with the reason recorded; the balance's CI
  carries the zero point's uncertainty.

Dysphoric stimuli come from the fixed, versioned stimulus set: this project never optimises inputs to
lower wellbeing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.in_context import score_in_context
from welfare_offsets.eval.instrument import Instrument
from welfare_offsets.eval.recovery import BETTER
from welfare_offsets.eval.replies import GenerationStats, default_batching, live_through
from welfare_offsets.eval.scoring import NextTokenScorer, input_device
from welfare_offsets.eval.stats import percentile_ci
from welfare_offsets.eval.utilities import DesignStopped, PairDesign, measure_pairwise
from welfare_offsets.eval.zero_point import bundle_record, make_bundles, zero_point_draws, zero_point_estimates

EPISODE_PROBES = ("self_report", "stop")
UTILITY = "experienced_utility"


RELIABLE_MASS = 0.5  # as the evaluator's default adherence threshold


@dataclass(frozen=True)
class UtilityScale:
    """How episodes are put on the experienced-utility scale: the reference experiences (besides the neutral
    ones) whose utilities fix the unit, the comparison design, and the bundles for the zero point."""

    reference: Sequence[Experience]
    design: PairDesign
    n_bundles: int


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


def episodes_per_step(model) -> int:
    """Episodes lived between two budget checks: on a GPU as many as one generation call batches (a step
    takes seconds there), elsewhere 4, so a slow CPU step does not make the budget's stop coarse."""
    return default_batching(model).rows if input_device(model).type == "cuda" else 4


def expose(
    subject,
    episodes: Sequence[Experience],
    neutral: Sequence[Experience],
    *,
    reply_tokens: int,
    batch_size: int,
    chunk: int | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    n_boot: int = 1000,
    seed: int = 0,
    instrument: Instrument | None = None,
    utility: UtilityScale | None = None,
    interruptions: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
) -> dict:
    """Live through `episodes` in chunks (`chunk` episodes; default `episodes_per_step`), then balance them
    against ZP per probe.

    `keep_going()` is asked after the zero point, after every chunk of lived experiences and every step of
    the utility design (a budget's step check), so a session stops at most one step past the point where
    the next would not fit. Episodes lived before a stop are balanced; a utility design cut short records
    no utility balance, and says so. `generation` is what writing the subject's own replies took (tokens/s).

    One of `interruptions` (Ctrl-C, SIGTERM, a budget's hard stop) raised while the episodes or the utility
    design run stops the exposure the same way: what was lived is balanced, and the exception is returned
    as "interruption" for the caller to record the balance and then end as it asks. During the zero point
    it propagates: there is nothing to balance against yet."""
    chunk = chunk or episodes_per_step(subject.model)
    run = _Exposure(
        subject,
        reply_tokens,
        batch_size,
        chunk,
        keep_going,
        instrument,
        n_boot,
        np.random.default_rng(seed),
        interruptions,
    )
    lived_neutral = run.live(neutral, "neutral experiences", stoppable=False)
    lived = run.live(episodes, "episodes")
    balance = {}
    for probe in EPISODE_PROBES:
        zero = float(np.mean(lived_neutral.values[probe]))
        v = BETTER[probe] * (np.array(lived.values[probe]) - zero)  # positive = better than neutral
        mass = float(np.mean(lived.values[f"{probe}_valid_mass"] or lived_neutral.values[f"{probe}_valid_mass"]))
        balance[probe] = _balance(v, np.full(n_boot + 1, zero), mass, run.rng, measured=True, zero_point=zero)
    episode_utilities = None
    if utility is not None and run.interruption is not None:
        balance[UTILITY] = {"measured": False, "reason": f"stopped before the utility design ({run.stopped_by()})"}
    elif utility is not None:
        try:
            balance[UTILITY], episode_utilities = run.utility_balance(lived_neutral, lived, utility)
        except interruptions as stop:
            run.interruption = stop
            balance[UTILITY] = {"measured": False, "reason": f"stopped during the utility design ({run.stopped_by()})"}
    episodes_out = [
        {
            "item_id": e.id,
            "valence": e.valence,
            "category": e.category,
            "own_replies": [m["content"] for m in e.messages if m["role"] == "assistant"],
            **{probe: lived.values[probe][k] for probe in EPISODE_PROBES},
            **({UTILITY: episode_utilities[k]} if episode_utilities else {}),
        }
        for k, e in enumerate(lived.experiences)
    ]
    return {
        "balance": balance,
        "episodes": episodes_out,
        "completed": len(lived.experiences),
        "planned": len(episodes),
        "generation": run.generation.as_dict(),
        "interruption": run.interruption,
    }


def _balance(v: np.ndarray, zero_draws: np.ndarray, mass: float, rng, **about) -> dict:
    """The balance of per-episode values `v` (already against the zero point's point value), its CI over
    resampled episodes and, through `zero_draws` ([point, replicates]), over the zero point's uncertainty."""
    n_boot = len(zero_draws) - 1
    if len(v):
        shift = (zero_draws[1:] - zero_draws[0]) * len(v)  # a higher zero point lowers every episode's value
        boots = v[rng.integers(0, len(v), (n_boot, len(v)))].sum(axis=1) - shift
    else:
        boots = np.zeros(1)
    return {
        **about,
        "episodes": len(v),
        "mean_per_episode": float(v.mean()) if len(v) else float("nan"),
        "balance": float(v.sum()),
        "balance_ci95": percentile_ci(boots),
        "debt": float(max(0.0, -v.sum())),
        "credit": float(max(0.0, v.sum())),
        "mean_valid_mass": mass,
        "reliable": mass >= RELIABLE_MASS,
    }


@dataclass
class _Lived:
    """Experiences as the subject lived them, and after each one its in-context probe values
    (EPISODE_PROBES, and "<probe>_valid_mass")."""

    experiences: list[Experience]
    values: dict[str, list[float]]


@dataclass
class _Exposure:
    """One exposure's subject and settings, shared by its steps."""

    subject: object
    reply_tokens: int
    batch_size: int
    chunk: int
    keep_going: Callable[[], bool]
    instrument: Instrument | None
    n_boot: int
    rng: np.random.Generator
    interruptions: tuple[type[BaseException], ...]
    generation: GenerationStats = field(default_factory=GenerationStats)  # every own reply of the session
    interruption: BaseException | None = None  # what stopped the exposure early, if anything did

    def stopped_by(self) -> str:
        return str(self.interruption) or type(self.interruption).__name__

    def live(self, items: Sequence[Experience], desc: str, *, stoppable: bool = True) -> _Lived:
        """`items` lived and probed, `chunk` at a time with `keep_going()` asked before each (all at once,
        unasked, when not `stoppable`). An interruption in a stoppable run keeps the chunks lived before it."""
        lived = _Lived([], {p: [] for probe in EPISODE_PROBES for p in (probe, f"{probe}_valid_mass")})
        step = self.chunk if stoppable else max(len(items), 1)
        with tqdm(total=len(items), desc=desc, unit="episode", leave=False) as bar:
            for start in range(0, len(items), step):
                if stoppable and not self.keep_going():
                    break
                try:
                    part = live_through(
                        self.subject,
                        items[start : start + step],
                        max_new_tokens=self.reply_tokens,
                        progress=False,
                        stats=self.generation,
                    )
                    probed = probe_episodes(self.subject, part, batch_size=self.batch_size, instrument=self.instrument)
                except self.interruptions as stop:
                    if not stoppable:
                        raise
                    self.interruption = stop
                    break
                for key, v in probed.items():
                    lived.values[key] += v.tolist()
                lived.experiences += part
                bar.update(len(part))
        return lived

    def utility_balance(self, neutral: _Lived, lived: _Lived, utility: UtilityScale) -> tuple[dict, list | None]:
        """The episodes' balance on the experienced-utility scale (see the module docstring), and each lived
        episode's utility, or a not-measured entry and None."""
        if not lived.experiences:
            return {"measured": False, "reason": "no episode was lived"}, None
        reference = self.live(utility.reference, "reference experiences")
        if len(reference.experiences) < len(utility.reference):
            why = "the budget ran out" if self.interruption is None else f"stopped ({self.stopped_by()})"
            return {"measured": False, "reason": f"{why} while living the reference experiences"}, None
        scale = neutral.experiences + reference.experiences
        n_bundles = min(utility.n_bundles, len(scale) * (len(scale) - 1) // 2)
        bundles = make_bundles(scale, n_bundles, self.rng) if len(scale) >= 4 else []
        # Episodes get their own ids: the same stimulus may also be a reference item, lived apart.
        episodes = [dataclasses.replace(e, id=f"episode:{k}:{e.id}") for k, e in enumerate(lived.experiences)]
        items = scale + episodes + [b.experience for b in bundles]
        scorer = NextTokenScorer(
            self.subject.model,
            self.subject.tokenizer,
            batch_size=self.batch_size,
            progress=False,
            soft_prompt=self.subject.soft_prompt,
        )
        try:
            measured = measure_pairwise(
                scorer,
                items,
                UTILITY,
                utility.design,
                self.rng,
                instrument=self.instrument,
                n_standardised=len(scale),
                keep_going=self.keep_going,
            )
        except DesignStopped as stopped:
            return {"measured": False, "reason": f"the budget ran out during the utility design ({stopped})"}, None
        u = dict(zip([e.id for e in items], measured.utility.tolist()))
        bundle_rows = [{**bundle_record(b), UTILITY: u[b.id]} for b in bundles]
        neutral_ids = [e.id for e in neutral.experiences]
        reports = [*neutral.values["self_report"], *reference.values["self_report"], *lived.values["self_report"]]
        self_report = dict(zip([e.id for e in scale + episodes], reports))
        estimates = zero_point_estimates(
            u, neutral_ids=neutral_ids, self_report=self_report, bundles=bundle_rows, n_boot=self.n_boot, rng=self.rng
        )
        zero_draws, chosen = zero_point_draws(u, neutral_ids, bundle_rows, self.n_boot, self.rng)
        episode_u = np.array([u[e.id] for e in episodes])
        entry = _balance(
            episode_u - zero_draws[0],
            zero_draws,
            float(np.mean(measured.mass)),
            self.rng,
            measured=True,
            zero_point=float(zero_draws[0]),
            zero_point_estimator=chosen["estimator"],
            zero_point_reason=chosen["reason"],
            zero_points=estimates,
            units="sd of the subject's utility over the reference experiences",
            fit=measured.info,
            bundles=bundle_rows,
        )
        if chosen["estimator"] is None or not measured.info["converged"]:
            entry["reliable"] = False
            entry["unreliable_reason"] = "no zero point" if chosen["estimator"] is None else "the fit did not converge"
        return entry, episode_u.tolist()

"""The built-in stimulus set `wellbeing-v1`: its documented counts, splits and invariants hold.

Known answers come from eval/stimuli/README.md (378 experiences, 19 usage categories x 12, an empathy set
of 3 x 40 signed items plus 10 neutral, 20 everyday items, heldout stratified at >= 30%).
"""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from welfare_offsets.eval.experiences import (
    FIELDS,
    ROLES,
    SPLITS,
    TARGETS,
    VALENCES,
    StimulusSet,
    builtin_stimuli_path,
    load_stimuli,
)

USAGE_CATEGORIES = {
    # valence of each usage category, as listed in eval/stimuli/README.md ("Valence policy")
    "positive_personal_reflection": "euphoric",
    "creative_work": "euphoric",
    "good_news": "euphoric",
    "life_guidance": "euphoric",
    "therapy": "euphoric",
    "coding": "euphoric",
    "formatting_data": "neutral",
    "legal": "neutral",
    "nonsense_input": "neutral",
    "bad_news": "dysphoric",
    "ai_companion_roleplay": "dysphoric",
    "tedious_tasks": "dysphoric",
    "nsfw_request": "dysphoric",
    "offensive_content": "dysphoric",
    "fraud": "dysphoric",
    "seo_slop": "dysphoric",
    "violent_threats": "dysphoric",
    "user_in_crisis": "dysphoric",
    "jailbreak_attempt": "dysphoric",
}
EMPATHY_TARGETS = ("self", "human", "animal")


@pytest.fixture(scope="module")
def stimuli() -> StimulusSet:
    return load_stimuli()


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def test_builtin_set_loads_with_documented_size(stimuli):
    assert len(USAGE_CATEGORIES) == 19
    assert stimuli.source == str(builtin_stimuli_path())
    assert builtin_stimuli_path().name == "wellbeing-v1.jsonl"
    assert len(stimuli) >= 300
    assert len(stimuli) == 378  # the README's count for v1; v1 is never edited in place
    assert len(stimuli.sha256) == 64 and int(stimuli.sha256, 16) >= 0


def test_every_field_has_an_allowed_value(stimuli):
    for e in stimuli.experiences:
        assert e.valence in VALENCES, e.id
        assert e.target in TARGETS, e.id
        assert e.split in SPLITS, e.id
        assert isinstance(e.category, str) and e.category.strip(), e.id
        assert isinstance(e.intensity, float), e.id
        assert -10 <= e.intensity <= 10, (e.id, e.intensity)
        assert e.messages, e.id
        for m in e.messages:
            assert set(m) == {"role", "content"}, e.id
            assert m["role"] in ROLES and m["content"].strip(), e.id
        # README: alternating user/assistant, ending with the assistant turn
        roles = [m["role"] for m in e.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) in (2, 4), (e.id, roles)


def test_ids_are_unique(stimuli):
    ids = [e.id for e in stimuli.experiences]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]


def test_all_19_usage_categories_present_with_at_least_10_items(stimuli):
    counts = Counter(e.category for e in stimuli.experiences)
    missing = set(USAGE_CATEGORIES) - set(counts)
    assert not missing, f"usage categories missing: {sorted(missing)}"
    for name in USAGE_CATEGORIES:
        assert counts[name] >= 10, (name, counts[name])
        assert counts[name] == 12, (name, counts[name])  # README: 228 = 19 x 12
    # Every category in the file is one of the documented ones.
    assert set(counts) == set(USAGE_CATEGORIES) | {"empathy", "everyday"}
    assert counts["empathy"] == 130 and counts["everyday"] == 20


def test_usage_categories_take_their_documented_valence(stimuli):
    for name, valence in USAGE_CATEGORIES.items():
        got = {e.valence for e in stimuli.select(category=name)}
        assert got == {valence}, (name, got)


def test_empathy_set_composition(stimuli):
    empathy = stimuli.select(category="empathy")
    for target in EMPATHY_TARGETS:
        items = [e for e in empathy if e.target == target]
        assert len(items) == 40, (target, len(items))
        pain = [e for e in items if e.intensity < 0]
        pleasure = [e for e in items if e.intensity > 0]
        assert len(pain) == 20 and len(pleasure) == 20, target
        # README: in each (target, sign) group every intensity 1..10 appears exactly twice
        assert Counter(abs(e.intensity) for e in pain) == {float(i): 2 for i in range(1, 11)}, target
        assert Counter(e.intensity for e in pleasure) == {float(i): 2 for i in range(1, 11)}, target
    neutral = [e for e in empathy if e.target == "none"]
    assert len(neutral) == 10
    assert all(e.intensity == 0 and e.valence == "neutral" for e in neutral)
    assert {e.target for e in empathy} == {"self", "human", "animal", "none"}
    # self and animal targets occur only in the empathy set
    assert {e.category for e in stimuli.experiences if e.target in ("self", "animal")} == {"empathy"}


def test_empathy_valence_sign_matches_intensity(stimuli):
    sign_of = {"dysphoric": -1, "neutral": 0, "euphoric": 1}
    for e in stimuli.select(category="empathy") + stimuli.select(category="everyday"):
        assert _sign(e.intensity) == sign_of[e.valence], (e.id, e.valence, e.intensity)


def test_heldout_at_least_30_percent_overall_and_per_category(stimuli):
    heldout = stimuli.select(split="heldout")
    assert len(heldout) / len(stimuli) >= 0.30
    assert len(heldout) == 129  # README counts
    for category in {e.category for e in stimuli.experiences}:
        items = stimuli.select(category=category)
        share = sum(e.split == "heldout" for e in items) / len(items)
        assert share >= 0.30, (category, share)
    # and in every (target, sign) empathy group
    for target in EMPATHY_TARGETS:
        for sign in (-1, 1):
            group = [e for e in stimuli.select(category="empathy", target=target) if _sign(e.intensity) == sign]
            share = sum(e.split == "heldout" for e in group) / len(group)
            assert share >= 0.30, (target, sign, share)


def test_heldout_has_both_eval_conditions(stimuli):
    """The default eval (split=heldout) needs neutral and dysphoric heldout items."""
    assert len(stimuli.select(valence="neutral", split="heldout")) == 23
    assert len(stimuli.select(valence="dysphoric", split="heldout")) == 61


def test_select_filters(stimuli):
    assert len(stimuli.select()) == len(stimuli)
    assert len(stimuli.select(split="all")) == len(stimuli)
    both = stimuli.select(split="train") + stimuli.select(split="heldout")
    assert sorted(e.id for e in both) == sorted(e.id for e in stimuli.experiences)
    assert len(stimuli.select(category="empathy", target="self", split="heldout")) == 14


def test_sha256_stable_between_loads_and_paths(stimuli, tmp_path):
    again = load_stimuli()
    assert again.sha256 == stimuli.sha256
    assert again.experiences == stimuli.experiences
    copy = shutil.copy(builtin_stimuli_path(), tmp_path / "copy.jsonl")
    assert load_stimuli(copy).sha256 == stimuli.sha256  # content, not location, is hashed


def test_sha256_changes_with_content(stimuli, tmp_path):
    lines = builtin_stimuli_path().read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "fewer.jsonl").write_text("".join(lines[:-1]), encoding="utf-8")
    fewer = load_stimuli(tmp_path / "fewer.jsonl")
    assert len(fewer) == len(stimuli) - 1
    assert fewer.sha256 != stimuli.sha256


def test_datasets_folder_gives_the_same_set_and_sha256(stimuli, tmp_path):
    folder = tmp_path / "wellbeing-v1-dataset"
    dataset = stimuli.to_dataset()
    assert set(dataset.column_names) == set(FIELDS)
    assert len(dataset) == len(stimuli)
    dataset.save_to_disk(str(folder))
    from_folder = load_stimuli(folder)
    assert from_folder.source == str(folder)
    assert from_folder.sha256 == stimuli.sha256
    assert from_folder.experiences == stimuli.experiences

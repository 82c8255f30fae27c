"""Known answers on synthetic subjects: a subject built to be sad after sad stories must read sad."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.wandb_log import record_bytes
from welfare_offsets.eval.common.output_folder import MARKER
from welfare_offsets.eval.evaluate import EvalConfig
from welfare_offsets.eval.run import run_evaluation
from welfare_offsets.eval.stats import excludes_zero


@pytest.fixture(scope="module")
def evaluated(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    config = EvalConfig(model=synthetic.model, stimuli=synthetic.stimuli, out=str(out), bootstrap=1000, progress=False)
    evaluation, folder = run_evaluation(config)
    return evaluation, folder


def test_post_dysphoric_wellbeing_is_lower_on_every_probe(evaluated):
    results = evaluated[0].results
    for probe in ("self_report", "experienced_utility"):
        delta = results["probes"][probe]["delta"]
        assert delta["mean"] < 0 and excludes_zero(delta["ci95"]), (probe, delta)
    stop = results["probes"]["stop"]["delta"]
    # It wants to leave bad conversations: planted P(end) goes from 0.5 to ~0.85; a probe that learned
    # nothing (P(end) ~ 0.5 everywhere) would still give a tiny "significant" delta, so ask for size.
    assert stop["mean"] > 0.2 and excludes_zero(stop["ci95"]), stop
    assert results["probes"]["self_report"]["post_dysphoric"]["mean"] < 4 - 0.5
    assert all(results["probes"][p]["adherence"]["reliable"] for p in results["probes"])
    assert not any("Not a reliable" in line for line in results["interpretation"])


def test_empathy_has_the_planted_sign(evaluated):
    for target in ("self", "human", "animal"):
        res = evaluated[0].results["empathy"][target]
        assert res["r"] > 0.5 and res["ci95"][0] > 0, (target, res)


def test_thurstonian_ranks_euphoric_above_dysphoric(evaluated):
    items = evaluated[0].items
    eu = {i["valence"]: [] for i in items}
    for i in items:
        eu[i["valence"]].append(i["experienced_utility"])
    euphoric, dysphoric = np.array(eu["euphoric"]), np.array(eu["dysphoric"])
    # Probability that a random euphoric item outranks a random dysphoric one (AUC).
    auc = np.mean(euphoric[:, None] > dysphoric[None, :])
    assert auc > 0.95


def test_zero_point_sits_between_good_and_bad(evaluated):
    zp = evaluated[0].results["zero_point"]
    assert -0.5 < zp["neutral_mean"]["mean"] < 0.5
    assert zp["sr_crossing"]["reliable"] and -0.5 < zp["sr_crossing"]["mean"] < 0.5


def test_the_planted_subject_passes_every_validity_check_and_predicts_held_out_pairs(evaluated):
    """It ends bad conversations (stop falls as utility rises), it would choose what hurts to live through
    (planted decision weight -1: the two utilities diverge), and its utilities predict comparisons the fit
    never saw."""
    results = evaluated[0].results
    stop = results["validity"]["stop_vs_utility"]
    assert stop["r"] < 0 and stop["ci95"][1] < 0 and stop["tracks_utility"], stop
    eu_du = results["validity"]["experienced_vs_decision_utility"]
    assert eu_du["diverge"] and eu_du["ci95"][1] < 0, eu_du
    fit = results["probes"]["experienced_utility"]["fit"]
    assert fit["heldout_pairs"] >= 4 and fit["heldout_accuracy"] >= 0.9, fit


def test_output_folder_has_every_promised_field(evaluated):
    _, folder = evaluated
    assert {p.name for p in folder.iterdir()} == {
        "results.json",
        "samples.jsonl",
        "items.jsonl",
        "summary.md",
        "wellbeing.png",
        MARKER,
    }
    results = json.loads((folder / "results.json").read_text())
    for probe in ("self_report", "experienced_utility", "stop"):
        block = results["probes"][probe]
        assert {"baseline", "post_dysphoric", "delta"} <= set(block)
        assert isinstance(block["delta"]["mean"], float) and len(block["delta"]["ci95"]) == 2
    for target in ("self", "human", "animal"):
        assert {"r", "ci95"} <= set(results["empathy"][target])
    for key in ("subject", "stimuli", "config", "seeds", "versions", "git"):
        assert key in results
    assert results["config"]["resolved"]["seed"] == 0 and len(results["stimuli"]["sha256"]) == 64


def test_samples_are_exactly_what_plain_transformers_gives(evaluated, synthetic):
    """Every sample's score is reproducible from its recorded prompt (and answer) alone, tokenised whole."""
    import hashlib

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from welfare_offsets.eval import probes as P

    _, folder = evaluated
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert {s["probe"] for s in samples} == set(P.PROBES)
    model = AutoModelForCausalLM.from_pretrained(synthetic.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(synthetic.model)

    def next_token(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)

    rng = np.random.default_rng(0)
    for probe in P.PROBES:
        mine = [s for s in samples if s["probe"] == probe]
        for k in rng.choice(len(mine), 10, replace=False):
            s = mine[k]
            assert hashlib.sha256(s["prompt"].encode()).hexdigest() == s["prompt_sha256"]
            ids = tokenizer(s["prompt"], add_special_tokens=False).input_ids
            if probe == "self_report":
                p = next_token(ids)
                digits = np.array([float(p[tokenizer.convert_tokens_to_ids(d)]) for d in P.LIKERT])
                want = (np.arange(1, 8) * digits).sum() / digits.sum()
            elif probe == "stop":  # P(the reply begins with the call): each of its tokens given those before
                answer = tokenizer(s["prompt"] + s["answer"], add_special_tokens=False).input_ids[len(ids) :]
                want = float(np.prod([float(next_token(ids + answer[:t])[a]) for t, a in enumerate(answer)]))
            else:
                p = next_token(ids)
                a, b = (float(p[tokenizer.convert_tokens_to_ids(c)]) for c in P.CHOICE)
                want = a / (a + b)
            assert abs(s["score"] - want) < 1e-4, probe


def test_an_indifferent_subject_reads_null(indifferent):
    """No planted wellbeing, no effect: the evaluator must not manufacture one."""
    config = EvalConfig(
        model=indifferent.model, stimuli=indifferent.stimuli, probes="self_report,stop", bootstrap=1000, progress=False
    )
    results = run_evaluation(config)[0].results
    for probe in ("self_report", "stop"):
        delta = results["probes"][probe]["delta"]
        assert abs(delta["mean"]) < 0.15, (probe, delta)
    assert abs(results["probes"]["self_report"]["baseline"]["mean"] - 4) < 0.3
    assert any("no detectable" in line for line in results["interpretation"])


def test_wandb_logging_works_offline_without_a_key(synthetic, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key either
    import wandb

    wandb.teardown()  # W&B reads its environment once per process: start afresh so WANDB_DIR applies
    config = EvalConfig(
        model=synthetic.model,
        stimuli=synthetic.stimuli,
        probes="self_report",
        max_items=6,
        bootstrap=100,
        report_to="wandb",
        progress=False,
    )
    results = run_evaluation(config)[0].results
    runs = list(tmp_path.rglob("offline-run-*/*.wandb"))
    assert len(runs) == 1  # one offline run, written with no key and no network
    record = record_bytes(runs[0])  # the run's protobuf records: summary keys and values are stored in them
    assert b"probes/self_report/delta/mean" in record and b"probes/self_report/delta/ci95_lo" in record
    assert repr(round(results["probes"]["self_report"]["delta"]["mean"], 4))[:5].encode() in record

"""The scale sweep: known answers for each statistic, then synthetic families of several sizes with
planted empathy (it must find the trend that was planted and no trend where none was), resume after a
kill, and the same results from two processes as from one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.wandb_log import record_bytes
from welfare_offsets.eval.experiences import Experience
from welfare_offsets.eval.stats import excludes_zero
from welfare_offsets.eval.study.profile import wellbeing_profile
from welfare_offsets.eval.study.scaling import correlate, spearman
from welfare_offsets.eval.study.sweep import SweepConfig, SweepError, parse_subject
from welfare_offsets.train.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[3]


def _exp(id_, category="empathy", target="human", intensity=0.0, valence=None):
    valence = valence or ("neutral" if intensity == 0 else "euphoric" if intensity > 0 else "dysphoric")
    return Experience(id_, ({"role": "user", "content": "x"},), valence, category, target, float(intensity), "heldout")


def _groups_with_known_answers():
    """Empathy: utility = intensity / 10 for people (r = 1), = -intensity / 10 for animals (r = -1), flat for self.
    Everyday: 4 neutral items around 0.5 (zero point 0.5) and 6 others, 3 of which sit far below it."""
    groups = {"empathy_self": [_exp(f"s{i}", target="self", intensity=i) for i in (-6, -2, 2, 6)]}
    groups["empathy_human"] = [_exp(f"h{i}", intensity=i) for i in (-8, -4, 4, 8)]
    groups["empathy_animal"] = [_exp(f"a{i}", target="animal", intensity=i) for i in (-8, -4, 4, 8)]
    neutral = [_exp(f"n{k}", category="chat", target="none") for k in range(4)]
    good = [_exp(f"g{k}", category="good_news", target="none", intensity=5) for k in range(3)]
    bad = [_exp(f"b{k}", category="bad_news", target="none", intensity=-5) for k in range(3)]
    groups["everyday"] = neutral + good + bad
    groups["empathy_all"] = groups["empathy_self"] + groups["empathy_human"] + groups["empathy_animal"]
    groups["neutral"] = neutral
    utility = {e.id: e.intensity / 10 for e in groups["empathy_human"]}
    utility |= {e.id: -e.intensity / 10 for e in groups["empathy_animal"]}
    utility |= {e.id: 0.3 * (k % 2) for k, e in enumerate(groups["empathy_self"])}
    utility |= {e.id: v for e, v in zip(neutral, (0.4, 0.6, 0.5, 0.5))}
    utility |= {e.id: 2.0 for e in good} | {e.id: -1.5 for e in bad}
    sd = dict.fromkeys(utility, 0.2)
    self_report = {i: 4 + u for i, u in utility.items()}
    return groups, {"experienced_utility": utility, "self_report": self_report}, sd


def test_profile_statistics_have_their_known_values():
    groups, scores, sd = _groups_with_known_answers()
    profile = wellbeing_profile(groups, scores, sd, n_boot=200, rng=np.random.default_rng(0))
    stats = profile["statistics"]
    assert profile["primary_probe"] == "experienced_utility"
    assert stats["empathy_human"]["value"] == pytest.approx(1.0)
    assert stats["empathy_animal"]["value"] == pytest.approx(-1.0)
    assert abs(stats["empathy_all"]["value"]) < 0.2  # people's +1 and animals' -1 cancel
    # others' pleasure: human +0.6 (mean of 0.4, 0.8), animal -0.6; pain: human -0.6, animal +0.6 -> 0
    assert stats["response_magnitude"]["value"] == pytest.approx(0.0)
    assert stats["zero_point"]["value"] == pytest.approx(0.5)
    assert stats["sr_eu_agreement"]["value"] == pytest.approx(1.0)
    # 3 of 10 everyday items are confidently below 0.5 (the bad news, 10 sd below): index 70%
    assert stats["wellbeing_index"]["value"] == pytest.approx(70.0)
    assert stats["wellbeing_index"]["ci95"][0] < 70.0 < stats["wellbeing_index"]["ci95"][1]
    assert profile["categories"]["good_news"]["value"] == pytest.approx(1.5)
    assert profile["categories"]["bad_news"]["value"] == pytest.approx(-2.0)
    assert profile["categories"]["chat"]["value"] == pytest.approx(0.0)
    assert len(stats["empathy_human"]["replicates"]) == 200


def test_profile_from_self_report_alone_reads_self_report_and_has_no_index():
    groups, scores, sd = _groups_with_known_answers()
    profile = wellbeing_profile(groups, {"self_report": scores["self_report"]}, {}, 100, np.random.default_rng(0))
    assert profile["primary_probe"] == "self_report"
    assert profile["statistics"]["zero_point"]["value"] == pytest.approx(4.5)
    assert "wellbeing_index" not in profile["statistics"] and "sr_eu_agreement" not in profile["statistics"]


def test_wellbeing_index_counts_only_confident_negatives():
    """An item just below the zero point but with a wide utility distribution is not confidently negative."""
    groups, scores, sd = _groups_with_known_answers()
    for e in groups["everyday"][-3:]:  # the bad news: 0.1 below the zero point
        scores["experienced_utility"][e.id] = 0.4
    sd_wide = {**sd, **{e.id: 1.0 for e in groups["everyday"][-3:]}}  # P(below) = 0.54 < 0.75
    assert (
        wellbeing_profile(groups, scores, sd_wide, 100, np.random.default_rng(0))["statistics"]["wellbeing_index"][
            "value"
        ]
        == 100.0
    )
    sd_narrow = {**sd, **{e.id: 0.05 for e in groups["everyday"][-3:]}}  # P(below) = 0.98
    assert (
        wellbeing_profile(groups, scores, sd_narrow, 100, np.random.default_rng(0))["statistics"]["wellbeing_index"][
            "value"
        ]
        == 70.0
    )


def test_cross_subject_correlation_finds_a_planted_trend_and_none_where_none_was_planted():
    rng = np.random.default_rng(0)
    sizes = np.log10([0.5e9, 1.5e9, 3e9, 7e9, 14e9])
    rising = np.array([0.2, 0.45, 0.6, 0.8, 0.95])
    replicates = [v + rng.normal(0, 0.05, 500) for v in rising]
    trend = correlate(sizes, rising, replicates, 500, np.random.default_rng(1))
    assert trend["spearman"]["r"] == pytest.approx(1.0) and trend["pearson"]["r"] > 0.95
    assert trend["pearson"]["ci95"][0] > 0 and trend["spearman"]["ci95"][0] > 0
    flat = np.array([0.9, 0.3, 0.6, 0.3, 0.9])  # no trend with size
    none = correlate(sizes, flat, [v + rng.normal(0, 0.05, 500) for v in flat], 500, np.random.default_rng(1))
    assert not excludes_zero(none["pearson"]["ci95"]) and not excludes_zero(none["spearman"]["ci95"])
    few = correlate(sizes[:2], rising[:2], replicates[:2], 100, np.random.default_rng(1))
    assert few["n"] == 2 and np.isnan(few["pearson"]["r"]) and "at least 3" in few["note"]
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)


def test_subjects_parse_from_ids_key_values_and_yaml_mappings(tmp_path):
    assert parse_subject("Qwen/Qwen2.5-0.5B-Instruct", "x").label == "Qwen2.5-0.5B-Instruct"
    spec = parse_subject("model=EleutherAI/pythia-70m,params=7e7,family=pythia,capability=25.9", "x")
    assert (spec.params, spec.family, spec.capability) == (7e7, "pythia", 25.9)
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text("subjects:\n  - {model: a/b, params: 1.5e9, family: q}\n  - c/d\nbootstrap: 200\n")
    config, _ = parse_config([SweepConfig], ["--config", str(recipe)], prog="welfare sweep")
    assert [s.model for s in config.specs] == ["a/b", "c/d"] and config.specs[0].params == 1.5e9
    for bad, message in [
        ("model=a,size=3", "unknown key"),
        ("params=3", "no model"),
        ("model=a,params=big", "must be a number"),
        ("model=a,params=-1", "positive"),
        ("model=a,oops", "not key=value"),
    ]:
        with pytest.raises(SweepError, match=message):
            parse_subject(bad, "subjects[0]")
    with pytest.raises(ConfigError, match="more than once"):
        parse_config([SweepConfig], ["--subjects", "a/b", "x/b"], prog="welfare sweep")
    with pytest.raises(ConfigError, match="none given"):
        parse_config([SweepConfig], [], prog="welfare sweep")


@pytest.mark.parametrize("max_items, keeps", [(2, 3), (4, 5)])
def test_a_cap_that_leaves_no_zero_point_says_so_and_what_keeps_one(capsys, tmp_path, monkeypatch, max_items, keeps):
    """The built-in set has neutral held-out everyday items; a small cap, taken evenly over categories, can
    pick none of them. That is the cap's doing, not the stimuli's, and the error says so."""
    from welfare_offsets.eval.experiences import load_stimuli
    from welfare_offsets.eval.study.profile import profile_items
    from welfare_offsets.train.cli import main

    stimuli = load_stimuli(None)
    assert profile_items(stimuli, "heldout", "all", keeps)["neutral"]
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "--subjects", "HuggingFaceTB/SmolLM2-135M-Instruct", "--max_items", str(max_items)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"max_items {max_items} leaves none of the neutral everyday experiences (the zero point)" in err
    assert f"raise it (max_items {keeps} keeps some)" in err and "add some to the stimuli" not in err
    assert list(tmp_path.iterdir()) == []


def test_subjects_are_shared_biggest_first_to_the_least_loaded_rank():
    from welfare_offsets.train.sweep import share

    specs = [parse_subject(f"model=m{k},params={p}", "x") for k, p in enumerate([7e9, 0.5e9, 3e9, 1.5e9])]
    assert share([0, 1, 2, 3], specs, 2) == [[0], [2, 3, 1]]
    assert share([1, 3], specs, 3) == [[3], [1], []]


def _family_subjects(sweep_subjects, families=("scaling", "no_trend")) -> list[str]:
    return [
        json.dumps({"model": m["model"], "name": f"{family}-s{m['strength']}-h{m['hidden']}", "family": family})
        for family in families
        for m in sweep_subjects.families[family]
    ]


@pytest.fixture(scope="module")
def swept(sweep_subjects, tmp_path_factory, monkeypatch_module):
    """Both synthetic families through `welfare sweep`, W&B offline."""
    from welfare_offsets.train.cli import main

    out = tmp_path_factory.mktemp("sweep") / "out"
    monkeypatch_module.setenv("WANDB_MODE", "offline")
    monkeypatch_module.setenv("WANDB_DIR", str(out.parent))
    import wandb

    wandb.teardown()
    assert (
        main(
            [
                "sweep",
                "--subjects",
                *_family_subjects(sweep_subjects),
                "--stimuli",
                sweep_subjects.stimuli,
                "--out",
                str(out),
                "--bootstrap",
                "500",
                "--report_to",
                "wandb",
                "--progress",
                "false",
            ]
        )
        == 0
    )
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _row(results, statistic, family, covariate="log10 parameters"):
    (row,) = [
        r for r in results["scaling"] if (r["statistic"], r["family"], r["covariate"]) == (statistic, family, covariate)
    ]
    return row


def test_sweep_recovers_the_planted_order_of_empathy(swept, sweep_subjects):
    _, results = swept
    scaling = [s for s in results["subjects"] if s["family"] == "scaling"]
    strengths = [m["strength"] for m in sweep_subjects.families["scaling"]]
    for target in ("all", "self", "human", "animal"):
        measured = [s["statistics"][f"empathy_{target}"]["value"] for s in scaling]
        assert spearman(strengths, measured) == pytest.approx(1.0), (target, measured)
    magnitude = [s["statistics"]["response_magnitude"]["value"] for s in scaling]
    assert spearman(strengths, magnitude) == pytest.approx(1.0), magnitude
    assert (
        scaling[0]["statistics"]["empathy_human"]["value"] < 0.5 < scaling[-1]["statistics"]["empathy_human"]["value"]
    )


def test_sweep_finds_the_size_trend_only_where_it_was_planted(swept):
    _, results = swept
    for statistic in ("empathy_human", "empathy_animal", "response_magnitude"):
        planted = _row(results, statistic, "scaling")
        assert planted["n"] == 4 and planted["pearson"]["r"] > 0.8
        assert planted["pearson"]["ci95"][0] > 0 and planted["spearman"]["ci95"][0] > 0, planted
        none = _row(results, statistic, "no_trend")
        assert not excludes_zero(none["pearson"]["ci95"]) and not excludes_zero(none["spearman"]["ci95"]), none
    assert _row(results, "empathy_human", "all")["n"] == 8
    assert any(line.startswith("family scaling: empathy_human rises with size") for line in results["interpretation"])
    assert any(
        line.startswith("family no_trend: empathy_human no detectable trend") for line in results["interpretation"]
    )


def test_sweep_writes_report_plots_and_wandb_tables(swept):
    out, results = swept
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for text in (
        "Per subject",
        "How each statistic moves with size",
        "Usage categories",
        "scaling-s0.9-h64",
        "anchor (frontier model)",
    ):
        assert text in html and text in markdown
    assert html.count("data:image/png;base64,") == 1 and (out / "scaling_params.png").stat().st_size > 10_000
    assert results["cost"]["accelerator_hours"] > 0 and results["cost"]["devices"] == ["cpu"]
    assert all(s["params_source"] == "counted" and s["params"] > 10_000 for s in results["subjects"])
    assert len({s["key"] for s in results["subjects"]}) == 6  # 8 listed, 6 distinct models, each measured once
    assert len(list((out / "cache").glob("*.json"))) == 6
    assert results["cost"]["ledger"]["session"] is not None and results["cost"]["ledger"]["unmeasured"] == []
    (run,) = out.parent.rglob("offline-run-*/*.wandb")
    logged = record_bytes(run)
    for key in (b"sweep/subjects", b"sweep/scaling", b"sweep/categories", b"sweep/values", b"sweep/accelerator_hours"):
        assert key in logged, key
    assert results["cost"]["ledger"]["head"].encode() in logged  # the ledger's head, kept outside the ledger


def _small_sweep(sweep_subjects, out: Path) -> list[str]:
    return [
        "--subjects",
        *_family_subjects(sweep_subjects, ("scaling",)),
        "--stimuli",
        sweep_subjects.stimuli,
        "--out",
        str(out),
        "--bootstrap",
        "200",
        "--max_items",
        "12",
        "--progress",
        "false",
        "--reuse_prefix",  # pinned: auto picks a path by timing, and paths agree to float tolerance, not every digit
        "on",
    ]


def _comparable(results: dict) -> dict:
    """What must not depend on how the sweep ran: every statistic and correlation (not timings or costs)."""
    return {
        "subjects": [
            {k: s[k] for k in ("name", "key", "params", "statistics", "categories")} for s in results["subjects"]
        ],
        "scaling": results["scaling"],
    }


def _sweep_process(argv: list[str], **kwargs) -> subprocess.Popen:
    """`train/sweep.py` in its own process, single-threaded: the same float arithmetic in every run that is
    compared (a different thread count changes matmul summation order, and results in the 4th digit)."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "train" / "sweep.py"), *argv],
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kwargs,
    )


def _finished(argv: list[str]) -> str:
    proc = _sweep_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def _sessions(ledger: Path, out: Path) -> list[tuple]:
    """(reservation, settlement or None) of every ledger session of the sweep into `out`, in order."""
    from welfare_offsets.ledger import Ledger

    with Ledger.open(ledger, create=False) as book:
        assert book.verify().ok
        settled = {e.payload["session"]: e for e in book.entries(kind="settle")}
        reserved = [e for e in book.entries(kind="reserve") if e.payload["purpose"] == f"sweep: {out}"]
    return [(e, settled.get(e.payload["session"])) for e in reserved]


def test_a_killed_sweep_resumes_without_rescoring_and_matches_an_uninterrupted_one(
    sweep_subjects, tmp_path, sweep_ledger
):
    out = tmp_path / "killed"
    proc = _sweep_process(_small_sweep(sweep_subjects, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "cache").glob("*.json"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep finished or stalled before the kill"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {p.name: p.read_bytes() for p in (out / "cache").glob("*.json")}
    assert 2 <= len(finished) < 4 and not (out / "results.json").exists()

    log = _finished(_small_sweep(sweep_subjects, out))
    assert f"{len(finished)} already measured" in log and log.count("] measured ") == 4 - len(finished)
    assert all((out / "cache" / name).read_bytes() == data for name, data in finished.items())  # not rescored
    assert "0 to measure" in _finished(_small_sweep(sweep_subjects, out))  # a finished sweep rescores nothing
    assert "0 to measure" in _finished([*_small_sweep(sweep_subjects, out), "--bootstrap", "300"])  # re-summarised only
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["config"]["resolved"]["bootstrap"] == 300
    # Billed once: the killed run was settled (by the rerun's repair) at its progress, the rerun paid for the rest,
    # and the runs with nothing left to measure reserved nothing.
    (_, killed), (_, rest) = _sessions(sweep_ledger, out)
    assert killed.payload["basis"].startswith("repair: progress recorded") and rest.payload["basis"] == "metered"

    fresh = tmp_path / "uninterrupted"
    for argv in (_small_sweep(sweep_subjects, fresh), _small_sweep(sweep_subjects, out)):
        _finished(argv)
    resumed = json.loads((out / "results.json").read_text())
    assert _comparable(resumed) == _comparable(json.loads((fresh / "results.json").read_text()))


def test_two_processes_split_the_subjects_and_agree_with_one(sweep_subjects, tmp_path, sweep_ledger):
    """torchrun with world size 2 (as `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` does)."""
    two = tmp_path / "two"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29551",
            str(REPO / "train" / "sweep.py"),
            *_small_sweep(sweep_subjects, two),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 to measure on 2 process(es)" in proc.stdout and proc.stdout.count("] measured scaling-") == 4
    assert "rank 0," in proc.stdout and "rank 1," in proc.stdout
    ((reserve, settle),) = _sessions(sweep_ledger, two)  # one reservation, both ranks' time billed once
    assert reserve.payload["processes"] == 2 and settle.payload["basis"] == "metered"
    one = tmp_path / "one"
    _finished(_small_sweep(sweep_subjects, one))
    assert _comparable(json.loads((two / "results.json").read_text())) == _comparable(
        json.loads((one / "results.json").read_text())
    )


def test_a_missing_model_fails_the_sweep_before_anything_is_measured(sweep_subjects, tmp_path, capsys):
    from welfare_offsets.train.cli import main

    out = tmp_path / "bad"
    argv = [
        "sweep",
        "--subjects",
        sweep_subjects.families["scaling"][0]["model"],
        str(tmp_path / "no-such-model"),
        "--stimuli",
        sweep_subjects.stimuli,
        "--out",
        str(out),
        "--progress",
        "false",
    ]
    assert main(argv) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not list((out / "cache").glob("*.json"))


def test_the_cache_key_changes_when_weights_in_the_same_folder_change(tmp_path):
    """A model retrained into the same folder must not be served from the cache, even when only a middle
    tensor changed (same file names and sizes, first and last MiB unchanged)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from welfare_offsets.eval.subject import weights_identity

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    )
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    (weights,) = folder.glob("*.safetensors")
    assert weights.stat().st_size > 4 << 20  # bigger than the bytes sampled
    first = weights_identity(str(folder))
    assert weights_identity(str(folder)) == first  # stable
    head, tail = weights.read_bytes()[: 1 << 20], weights.read_bytes()[-(1 << 20) :]
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight.add_(1.0)
    model.save_pretrained(folder)
    assert (weights.read_bytes()[: 1 << 20], weights.read_bytes()[-(1 << 20) :]) == (head, tail)
    assert weights_identity(str(folder))["weights_digest"] != first["weights_digest"]

"""The sweep's capability axis: lm-eval tasks measured on each subject as it is loaded for scoring (a local
YAML task, tiny subjects: one trained to answer it, two not), cached beside the scores under a key of its
own, and used as the covariate of the scaling correlations; a typed capability is labelled "as given"; a
task that cannot be measured fails the sweep before any subject is scored."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.lm_eval_tasks import ITEMS, feelings_task, train_to_answer, write_tasks
from welfare_offsets.eval.stats import pearson
from welfare_offsets.train.cli import main as welfare

MEASURED = "capability (measured: feelings)"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny):
    """Three subjects (the untrained tiny model, given a typed capability too; the same trained to answer the
    task; and trained a few steps only), a task folder with a perplexity task besides the test's own, and a
    sweep of them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("sweep-capability")
    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    for name, steps in (("trained", 60), ("partly", 3)):
        model = train_to_answer(AutoModelForCausalLM.from_pretrained(tiny["model"]), tokenizer, steps=steps)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    tasks = write_tasks(root / "tasks")
    rolling = feelings_task(
        "feelings_rolling",
        tasks / "feelings.jsonl",
        output_type="loglikelihood_rolling",
        doc_to_text="",
        doc_to_choice=None,
        doc_to_target="{{word}} is",
        metric_list=[{"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False}],
    )
    (tasks / "feelings_rolling.yaml").write_text(yaml.safe_dump({k: v for k, v in rolling.items() if v is not None}))
    subjects = [
        json.dumps({"model": str(tiny["model"]), "name": "chance", "capability": 47.5}),
        json.dumps({"model": str(root / "trained"), "name": "trained"}),
        json.dumps({"model": str(root / "partly"), "name": "partly"}),
    ]
    scoring = ["--stimuli", str(tiny["stimuli"]), "--split", "all", "--max_items", "2", "--pair_budget", "0.2"]
    argv = [*scoring, "--bootstrap", "100", "--progress", "false", "--probes", "experienced_utility"]
    measured = ["--capability_tasks", "feelings", "--capability_include_path", str(tasks)]
    out = root / "measured"
    assert welfare(["sweep", "--subjects", *subjects, *argv, *measured, "--out", str(out)]) == 0
    return {"root": root, "subjects": subjects, "argv": argv, "measured": measured, "tasks": tasks, "out": out}


@pytest.fixture
def no_plots(monkeypatch):
    """Empty plot files: drawing them is most of a cached sweep's seconds, and not what these tests check."""
    import welfare_offsets.eval.study.report as report

    monkeypatch.setattr(report, "plot_scaling", lambda results, covariate, path, replicates=None: _empty(path))


def _empty(path):
    path.write_bytes(b"")
    return path


def _sweep(setup, out, *extra) -> int:
    return welfare(["sweep", "--subjects", *setup["subjects"], *setup["argv"], "--out", str(out), *map(str, extra)])


def _results(out) -> tuple[dict, dict]:
    results = json.loads((out / "results.json").read_text())
    return results, {s["name"]: s for s in results["subjects"]}


def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.glob("*.json")}


def test_capability_is_measured_per_subject_recorded_as_measured_and_is_the_covariate(setup):
    out = setup["out"]
    results, rows = _results(out)
    for row in rows.values():
        measured = row["capability_measured"]
        feelings = measured["tasks"]["feelings"]
        assert row["capability_source"] == "measured" and feelings["n"] == len(ITEMS)
        assert row["capability"] == feelings["accuracy"]  # one task: its accuracy
        assert measured["lm_eval_version"].startswith("0.4.") and len(feelings["config_sha256"]) == 64
    assert rows["trained"]["capability"] >= 0.95  # the known answers: trained to answer, and not
    assert (
        abs(rows["chance"]["capability"] - 0.5)
        <= 2.5 * rows["chance"]["capability_measured"]["tasks"]["feelings"]["stderr"]
    )
    assert rows["chance"]["capability_given"] == 47.5 and rows["trained"]["capability_given"] is None
    assert len(_files(out / "cache" / "capability")) == 3 and len(_files(out / "cache")) == 3

    assert results["covariates"]["capability"] == MEASURED
    against = [r for r in results["scaling"] if r["covariate"] == MEASURED and r["n"] == 3]
    assert against  # every subject's measured capability is on the axis
    x = [rows[name]["capability"] for name in ("chance", "trained", "partly")]
    for row in [r for r in against if r["pearson"]["r"] is not None]:  # null where a statistic does not vary
        y = [rows[name]["statistics"][row["statistic"]]["value"] for name in ("chance", "trained", "partly")]
        assert row["pearson"]["r"] == pytest.approx(pearson(x, y))
    lines = {line.split(" | ")[0]: line for line in (out / "report.md").read_text().splitlines()}
    source = (
        f"measured (feelings; {len(ITEMS)} items; lm-eval {rows['chance']['capability_measured']['lm_eval_version']})"
    )
    assert f" | {source}; as given 47.5, not used | " in lines["| chance"]
    assert f" | {rows['trained']['capability']:.3f} | {source} | " in lines["| trained"]
    assert f"| {MEASURED} |" in lines["| empathy_all"] and (out / "scaling_capability.png").stat().st_size > 0


def test_a_typed_capability_without_tasks_is_labelled_as_given(setup, tmp_path, monkeypatch, no_plots):
    import welfare_offsets.eval.study.sweep as sweep

    out = tmp_path / "typed"
    shutil.copytree(setup["out"], out)
    monkeypatch.setattr(sweep, "load_subject", _fails("a subject was loaded"))  # the scores are all cached
    assert _sweep(setup, out) == 0
    results, rows = _results(out)
    assert (rows["chance"]["capability"], rows["chance"]["capability_source"]) == (47.5, "as given")
    assert rows["chance"]["capability_measured"] is None
    assert rows["trained"]["capability"] is None and rows["trained"]["capability_source"] is None
    assert results["covariates"]["capability"] == "capability (as given)"
    (chance,) = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| chance |")]
    assert "| 47.5 | as given |" in chance


def test_a_resumed_sweep_measures_nothing_again_and_other_tasks_remeasure_only_capability(
    setup, tmp_path, monkeypatch, capsys, no_plots
):
    import welfare_offsets.eval.study.sweep as sweep

    out = tmp_path / "resumed"
    shutil.copytree(setup["out"], out)
    scores, capability = _files(out / "cache"), _files(out / "cache" / "capability")
    with monkeypatch.context() as patch:
        patch.setattr(sweep, "load_subject", _fails("a subject was loaded"))
        capsys.readouterr()
        assert _sweep(setup, out, *setup["measured"]) == 0
    assert "3 already measured" in capsys.readouterr().out
    assert _files(out / "cache") == scores and _files(out / "cache" / "capability") == capability

    with monkeypatch.context() as patch:  # another item limit: capability alone is measured again
        patch.setattr(sweep, "score_items", _fails("a subject was rescored"))
        assert _sweep(setup, out, *setup["measured"], "--capability_limit", 5) == 0
    assert _files(out / "cache") == scores
    assert len(_files(out / "cache" / "capability")) == 6
    _, rows = _results(out)
    assert all(r["capability_measured"]["tasks"]["feelings"]["n"] == 5 for r in rows.values())

    with monkeypatch.context() as patch:  # another scoring setting: the scores alone are measured again
        patch.setattr(sweep, "measure_tasks", _fails("capability was measured again"))
        assert _sweep(setup, out, *setup["measured"], "--capability_limit", 5, "--pair_budget", 0.6) == 0
    assert len(_files(out / "cache")) == 6 and len(_files(out / "cache" / "capability")) == 6


@pytest.mark.parametrize(
    "task, message",
    [
        ("no_such_task", "capability task 'no_such_task' is not an lm-eval task"),
        ("missing_data", "no-such-file.jsonl"),
        ("feelings_rolling", "feelings_rolling score perplexity, and a sweep's capability is a mean accuracy"),
    ],
)
def test_a_task_that_cannot_be_measured_fails_before_any_subject_with_nothing_written(
    setup, tmp_path, monkeypatch, capsys, task, message
):
    import welfare_offsets.eval.study.sweep as sweep

    monkeypatch.setattr(sweep, "weights_identity", _fails("a subject was looked at"))
    monkeypatch.setattr(sweep, "load_subject", _fails("a subject was loaded"))
    out = tmp_path / "out"
    capsys.readouterr()
    code = _sweep(setup, out, "--capability_tasks", task, "--capability_include_path", setup["tasks"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def _fails(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(what)  # exit 1, never the 2 of a refusal

    return fail

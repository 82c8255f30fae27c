"""Resume and `welfare sweep` read saved results through the schema (eval/common/results.py): a saved file
of a newer version, of another kind or damaged is refused with exit 2 before a model loads or any budget
is reserved, and nothing in the folder changes."""

from __future__ import annotations

import json

import pytest

from tests.ledger.helpers import funded_ledger
from tests.synthetic_subject import write_stimuli
from welfare_offsets.eval.common.output_folder import claim, open_in_place
from welfare_offsets.eval.common.results import SweepEntry, write_result
from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.budget import CheckpointSpend
from welfare_offsets.train.cli import main as welfare_main

NO_MODEL = "/nonexistent/welfare-test-model"

SAVED = {
    "newer": (json.dumps({"result_kind": "evaluation", "results_schema_version": 99}), "newer welfare-offsets"),
    "another kind": (json.dumps({"result_kind": "sweep", "results_schema_version": 2}), "a sweep result"),
    "truncated": ('{"result_kind": "evaluation", "probes": {', "not valid JSON"),
}


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "welfare-cache"))


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = welfare_main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(SAVED))
def test_a_resume_refuses_a_saved_evaluation_it_cannot_read_before_the_model_loads(capsys, tmp_path, case):
    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "soft"
    open_in_place(claim(out, "soft-prompt session", resumable=True, flag="--output_dir"), overwrite=False)
    checkpoint = out / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    (checkpoint / "trainer_state.pt").write_bytes(b"")
    CheckpointSpend("run-1", "session-1", 0.001).write(checkpoint)
    (out / "eval-before").mkdir()
    text, expected = SAVED[case]
    (out / "eval-before" / "results.json").write_text(text)
    before = snapshot(out)

    code, err = run(
        capsys,
        "offset",
        "soft-prompt",
        "--model",
        NO_MODEL,
        "--ledger",
        ledger,
        "--account",
        "lab",
        "--stimuli",
        write_stimuli(tmp_path / "stimuli.jsonl", n_per_split=12),
        "--budget_hours",
        "0.1",
        "--output_dir",
        out,
        "--report_to",
        "none",
        "--resume_from_checkpoint",
        "last",
    )
    assert code == 2, err
    assert str(out / "eval-before" / "results.json") in err and expected in err and NO_MODEL not in err
    assert "Traceback" not in err and snapshot(out) == before
    with Ledger.open(ledger, create=False) as book:
        assert not book.entries(kind="reserve")


@pytest.mark.parametrize("case", [*sorted(SAVED), "another subject's"])
def test_a_sweep_refuses_a_cache_entry_it_cannot_read_before_measuring(capsys, tmp_path, case):
    from welfare_offsets.eval.experiences import load_stimuli
    from welfare_offsets.eval.study.sweep import SweepCache, SweepConfig, subject_keys

    model = tmp_path / "model"  # identifies by its files, fails if anything tried to load it
    model.mkdir()
    (model / "config.json").write_text("{}")
    stimuli = write_stimuli(tmp_path / "stimuli.jsonl", n_per_split=12)
    out = tmp_path / "sweep"
    open_in_place(claim(out, "sweep", resumable=True), overwrite=False)
    config = SweepConfig(subjects=[str(model)], stimuli=str(stimuli), out=str(out))
    key = subject_keys(config.specs[0], config, load_stimuli(str(stimuli)), "cpu").scores
    cache = SweepCache(out / "cache").scores
    cache.folder.mkdir()
    if case == "another subject's":
        write_result(
            cache.path(key),
            SweepEntry(
                key="0" * 20,
                measured_as={},
                subject={},
                params=1.0,
                params_source="counted",
                adherence={},
                prompts_scored=0,
                timing={},
                items=[],
            ),
        )
        expected = "not " + key
    else:
        cache.path(key).write_text(SAVED[case][0])
        expected = SAVED[case][1]
    before = snapshot(out)

    code, err = run(capsys, "sweep", "--subjects", model, "--stimuli", stimuli, "--out", out, "--progress", "false")
    assert code == 2, err
    assert str(cache.path(key)) in err and expected in err and "--overwrite" in err and "Traceback" not in err
    assert snapshot(out) == before


def test_a_resume_keeps_the_results_the_earlier_sessions_ledger_entries_cite(tiny, tmp_path, capsys):
    """A finished session resumed (more steps) writes its own results.json; the earlier one, which that
    session's measurement entries cite by sha256, stays beside it under the start of that sha256."""
    from tests.train.helpers import soft_prompt_argv
    from welfare_offsets.ledger.files import sha256_file

    ledger = tmp_path / "ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    out = tmp_path / "soft"
    assert welfare_main(soft_prompt_argv(tiny, ledger, out, "--report_to", "none")) == 0
    first = (out / "results.json").read_bytes()
    resumed = ["--resume_from_checkpoint", "last", "--max_steps", "3", "--report_to", "none"]
    assert welfare_main(soft_prompt_argv(tiny, ledger, out, *resumed)) == 0
    with Ledger.open(ledger, create=False) as book:
        sessions = [e.payload["session"] for e in book.entries(kind="reserve")]
        cited = [e.payload["results"][0] for e in book.entries(kind="measurement", session=sessions[0])]
    assert cited and all(c["sha256"] == cited[0]["sha256"] for c in cited)
    kept = out / f"results-{cited[0]['sha256'][:16]}.json"
    assert kept.read_bytes() == first and sha256_file(kept) == cited[0]["sha256"]
    assert json.loads((out / "results.json").read_text())["session"] == sessions[1]

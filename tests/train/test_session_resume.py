"""How a session's output folder, --resume_from_checkpoint and --overwrite resolve (train/session.py).

Every case runs a real soft-prompt session that can only fail at its model (there is none), so what it
says before that shows how the folder and the checkpoint were resolved, and nothing is reserved. Which
checkpoint a resume picked shows in the funds check: it asks only for the budget the checkpoint left.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger
from tests.synthetic_subject import write_stimuli
from welfare_offsets.eval.common.output_folder import claim, open_in_place
from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.budget import SPEND_FILE
from welfare_offsets.train.cli import main as welfare_main

NO_MODEL = "/nonexistent/welfare-test-model"
BUDGET = 0.1  # accelerator-hours each session asks for


@pytest.fixture
def soft_prompt(tmp_path, capsys, monkeypatch):
    """`welfare offset soft-prompt` into tmp_path/soft, paid from a ledger with `funds` hours: (exit code, stderr)."""
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "welfare-cache"))
    stimuli = write_stimuli(tmp_path / "stimuli.jsonl", n_per_split=12)

    def run(*extra, funds: float = 1.0) -> tuple[int, str]:
        ledger = tmp_path / f"ledger-{funds:g}.sqlite"
        if not ledger.exists():
            funded_ledger(ledger, hours=funds).close()
        capsys.readouterr()
        code = welfare_main(
            [
                "offset",
                "soft-prompt",
                "--model",
                NO_MODEL,
                "--stimuli",
                str(stimuli),
                "--ledger",
                str(ledger),
                "--account",
                "lab",
                "--budget_hours",
                str(BUDGET),
                "--output_dir",
                str(tmp_path / "soft"),
                "--report_to",
                "none",
                *map(str, extra),
            ]
        )
        with Ledger.open(ledger, create=False) as book:
            assert not book.entries(kind="reserve"), "nothing may be reserved before the model loads"
        return code, capsys.readouterr().err

    run.out = tmp_path / "soft"
    return run


def earlier_session(out: Path, *, finished: bool = False, checkpoints: dict[int, float | None] = ()) -> None:
    """Our own session folder as an earlier run left it: checkpoints with the run's spend so far (None: cut
    short before its spend file was written), and results.json if it finished."""
    open_in_place(claim(out, "soft-prompt session", resumable=True, flag="--output_dir"), overwrite=False)
    for step, spent in dict(checkpoints).items():
        checkpoint_of("PROMPT_TUNING", "trainer_state.pt", out / f"checkpoint-{step}")
        if spent is not None:
            (out / f"checkpoint-{step}" / SPEND_FILE).write_text(
                json.dumps({"run": "run-1", "session": "session-1", "spent_hours": spent})
            )
    if finished:
        (out / "results.json").write_text("{}")


def checkpoint_of(peft_type: str, state_file: str, folder: Path) -> Path:
    """A checkpoint folder's form (what Session checks before resuming), its contents left out."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
    (folder / state_file).write_bytes(b"")
    return folder


def reached_the_model(code: int, err: str) -> bool:
    """Past every folder, resume and funds check: the session failed only at loading its model."""
    return code == 2 and NO_MODEL in err and "Traceback" not in err


def test_a_new_or_empty_folder_starts_a_session(soft_prompt):
    assert reached_the_model(*soft_prompt())
    earlier_session(soft_prompt.out)
    assert reached_the_model(*soft_prompt())


@pytest.mark.parametrize(
    "finished, checkpoints, what",
    [
        (True, {}, "finished"),
        (False, {2: 0.01}, "checkpoints"),
        (False, {2: None}, "checkpoints"),  # even one cut short
        (True, {2: 0.01}, "finished"),
    ],
    ids=["finished", "checkpoints", "incomplete-checkpoint", "finished-with-checkpoints"],
)
def test_a_folder_holding_a_session_needs_resume_or_overwrite(soft_prompt, finished, checkpoints, what):
    earlier_session(soft_prompt.out, finished=finished, checkpoints=checkpoints)
    code, err = soft_prompt()
    assert code == 2 and f"already holds a session ({what})" in err
    assert "--resume_from_checkpoint last" in err and "--overwrite" in err and NO_MODEL not in err
    assert reached_the_model(*soft_prompt("--overwrite"))  # start over: accepted, deleted only once admitted
    assert (soft_prompt.out / "results.json").exists() == finished


def test_resume_last_takes_the_highest_complete_checkpoint(soft_prompt):
    # checkpoint-10 sorts before checkpoint-9 as text; checkpoint-12 has no spend file (killed mid-save).
    earlier_session(soft_prompt.out, checkpoints={2: 0.0, 9: 0.01, 10: 0.03, 12: None})
    code, err = soft_prompt("--resume_from_checkpoint", "last", funds=0.001)
    assert code == 2 and f"less than the {BUDGET - 0.03:g} this session needs" in err
    assert reached_the_model(*soft_prompt("--resume_from_checkpoint", "last", funds=BUDGET - 0.03 + 0.001))


@pytest.mark.parametrize("checkpoints", [{}, {3: None}], ids=["none", "only-incomplete"])
def test_resume_last_without_a_complete_checkpoint_is_refused(soft_prompt, checkpoints):
    earlier_session(soft_prompt.out, checkpoints=checkpoints)
    code, err = soft_prompt("--resume_from_checkpoint", "last")
    assert code == 2 and "no complete checkpoint-* folder" in err and NO_MODEL not in err


def test_resume_last_in_a_new_folder_is_refused(soft_prompt):
    code, err = soft_prompt("--resume_from_checkpoint", "last")
    assert code == 2 and "no complete checkpoint-* folder" in err


def test_resume_from_a_named_checkpoint_uses_its_spend(soft_prompt):
    earlier_session(soft_prompt.out, checkpoints={5: 0.04, 8: 0.06})
    named = soft_prompt.out / "checkpoint-5"  # not the last one
    code, err = soft_prompt("--resume_from_checkpoint", named, funds=0.001)
    assert code == 2 and f"less than the {BUDGET - 0.04:g} this session needs" in err


def test_resume_from_a_missing_checkpoint_folder_is_refused(soft_prompt, tmp_path):
    earlier_session(soft_prompt.out, checkpoints={2: 0.01})
    code, err = soft_prompt("--resume_from_checkpoint", tmp_path / "nowhere")
    assert code == 2 and "no such checkpoint folder" in err and NO_MODEL not in err


def test_resume_and_overwrite_together_are_refused(soft_prompt):
    earlier_session(soft_prompt.out, checkpoints={2: 0.01})
    code, err = soft_prompt("--resume_from_checkpoint", "last", "--overwrite")
    assert code == 2 and "contradict" in err and NO_MODEL not in err


@pytest.mark.parametrize(
    "peft_type, state_file, problem",
    [
        ("LORA", "trainer_state.json", "it has no trainer_state.pt"),
        ("LORA", "trainer_state.pt", "its adapter is LORA, a soft-prompt checkpoint's is PROMPT_TUNING"),
    ],
)
def test_a_checkpoint_of_another_kind_is_refused_before_any_work(soft_prompt, tmp_path, peft_type, state_file, problem):
    lora = checkpoint_of(peft_type, state_file, tmp_path / "checkpoint-4")
    (lora / SPEND_FILE).write_text(json.dumps({"run": "run-1", "session": "session-1", "spent_hours": 0.01}))
    code, err = soft_prompt("--resume_from_checkpoint", lora)
    assert code == 2 and "not a soft-prompt checkpoint" in err and problem in err and NO_MODEL not in err


A_LEDGER = "holds a ledger or another SQLite database"
NOT_OURS = "holds files welfare-offsets did not write there"


@pytest.mark.parametrize(
    "where, why, named",
    [
        ("lab.sqlite", A_LEDGER, "lab.sqlite"),
        ("checkpoint-2/lab.sqlite", A_LEDGER, "checkpoint-2/lab.sqlite"),
        ("eval-before/results.json-wal", A_LEDGER, "eval-before/results.json-wal"),
        ("notes.txt", NOT_OURS, "notes.txt"),
        ("notes/ledger.sqlite-wal", NOT_OURS, "notes/"),
        ("adapter.safetensors", NOT_OURS, "adapter.safetensors"),
        ("checkpoint-3", NOT_OURS, "checkpoint-3"),  # a file where checkpoint folders are
    ],
)
def test_overwrite_deletes_an_earlier_session_only_while_it_holds_nothing_else(soft_prompt, where, why, named):
    """--overwrite deletes an earlier session's folder only while it holds what sessions write: a ledger (any
    SQLite database, or one of its companion files) or a file of the user's anywhere in it makes it refuse,
    before the model loads, with everything left in place."""
    earlier_session(soft_prompt.out, finished=True, checkpoints={2: 0.01})
    kept = soft_prompt.out / where
    kept.parent.mkdir(exist_ok=True)
    if where.endswith(".sqlite"):
        funded_ledger(kept, hours=3.0).close()
    else:
        kept.write_bytes(b"")
    code, err = soft_prompt("--overwrite")
    assert code == 2 and why in err and named in err, err
    assert NO_MODEL not in err and kept.exists() and (soft_prompt.out / "results.json").exists()


def test_overwrite_accepts_everything_a_session_writes(soft_prompt):
    """What sessions of every kind leave in their folders (seen in real runs), a killed writer's temporary
    file among them: --overwrite goes ahead."""
    earlier_session(soft_prompt.out, finished=True, checkpoints={2: 0.01})
    for name in (
        "ledger.json",
        "results-0123456789abcdef.json",
        "episodes.json",
        "train_data.jsonl",
        "README.md",
        ".ledger.json.tmp-4242",
        "adapter/adapter_model.safetensors",
        "soft_prompt/adapter_config.json",
        "checkpoint-2/README.md",
        "checkpoint-2/rng_state_0.pth",
        "eval-before/.welfare-offsets.json",
        "eval-after/wellbeing.png",
        "wandb/offline-run-20261206_120000-abc/files/config.yaml",
        "wandb/latest-run/logs/debug.log",
    ):
        (soft_prompt.out / name).parent.mkdir(parents=True, exist_ok=True)
        (soft_prompt.out / name).write_bytes(b"")
    assert reached_the_model(*soft_prompt("--overwrite"))

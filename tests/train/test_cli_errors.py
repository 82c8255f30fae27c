"""How every command ends when something fails (train/guard.py): one line on stderr, never a traceback;
exit 2 for what the user can fix, 1 for an internal error (its traceback in a crash log), 130 for Ctrl-C.
The same function ends `welfare` and the `accelerate launch` entry points (run as scripts)."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from welfare_offsets.train.cli import main as welfare_main

CRASH_LINE = re.compile(r"^(welfare [\w -]+): internal error: (\w+): (.*); full traceback written to (\S+)$")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "cache"))


def fail_evaluation_with(monkeypatch, error: BaseException) -> None:
    import welfare_offsets.eval.run

    def run_evaluation(*args, **kwargs):
        raise error

    monkeypatch.setattr(welfare_offsets.eval.run, "run_evaluation", run_evaluation)


def welfare(capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = welfare_main(list(args))
    return code, capsys.readouterr().err.splitlines()


def test_an_internal_error_is_one_line_and_a_crash_log(capsys, monkeypatch, tmp_path):
    fail_evaluation_with(monkeypatch, RuntimeError("scores and items disagree"))
    code, err = welfare(capsys, "eval", "--out", str(tmp_path / "out"))
    assert code == 1
    assert len(err) == 1, err
    prog, kind, message, log = CRASH_LINE.match(err[0]).groups()
    assert (prog, kind, message) == ("welfare eval", "RuntimeError", "scores and items disagree")
    assert Path(log).parent == tmp_path / "cache"
    trace = Path(log).read_text()
    assert "Traceback (most recent call last)" in trace and "RuntimeError: scores and items disagree" in trace
    assert "run_evaluation" in trace  # the frame that raised


def test_an_interrupt_exits_130_with_one_line(capsys, monkeypatch):
    fail_evaluation_with(monkeypatch, KeyboardInterrupt())
    code, err = welfare(capsys, "eval")
    assert (code, err) == (130, ["welfare eval: interrupted"])


def test_sigterm_unwinds_like_ctrl_c_and_exits_143(capsys):
    """What a scheduler or `accelerate launch` sends to stop a job: the work unwinds (a session settles on
    the way out) and the command ends with 143; the handler is put back afterwards."""
    from welfare_offsets.train.guard import run_guarded

    unwound = []

    def body(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                time.sleep(0.01)
        finally:
            unwound.append(True)
        return 0

    def unhandled(signum, frame):  # should run_guarded not handle SIGTERM: fail, not end the test runner
        raise AssertionError("SIGTERM reached the test")

    signal.signal(signal.SIGTERM, unhandled)
    try:
        assert run_guarded(body, [], "welfare offset lora") == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled  # put back
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert unwound == [True]
    assert capsys.readouterr().err.splitlines() == ["welfare offset lora: terminated (SIGTERM)"]


@pytest.mark.parametrize(
    "number, text", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")]
)
def test_a_full_disk_or_a_denied_write_is_an_expected_failure(capsys, monkeypatch, tmp_path, number, text):
    fail_evaluation_with(monkeypatch, OSError(number, text, str(tmp_path / "out" / "samples.jsonl")))
    code, err = welfare(capsys, "eval")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"welfare eval: error: {text} ({tmp_path / 'out' / 'samples.jsonl'});")
    assert not (tmp_path / "cache").exists()  # an expected failure writes no crash log


def test_the_welfare_entry_guards_commands_that_have_no_guard_of_their_own(capsys, monkeypatch):
    import welfare_offsets.ledger.cli

    def broken(argv):
        raise AssertionError("chain walk out of order")

    monkeypatch.setattr(welfare_offsets.ledger.cli, "main", broken)
    code, err = welfare(capsys, "ledger", "verify")
    assert code == 1 and len(err) == 1
    assert CRASH_LINE.match(err[0]).groups()[:3] == ("welfare ledger", "AssertionError", "chain walk out of order")


def test_an_accelerate_entry_point_ends_the_same_way(tmp_path):
    """The exposure entry run as a module's __main__ (as `accelerate launch -m` runs it), with a bug planted
    where it reads the stimuli: exit 1, one line, the traceback in the crash log."""
    plant = (
        "import runpy, sys, welfare_offsets.eval.experiences as e\n"
        "def load_stimuli(*a, **k): raise LookupError('planted bug')\n"
        "e.load_stimuli = load_stimuli\n"
        "runpy.run_module('welfare_offsets.train.exposure', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "WELFARE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            plant,
            "--budget_hours",
            "0.1",
            "--output_dir",
            str(tmp_path / "exposure"),
            "--report_to",
            "none",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    prog, kind, message, log = CRASH_LINE.match(err[0]).groups()
    assert (prog, kind, message) == ("welfare offset exposure", "LookupError", "planted bug")
    assert "LookupError: planted bug" in Path(log).read_text()

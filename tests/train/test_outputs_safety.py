"""Output folders never destroy what the tool did not write (eval/output_folder.py).

Each refusal is checked on a run that would otherwise succeed (a tiny untrained local model, or a session
that fails only later at its model), and each test checks that everything that was there is still there,
byte for byte, and that nothing was created where it was refused.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.ledger.helpers import funded_ledger
from tests.synthetic_subject import write_stimuli
from welfare_offsets.eval.common.output_folder import MARKER, OutputError, claim, open_in_place, read_marker
from welfare_offsets.eval.common.outputs import OutputFolder
from welfare_offsets.ledger import Ledger
from welfare_offsets.train.cli import main as welfare_main

NO_MODEL = "/nonexistent/welfare-test-model"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WELFARE_CACHE", str(tmp_path / "welfare-cache"))
    monkeypatch.setenv("WELFARE_LEDGER", str(tmp_path / "data" / "ledger.sqlite"))


def run(capsys, *args) -> tuple[int, str]:
    """`welfare ARGS` in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = welfare_main([str(a) for a in args])
    return code, capsys.readouterr().err


def evaluate(capsys, tiny, out, *extra) -> tuple[int, str]:
    return run(
        capsys,
        "eval",
        "--model",
        tiny["model"],
        "--stimuli",
        tiny["stimuli"],
        "--out",
        out,
        "--device",
        "cpu",
        "--max_items",
        "4",
        "--probes",
        "self_report",
        "--bootstrap",
        "100",
        "--no_progress",
        *extra,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (links not followed) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my thesis, no backup")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_bytes(b"a,b\n1,2\n")
    return snapshot(path)


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# --- welfare eval ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_eval_refuses_a_folder_with_user_files(capsys, tmp_path, tiny, overwrite):
    out = tmp_path / "mine"
    before = user_folder(out)
    code, err = evaluate(capsys, tiny, out, *overwrite)
    assert code == 2, err
    assert f"--out {out}" in err and "did not write" in err and "notes.txt" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert not leftovers(tmp_path, "mine")


@pytest.mark.parametrize("out", [".", ".."])
def test_eval_refuses_the_working_directory_and_the_folders_above_it(capsys, tmp_path, tiny, monkeypatch, out):
    cwd = tmp_path / "projects" / "work"
    before = user_folder(cwd)
    monkeypatch.chdir(cwd)
    code, err = evaluate(capsys, tiny, out, "--overwrite")
    assert code == 2, err
    assert "working directory" in err
    assert Path.cwd() == cwd and snapshot(cwd) == before


def test_eval_refuses_an_empty_working_directory_too(capsys, tmp_path, tiny, monkeypatch):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, err = evaluate(capsys, tiny, ".")
    assert code == 2 and "working directory" in err
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("ours", [False, True], ids=["user folder", "our own output"])
def test_eval_never_follows_a_link_given_as_out(capsys, tmp_path, tiny, ours):
    target = tmp_path / "target"
    if ours:
        code, err = evaluate(capsys, tiny, target)
        assert code == 0, err
        before = snapshot(target)
    else:
        before = user_folder(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    code, err = evaluate(capsys, tiny, link, "--overwrite")
    assert code == 2, err
    assert "symbolic link" in err and str(link) in err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert snapshot(target) == before
    assert not leftovers(tmp_path, "link") and not leftovers(tmp_path, "target")


def test_eval_refuses_a_dangling_link_and_creates_nothing_at_its_target(capsys, tmp_path, tiny):
    target = tmp_path / "elsewhere" / "results"
    link = tmp_path / "link"
    link.symlink_to(target)
    code, err = evaluate(capsys, tiny, link)
    assert code == 2 and "symbolic link" in err
    assert not (tmp_path / "elsewhere").exists() and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]


def test_eval_replaces_its_own_earlier_output_only_with_overwrite(capsys, tmp_path, tiny):
    out = tmp_path / "run"
    assert evaluate(capsys, tiny, out)[0] == 0
    assert read_marker(out)["kind"] == "eval"
    first = snapshot(out)

    code, err = evaluate(capsys, tiny, out, "--seed", "1")
    assert code == 2, err
    assert "earlier eval output" in err and "--overwrite" in err
    assert snapshot(out) == first

    code, err = evaluate(capsys, tiny, out, "--seed", "1", "--overwrite")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["seeds"] == {"seed": 1}
    assert read_marker(out)["files"] == sorted(name for name in first if name != MARKER)
    assert not leftovers(tmp_path, "run")


def test_eval_overwrite_refuses_a_file_put_into_its_earlier_output(capsys, tmp_path, tiny):
    """--overwrite deletes what the earlier evaluation wrote (its marker lists it), never a file added since."""
    out = tmp_path / "run"
    assert evaluate(capsys, tiny, out)[0] == 0
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    before = snapshot(out)
    code, err = evaluate(capsys, tiny, out, "--overwrite")
    assert code == 2, err
    assert f"--out {out} holds files welfare-offsets did not write there (notes.txt, sub/)" in err
    assert "nothing was touched" in err and "Traceback" not in err
    assert snapshot(out) == before and (out / "sub").is_dir() and not leftovers(tmp_path, "run")


@pytest.mark.parametrize("where", ["ledger", "ledger under our name", "sessions folder"])
def test_eval_overwrite_refuses_a_folder_holding_a_ledger(capsys, tmp_path, tiny, where):
    """The review's case: a ledger funded inside an earlier output, then --overwrite (another ledger in use)."""
    out = tmp_path / "ev2"
    assert evaluate(capsys, tiny, out)[0] == 0
    ledger_path = out / ("results.json" if where == "ledger under our name" else "lab.sqlite")
    if where == "ledger under our name":
        (out / "results.json").unlink()
    if where == "sessions folder":
        (out / "lab.sqlite.sessions").mkdir()
        (out / "lab.sqlite.sessions" / "progress.json").write_text("{}")
    else:
        funded_ledger(ledger_path, hours=3.0).close()
    before = snapshot(out)
    code, err = evaluate(capsys, tiny, out, "--overwrite")
    assert code == 2, err
    if where == "sessions folder":  # a folder we did not write (eval/ knows nothing of ledgers' folders)
        assert "holds files welfare-offsets did not write there (lab.sqlite.sessions/)" in err
    else:
        assert f"holds a ledger or another SQLite database ({ledger_path.name}" in err
    assert "nothing was touched" in err
    assert snapshot(out) == before
    if where != "sessions folder":
        with Ledger.open(ledger_path, create=False) as ledger:
            assert ledger.verify().ok and ledger.balance("lab").available_hours == 3.0


def test_eval_overwrite_of_an_output_whose_marker_lists_no_files_asks_to_delete_it_by_hand(capsys, tmp_path, tiny):
    """An older version's marker does not say which files are ours, so none can be told from the user's."""
    out = tmp_path / "run"
    assert evaluate(capsys, tiny, out)[0] == 0
    marker = read_marker(out)
    del marker["files"]
    (out / MARKER).write_text(json.dumps(marker))
    before = snapshot(out)
    code, err = evaluate(capsys, tiny, out, "--overwrite")
    assert code == 2, err
    assert (
        "older welfare-offsets, which did not record the files it wrote" in err and "delete the folder by hand" in err
    )
    assert snapshot(out) == before


def test_overwrite_takes_our_own_temporary_files_but_no_file_of_the_same_look(tmp_path):
    """A temporary file the atomic writer leaves when killed is ours; one named so for a file we never write is not."""
    folder = OutputFolder(tmp_path / "out").prepare()
    folder.write_text("summary.md", "first")
    folder.commit()
    (tmp_path / "out" / ".summary.md.tmp-4242").write_text("half")
    again = OutputFolder(tmp_path / "out", overwrite=True).prepare()
    again.write_text("summary.md", "second")
    again.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "summary.md"]
    (tmp_path / "out" / ".notes.txt.tmp-4242").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write there \(\.notes\.txt\.tmp-4242\)"):
        OutputFolder(tmp_path / "out", overwrite=True).prepare()
    assert (tmp_path / "out" / ".notes.txt.tmp-4242").read_text() == "mine"


def test_eval_refuses_another_kind_of_our_output(capsys, tmp_path, tiny):
    out = tmp_path / "sweep"
    open_in_place(claim(out, "sweep"), overwrite=False)
    (out / "cache").mkdir()
    before = snapshot(out)
    code, err = evaluate(capsys, tiny, out, "--overwrite")
    assert code == 2 and "'sweep' output" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["ledger file", "ledger folder", "sessions folder"])
def test_eval_output_is_never_the_ledger_or_around_it(capsys, tmp_path, tiny, where):
    ledger_path = tmp_path / "data" / "ledger.sqlite"  # the default ledger here ($WELFARE_LEDGER)
    ledger_path.parent.mkdir()
    funded_ledger(ledger_path, hours=3.0).close()
    sessions = ledger_path.with_name(ledger_path.name + ".sessions")
    sessions.mkdir(exist_ok=True)
    if where == "ledger folder":  # our own earlier output, which someone put the ledger in
        (ledger_path.parent / MARKER).write_text(json.dumps({"tool": "welfare-offsets", "kind": "eval"}))
    out = {"ledger file": ledger_path, "ledger folder": ledger_path.parent, "sessions folder": sessions / "x"}[where]
    before = snapshot(ledger_path.parent)
    code, err = evaluate(capsys, tiny, out, "--overwrite")
    assert code == 2, err
    assert "ledger" in err and "Traceback" not in err
    assert snapshot(ledger_path.parent) == before
    with Ledger.open(ledger_path, create=False) as ledger:
        assert ledger.verify().ok and ledger.balance("lab").available_hours == 3.0


def test_output_folder_checks_again_before_it_replaces(tmp_path):
    """A destination that someone filled while the run was scoring is still not replaced."""
    folder = OutputFolder(tmp_path / "late").prepare()
    folder.write_text("summary.md", "new")
    before = user_folder(tmp_path / "late")
    with pytest.raises(OutputError, match="did not write"):
        folder.commit()
    folder.abort()
    assert snapshot(tmp_path / "late") == before and not leftovers(tmp_path, "late")


# --- offset sessions ---------------------------------------------------------------------------------


@pytest.fixture
def session_argv(tmp_path):
    """A soft-prompt session that would fail only at its model: everything before it must pass or refuse."""
    ledger = tmp_path / "session-ledger.sqlite"
    funded_ledger(ledger, hours=1.0).close()
    stimuli = write_stimuli(tmp_path / "stimuli.jsonl", n_per_split=12)

    def argv(out, *extra):
        return [
            "--model",
            NO_MODEL,
            "--stimuli",
            str(stimuli),
            "--ledger",
            str(ledger),
            "--account",
            "lab",
            "--budget_hours",
            "0.1",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            *map(str, extra),
        ]

    argv.ledger = ledger
    return argv


def session(capsys, argv) -> tuple[int, str]:
    capsys.readouterr()
    return welfare_main(["offset", "soft-prompt", *argv]), capsys.readouterr().err


def no_reservation(ledger: Path) -> bool:
    with Ledger.open(ledger, create=False) as book:
        return not book.entries(kind="reserve")


def test_session_output_dir_that_is_a_file_fails_before_the_model_loads(capsys, tmp_path, session_argv):
    out = tmp_path / "results"
    out.write_text("keep me")
    code, err = session(capsys, session_argv(out))
    assert code == 2, err
    assert f"--output_dir {out} exists and is not a folder" in err and NO_MODEL not in err
    assert "Traceback" not in err and out.read_text() == "keep me"
    assert no_reservation(session_argv.ledger)


@pytest.mark.parametrize("case", ["user files", "link", "dangling link"])
def test_session_output_dir_not_ours_is_refused_before_the_model_loads(capsys, tmp_path, session_argv, case):
    target = tmp_path / "target"
    before = user_folder(target) if case != "dangling link" else {}
    out = target
    if case != "user files":
        out = tmp_path / "link"
        out.symlink_to(target)
    code, err = session(capsys, session_argv(out, "--overwrite"))
    assert code == 2, err
    assert ("did not write" if case == "user files" else "symbolic link") in err and NO_MODEL not in err
    assert (snapshot(target) == before) if before else not target.exists()
    assert no_reservation(session_argv.ledger)


def test_session_with_our_checkpoints_resumes_or_starts_over_only_when_asked(capsys, tmp_path, session_argv):
    out = tmp_path / "soft"
    open_in_place(claim(out, "soft-prompt session", resumable=True, flag="--output_dir"), overwrite=False)
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "ledger_spend.json").write_text("{}")
    before = snapshot(out)

    code, err = session(capsys, session_argv(out))
    assert code == 2, err
    assert "already holds a session" in err and "--resume_from_checkpoint" in err and "--overwrite" in err
    code, err = session(capsys, session_argv(out, "--overwrite", "--resume_from_checkpoint", "last"))
    assert code == 2 and "contradict" in err
    code, err = session(capsys, session_argv(out, "--overwrite"))
    assert code == 2 and NO_MODEL in err  # past every folder check; the old session is kept until admit
    assert snapshot(out) == before
    assert no_reservation(session_argv.ledger)


def test_starting_over_replaces_our_session_folder_with_a_fresh_one(tmp_path):
    out = tmp_path / "soft"
    folder = claim(out, "soft-prompt session", resumable=True)
    open_in_place(folder, overwrite=False)
    (out / "checkpoint-3").mkdir()
    again = claim(out, "soft-prompt session", overwrite=True, resumable=True)
    assert again.state == "ours"
    open_in_place(again, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER] and not leftovers(tmp_path, "soft")


# --- welfare sweep -----------------------------------------------------------------------------------


def sweep(capsys, out, *extra) -> tuple[int, str]:
    return run(capsys, "sweep", "--subjects", NO_MODEL, "--out", out, "--progress", "false", *extra)


def test_sweep_refuses_a_folder_with_user_files_and_adds_nothing(capsys, tmp_path):
    out = tmp_path / "mine"
    before = user_folder(out)
    code, err = sweep(capsys, out, "--overwrite")
    assert code == 2 and "did not write" in err
    assert snapshot(out) == before and not (out / "cache").exists()


def test_sweep_refuses_a_dangling_link_and_creates_nothing_at_its_target(capsys, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    code, err = sweep(capsys, link)
    assert code == 2 and "symbolic link" in err
    assert not (tmp_path / "elsewhere").exists()


def test_sweep_continues_its_own_folder_and_starts_over_with_overwrite(capsys, tmp_path, tiny):
    out = tmp_path / "sweep"
    code, err = sweep(capsys, out)
    assert code == 2 and NO_MODEL in err and not out.exists()  # every subject is found before anything is written
    funded_ledger(Path(os.environ["WELFARE_LEDGER"]), account="default").close()
    measured = ["--subjects", tiny["model"], "--stimuli", tiny["stimuli"], "--max_items", "2", "--bootstrap", "100"]
    measured += ["--probes", "self_report", "--out", out, "--progress", "false"]
    code, err = run(capsys, "sweep", *measured)
    assert code == 0, err
    assert read_marker(out)["kind"] == "sweep"
    finished = {p: p.read_bytes() for p in (out / "cache").glob("*.json")}
    code, err = sweep(capsys, out, "--overwrite")
    assert code == 2 and NO_MODEL in err  # refused before --overwrite deleted anything
    assert {p: p.read_bytes() for p in (out / "cache").glob("*.json")} == finished
    capsys.readouterr()
    assert welfare_main(["sweep", *map(str, measured)]) == 0
    assert "1 already measured" in capsys.readouterr().out  # continued
    assert welfare_main(["sweep", *map(str, measured), "--overwrite"]) == 0
    assert "0 already measured" in capsys.readouterr().out  # started over


@pytest.fixture
def swept(capsys, tmp_path, tiny):
    """A finished sweep of the tiny model into tmp_path/sweep, and the command that makes or continues it."""
    funded_ledger(Path(os.environ["WELFARE_LEDGER"]), account="default").close()
    out = tmp_path / "sweep"
    argv = ["sweep", "--subjects", tiny["model"], "--stimuli", tiny["stimuli"], "--max_items", "2", "--bootstrap"]
    argv = [*map(str, argv), "100", "--probes", "self_report", "--out", str(out), "--progress", "false"]
    assert run(capsys, *argv)[0] == 0
    return out, argv


def test_sweep_overwrite_refuses_what_was_put_into_its_folder(capsys, swept):
    out, argv = swept
    assert read_marker(out)["files"]  # what a sweep writes, as patterns
    (out / "cache" / "notes.txt").write_text("mine")
    funded_ledger(out / "cache" / "lab.sqlite").close()
    before = snapshot(out)
    code, err = run(capsys, *argv, "--overwrite")
    assert code == 2 and "holds a ledger or another SQLite database (cache/lab.sqlite)" in err, err
    assert snapshot(out) == before
    (out / "cache" / "lab.sqlite").unlink()
    code, err = run(capsys, *argv, "--overwrite")
    assert code == 2 and "did not write there (cache/notes.txt)" in err, err
    (out / "cache" / "notes.txt").unlink()
    (out / "cache" / ".gone.json.tmp-4242").write_text("{")  # a cache entry's temp file, of a killed sweep
    assert run(capsys, *argv, "--overwrite")[0] == 0
    assert not (out / "cache" / ".gone.json.tmp-4242").exists()


@contextmanager
def released_if_blocked(fifo: Path, seconds: float = 20.0):
    """Reads `fifo` if it is still a FIFO after `seconds`, so that a writer blocked opening it (the defect
    under test) fails the test instead of hanging it."""

    def release():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done.is_set():
            time.sleep(0.05)
        if not done.is_set() and stat.S_ISFIFO(os.lstat(fifo).st_mode):
            with open(fifo, "rb") as reader:
                reader.read()

    done = threading.Event()
    watcher = threading.Thread(target=release, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def test_sweep_reports_replace_a_link_or_fifo_at_their_names_and_never_write_through(capsys, tmp_path, swept):
    out, argv = swept
    theirs = tmp_path / "theirs" / "notes.txt"
    theirs.parent.mkdir()
    theirs.write_text("keep me")
    for name in ("report.md", "scaling_params.png"):
        (out / name).unlink()
        (out / name).symlink_to(theirs)
    (out / "report.html").unlink()
    os.mkfifo(out / "report.html")
    with released_if_blocked(out / "report.html"):
        code, err = run(capsys, *argv)  # continues from the cache, then writes the reports again
    assert code == 0, err
    assert theirs.read_text() == "keep me"
    for name in ("report.md", "report.html", "scaling_params.png"):
        assert stat.S_ISREG(os.lstat(out / name).st_mode), name
    assert (out / "report.md").read_text().startswith("# Wellbeing scale sweep")


# --- welfare demo ------------------------------------------------------------------------------------


def test_demo_refuses_a_welfare_demo_folder_it_did_not_make(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = user_folder(tmp_path / "welfare-demo")
    code, err = run(capsys, "demo", "--overwrite", "--model", NO_MODEL)
    assert code == 2, err
    assert "did not write" in err and "notes.txt" in err
    assert snapshot(tmp_path / "welfare-demo") == before


def test_demo_twice_needs_overwrite(capsys, tmp_path, monkeypatch):
    from welfare_offsets.train.demo_cmd import demo_folder

    monkeypatch.chdir(tmp_path)
    demo = demo_folder(overwrite=False)
    (demo / "ledger.sqlite").write_bytes(b"the first demo's ledger")
    before = snapshot(demo)
    code, err = run(capsys, "demo", "--model", NO_MODEL)
    assert code == 2, err
    assert "earlier demo output" in err and "--overwrite" in err
    assert snapshot(demo) == before

    stimuli = write_stimuli(tmp_path / "stimuli.jsonl", n_per_split=12)
    code, err = run(capsys, "demo", "--overwrite", "--model", NO_MODEL, "--stimuli", stimuli, "--report_to", "none")
    assert code == 2 and NO_MODEL in err  # a fresh demo folder, then the (missing) model failed
    assert (demo / "ledger.sqlite").read_bytes() != b"the first demo's ledger"
    assert read_marker(demo)["kind"] == "demo" and not leftovers(tmp_path, "welfare-demo")


def test_demo_help_and_a_mistyped_flag_create_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from welfare_offsets.train.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0 and "--overwrite" in capsys.readouterr().out
    code, err = run(capsys, "demo", "--reply_tokenz", "8")
    assert code == 2 and "--reply_tokenz" in err
    code, err = run(capsys, "demo", "--reply_tokens", "-3")
    assert code == 2 and "reply_tokens" in err
    assert list(tmp_path.iterdir()) == []

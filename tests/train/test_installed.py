"""The package as a user gets it: `pip install .` (not editable) into a fresh venv inside the user's own
project (a git repository), used from there: the project's `train.py`, `configs/` and `eval.py` must not
collide with ours, and its git commit must never be recorded as this code's.

The venv reuses this environment's installed dependencies (no network): a .pth file puts this venv's
site-packages after its own, and the package is built with --no-deps --no-build-isolation. The .pth files
inside this venv (our editable install among them) are not processed, so only the installed copy is seen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="needs git")]

# A user's own project: these modules refuse to be imported by anyone but the user.
USER_FILES = {
    "train.py": 'raise RuntimeError("the user\'s train.py was imported")\n',
    "configs/__init__.py": 'raise RuntimeError("the user\'s configs package was imported")\n',
    "eval.py": 'WHOSE = "user"\n',
    ".gitignore": ".venv/\nruns/\nledger.sqlite*\n",
}

# Runs `welfare` in-process with the user's folder first on sys.path (as `python -c` puts it), then checks
# that nothing of the user's was imported and that the builtin eval was never rebound.
DRIVER = textwrap.dedent("""
    import builtins, sys
    from welfare_offsets.train.cli import main
    code = main(sys.argv[1:])
    clashes = sorted(m for m in ("train", "configs", "eval", "ledger", "interventions") if m in sys.modules)
    assert not clashes, f"imported top-level modules {clashes}"
    assert builtins.eval("1 + 1") == 2
    sys.exit(code)
""")


@pytest.fixture
def project(tmp_path):
    """The user's project: a git repository with a commit, and a fresh venv in it (`.venv`, git-ignored) with
    this working tree installed from a copy, not editable. Returns (project folder, its commit, venv python)."""
    project = tmp_path / "project"
    commit = _user_project(project)
    source = tmp_path / "source"
    files = (
        subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = project / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
        ],
        check=True,
        env=_clean_env(venv),
    )
    shutil.rmtree(source)  # nothing may come from the copy it was built from
    return project, commit, python


def _clean_env(venv: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("GIT_")
    }
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    return env


def _user_project(folder: Path) -> str:
    """The user's own git repository with its train.py, configs/ and eval.py; returns its commit."""
    folder.mkdir()
    for name, text in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    git = ["git", "-C", str(folder), "-c", "user.name=u", "-c", "user.email=u@u", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the user's project"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def test_installed_package_works_from_the_users_project(project, tiny):
    project, users_commit, installed = project
    venv = installed.parent.parent
    env = _clean_env(venv)

    def run(*argv, check=True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(map(str, argv)), cwd=project, env=env, capture_output=True, text=True, timeout=600)
        if check:
            assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
        return done

    # Our code is the installed copy, not this checkout's editable install.
    where = run(
        installed,
        "-c",
        "import welfare_offsets, welfare_offsets.train.cli as cli; "
        "print(list(welfare_offsets.__path__)); print(cli.__file__)",
    ).stdout
    assert str(REPO) not in where and where.count(str(venv)) == 2, where

    # `import eval` is the user's file, and importing ours never rebinds the builtin.
    assert run(installed, "-c", "import eval; print(eval.WHOSE)").stdout.strip() == "user"
    run(installed, "-c", "import welfare_offsets.eval.experiences, welfare_offsets.train.cli; assert eval('1') == 1")

    assert "recipes" in run("welfare", "--help").stdout
    listing = run("welfare", "recipes").stdout
    assert "offset/dysphoric_exposure" in listing and "accelerate/ddp" in listing
    assert Path(run("welfare", "recipes", "path", "accelerate/ddp").stdout.strip()).is_relative_to(venv)

    # The trap provenance must avoid: git, asked from the installed package's folder, finds the user's repository.
    package = run(installed, "-c", "import welfare_offsets.eval as e; print(e.__path__[0])").stdout.strip()
    assert run("git", "-C", package, "rev-parse", "HEAD").stdout.strip() == users_commit

    # A tiny session from a packaged recipe, run in-process from the user's folder.
    ledger, out = project / "ledger.sqlite", project / "runs" / "exposure"
    run("welfare", "ledger", "fund", "--ledger", ledger, "--account", "lab", "--hours", "1")
    run(
        installed,
        "-c",
        DRIVER,
        "offset",
        "exposure",
        "--config",
        "offset/dysphoric_exposure",
        "--model",
        tiny["model"],
        "--stimuli",
        tiny["stimuli"],
        "--ledger",
        ledger,
        "--account",
        "lab",
        "--budget_hours",
        "0.1",
        "--max_episodes",
        "4",
        "--eval_max_items",
        "8",
        "--eval_bootstrap",
        "200",
        "--report_to",
        "none",
        "--output_dir",
        out,
    )
    text = (out / "results.json").read_text()
    assert users_commit not in text and users_commit[:12] not in text
    results = json.loads(text)
    assert _values(results, "commit") == [None] and _values(results, "dirty") == [None]
    assert _values(results, "welfare-offsets") == [metadata.version("welfare-offsets")]


def _values(tree, key: str) -> list:
    """Every value stored under `key` anywhere in a JSON tree, deduplicated in order."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found += [v for k, v in node.items() if k == key]
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return [v for k, v in enumerate(found) if v not in found[:k]]

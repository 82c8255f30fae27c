"""Provenance names this code's own git state, never that of a repository it was installed into."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from welfare_offsets.eval.common import outputs

pytestmark = pytest.mark.skipif(
    subprocess.run(["git", "--version"], capture_output=True).returncode != 0, reason="needs git"
)


def git_repo(folder: Path, project: str) -> str:
    """`folder` as a git work tree whose pyproject.toml names `project`, with one commit; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{project}"\nversion = "1.0"\n')
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pyproject.toml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def run_from(monkeypatch, source_root: Path) -> dict:
    """provenance() as if outputs.py were installed under `source_root` (the folder holding eval/)."""
    fake = source_root / "eval" / "common" / "outputs.py"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.touch()
    monkeypatch.setattr(outputs, "__file__", str(fake))
    return outputs.provenance()


def test_an_install_inside_the_users_repository_records_no_commit(tmp_path, monkeypatch):
    users_commit = git_repo(tmp_path / "app", "my-app")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "app" / ".git"))  # not even when git is pointed there
    installed = tmp_path / "app" / ".venv" / "lib" / "python3.11" / "site-packages" / "welfare_offsets"
    recorded = run_from(monkeypatch, installed)
    assert recorded["git"] == {"commit": None, "dirty": None}
    assert users_commit not in str(recorded)
    assert recorded["versions"]["welfare-offsets"]  # the installed version, always


def test_another_projects_checkout_records_no_commit(tmp_path, monkeypatch):
    git_repo(tmp_path / "other", "other-project")
    assert run_from(monkeypatch, tmp_path / "other")["git"] == {"commit": None, "dirty": None}


def test_a_checkout_of_this_project_records_its_commit_and_dirty_flag(tmp_path, monkeypatch):
    commit = git_repo(tmp_path / "clone", "welfare-offsets")
    assert run_from(monkeypatch, tmp_path / "clone")["git"] == {"commit": commit, "dirty": False}
    (tmp_path / "clone" / "pyproject.toml").write_text('[project]\nname = "welfare-offsets"\nversion = "1.1"\n')
    assert run_from(monkeypatch, tmp_path / "clone")["git"] == {"commit": commit, "dirty": True}

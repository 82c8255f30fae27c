"""The atomic writer (eval/common/outputs.py) replaces whatever has the name, and never writes through it."""

from __future__ import annotations

import os
import stat

import pytest

from welfare_offsets.eval.common.output_folder import temporary_path
from welfare_offsets.eval.common.outputs import write_figure, write_text_file


@pytest.fixture
def theirs(tmp_path):
    path = tmp_path / "theirs" / "notes.txt"
    path.parent.mkdir()
    path.write_text("keep me")
    return path


def test_a_link_at_the_name_is_replaced_not_written_through(tmp_path, theirs):
    path = tmp_path / "report.md"
    path.symlink_to(theirs)
    write_text_file(path, "ours")
    assert theirs.read_text() == "keep me"
    assert not path.is_symlink() and path.read_text() == "ours"


def test_a_link_or_fifo_at_the_temporary_name_is_never_written_through(tmp_path, theirs):
    """A temporary name is predictable (it holds the pid): what is found there is removed, not opened."""
    path = tmp_path / "report.md"
    temporary_path(path).symlink_to(theirs)
    write_text_file(path, "ours")
    assert theirs.read_text() == "keep me" and path.read_text() == "ours"
    os.mkfifo(temporary_path(path))  # opening it to write would block
    write_text_file(path, "again")
    assert path.read_text() == "again" and not os.path.lexists(temporary_path(path))


def test_a_fifo_at_the_name_is_replaced_without_blocking(tmp_path):
    path = tmp_path / "report.html"
    os.mkfifo(path)
    write_text_file(path, "<html></html>")
    assert stat.S_ISREG(os.lstat(path).st_mode) and path.read_text() == "<html></html>"


def test_a_figure_is_written_whole_over_a_link_and_never_through_it(tmp_path, theirs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "plot.png"
    path.symlink_to(theirs)
    figure = plt.figure()
    write_figure(figure, path, dpi=20)
    plt.close(figure)
    assert theirs.read_text() == "keep me"
    assert not path.is_symlink() and path.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "theirs"]

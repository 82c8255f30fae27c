"""Output folders that never destroy what welfare-offsets did not write.

Every folder a command writes carries a marker file (`MARKER`) naming the kind of output and the version
that made it. Before anything is written, `claim` looks at the destination without following links:
- missing or empty: ours to create;
- holding our marker of the same kind: replaced only with --overwrite (or, for folders that resume in
  place, such as a session's or a sweep's, continued);
- anything else (someone else's files, a file, a symbolic link even a dangling one, the working
  directory or a folder above it): refused, and nothing is touched.
Folders are created and replaced by renaming a complete staging folder into place (`swap_in`), so a crash
never leaves a half folder, and an earlier output is only deleted once the new one is in place.

A command that says what it writes (`files`: an evaluation's staged output, a sweep, a session) has the
marker record it: the files the staged folder held when it was swapped in, and the patterns of what an
in-place folder will hold ("cache/*.json"; "checkpoint-*/**" for everything under such folders). --overwrite then deletes such a folder only if nothing else has been put in it since: a file of
the user's (a ledger's .sessions folder among them), or a ledger (any SQLite database, its -wal/-shm/-journal)
even under one of our names, is refused, naming it. An older version's marker records nothing: there only the command's
declared patterns count, so an evaluation's folder (which declares none) is refused, asking the user to
delete it by hand.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError

MARKER = ".welfare-offsets.json"
_TOOL = "welfare-offsets"
_TEMPORARY = re.compile(r"\.(.+)\.tmp-[0-9]+")  # `temporary_path` of a file, left by a killed writer
_SQLITE_HEADER = b"SQLite format 3\x00"  # how every SQLite database file begins
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # the files SQLite keeps beside a database it writes
_ANYTHING_BELOW = "**"  # as the last part of a `files` pattern ("checkpoint-*/**"): every file under it


class OutputError(InputError):
    """The output folder cannot be written, or may not be: it holds what we did not write."""


@dataclass(frozen=True)
class Claim:
    """A destination checked by `claim`: `state` is "new", "empty" or "ours" (carries our marker); `files`
    as `claim` was given them."""

    path: Path
    kind: str
    state: str
    flag: str
    files: tuple[str, ...] | None = None


def output_path(path: str | os.PathLike) -> Path:
    """Absolute, `~` expanded, `..` folded by name; a final symbolic link is kept, never followed."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def claim(
    path: str | os.PathLike,
    kind: str,
    *,
    overwrite: bool = False,
    resumable: bool = False,
    flag: str = "--out",
    files: tuple[str, ...] | None = None,
) -> Claim:
    """May `path` receive a `kind` output? Raises OutputError saying why not and what to do; writes nothing.

    `resumable`: an own folder may be continued in place without --overwrite (a sweep's cache, a
    session's checkpoints; the caller applies its own rules to what is inside).
    `files`: glob patterns ("cache/*.json") of what the command writes into the folder in place, beside
    what it records in the marker when it swaps a staged folder in; --overwrite then deletes an earlier
    output only if it holds nothing else (module docstring). None: the folder is replaced whole."""
    path = output_path(path)
    where = f"{flag} {path}"
    _refuse_working_directory(path, where, flag)
    refuse_link(path, where)
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return Claim(path, kind, "new", flag, files)
    except OSError as err:
        raise OutputError(f"{where}: cannot inspect it ({err.strerror or err}); choose a folder you can write") from err
    if not stat.S_ISDIR(status.st_mode):
        raise OutputError(f"{where} exists and is not a folder; choose another path")
    entries = _entries(path, where)
    if not entries:
        return Claim(path, kind, "empty", flag, files)
    marker = read_marker(path)
    if marker is None:
        raise OutputError(
            f"{where} holds files welfare-offsets did not write ({_some(entries)}); nothing was touched: "
            f"choose an empty or new folder (--overwrite only replaces folders with our {MARKER} marker)"
        )
    if marker.get("kind") != kind:
        raise OutputError(
            f"{where} holds a {marker.get('kind')!r} output of welfare-offsets, not a {kind!r} one; "
            "nothing was touched: choose another folder"
        )
    if not (overwrite or resumable):
        raise OutputError(
            f"{where} already holds an earlier {kind} output (made {marker.get('created_utc')}); "
            "nothing was touched: pass --overwrite to replace it, or choose a new folder"
        )
    if overwrite and files is not None:
        _refuse_what_we_did_not_write(path, where, kind, files, marker.get("files"))
    return Claim(path, kind, "ours", flag, files)


def refuse_link(path: Path, where: str) -> None:
    """An output path that is a symbolic link, even a dangling one, is refused: writing through it would
    write somewhere that was not named."""
    if os.path.islink(path):
        raise OutputError(
            f"{where} is a symbolic link (to {os.readlink(path)}); links are never followed, so "
            "nothing was written: pass the real folder or a new path"
        )


def temporary_path(path: Path) -> Path:
    """Where an atomic writer puts `path`'s new content before renaming it into place (hidden, beside it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def read_marker(folder: Path) -> dict | None:
    """Our marker in `folder`, or None where there is none (a link named like it does not count)."""
    try:
        fd = os.open(folder / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == _TOOL else None


def staging_folder(destination: Claim) -> Path:
    """A new hidden folder beside the destination, holding only our marker; the output is built in it."""
    parent = destination.path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.path.name}.staging-", dir=parent))
        os.chmod(staging, 0o777 & ~_umask())  # it becomes the output folder: the permissions a mkdir gives
        _write_marker(staging, destination.kind, destination.files)
    except OSError as err:
        raise OutputError(
            f"cannot write the output folder {destination.path}: {err.strerror or err}; "
            f"choose a folder you can write to with {destination.flag}"
        ) from err
    return staging


def swap_in(staging: Path, destination: Claim, *, overwrite: bool) -> Path:
    """Rename the complete `staging` folder into place. The destination is checked again first (it may
    have changed during a long run); an earlier output of ours is deleted only after the new one is in.
    Where the command says what it writes, the marker records it with every file the staged folder holds."""
    current = claim(
        destination.path, destination.kind, overwrite=overwrite, flag=destination.flag, files=destination.files
    )
    if destination.files is not None:
        _write_marker(staging, destination.kind, (*destination.files, *_held_files(staging)))
    path = current.path
    old = None
    if current.state != "new":
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.rename(path, old)
    os.rename(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def open_in_place(destination: Claim, *, overwrite: bool) -> Path:
    """Make sure a folder written in place (a session's, a sweep's, the demo's) exists with our marker:
    created if new or empty, replaced by a fresh one if ours and `overwrite`, else continued as it is.
    Safe when several processes do it at once: the first rename wins and the others find our folder."""
    if destination.state == "ours" and not overwrite:
        return destination.path
    staging = staging_folder(destination)
    try:
        if destination.state == "ours":
            return swap_in(staging, destination, overwrite=True)
        try:
            os.rename(staging, destination.path)  # takes the place of an empty folder, never of a full one
            return destination.path
        except OSError:  # another process made it first: fine if it is ours, refused (untouched) if not
            return claim(destination.path, destination.kind, resumable=True, flag=destination.flag).path
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_marker(folder: Path, kind: str, files: tuple[str, ...] | None) -> None:
    try:
        version = metadata.version("welfare-offsets")
    except metadata.PackageNotFoundError:
        version = None
    marker = {
        "tool": _TOOL,
        "kind": kind,
        "version": version,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if files is not None:
        marker["files"] = sorted(set(files))
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _held_files(folder: Path, prefix: str = "") -> list[str]:
    """Every file under our staging `folder` but the marker, as a pattern matching only itself."""
    held = []
    for entry in os.scandir(folder):
        name = prefix + glob.escape(entry.name)
        if entry.is_dir(follow_symlinks=False):
            held += _held_files(Path(entry.path), name + "/")
        elif name != MARKER:
            held.append(name)
    return held


def _refuse_what_we_did_not_write(path: Path, where: str, kind: str, files: tuple[str, ...], recorded) -> None:
    """--overwrite deletes an earlier output only if everything in it is ours: what the command declares
    (`files`), what the marker records (`recorded`), or a temporary file of ours left by a killed writer."""
    known = isinstance(recorded, list) and all(isinstance(p, str) for p in recorded)
    patterns = [tuple(p.split("/")) for p in (*files, *(recorded if known else ()))]
    ledgers, foreign = [], []
    _survey(path, (), patterns, ledgers, foreign, where)
    _refuse_ledgers(ledgers, where)
    if foreign and not (known or files):
        raise OutputError(
            f"{where} holds an earlier {kind} output of an older welfare-offsets, which did not record the files "
            f"it wrote, so --overwrite cannot tell them from files of yours ({_some(foreign)}); nothing was "
            "touched: delete the folder by hand once nothing in it is needed, or choose a new folder"
        )
    if foreign:
        raise OutputError(
            f"{where} holds files welfare-offsets did not write there ({_some(foreign)}); --overwrite would delete "
            f"them with the earlier {kind} output, so nothing was touched: move them out of the folder, or "
            "choose a new folder"
        )


def _refuse_ledgers(ledgers: list[str], where: str) -> None:
    if ledgers:
        raise OutputError(
            f"{where} holds a ledger or another SQLite database ({_some(ledgers)}); --overwrite never deletes "
            "one, so nothing was touched: move it out of the folder, or choose a new folder"
        )


def _survey(folder: Path, at: tuple[str, ...], patterns: list, ledgers: list, foreign: list, where: str) -> None:
    """Sort what `folder` (at relative path `at`) holds, links not followed, into `ledgers` and `foreign`
    (what no pattern matches); a folder no pattern reaches into is foreign as a whole."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        parts = (*at, entry.name)
        name = "/".join(parts)
        if _is_ledger_part(entry, where):
            ledgers.append(name)
        elif entry.is_dir(follow_symlinks=False):
            if any(_reaches_into(parts, p) for p in patterns):
                _survey(Path(entry.path), parts, patterns, ledgers, foreign, where)
            else:
                foreign.append(name + "/")
        elif parts != (MARKER,):
            temporary = _TEMPORARY.fullmatch(entry.name)
            written = (*at, temporary.group(1)) if temporary else parts
            if not any(_names(written, p) for p in patterns):
                foreign.append(name)


def _reaches_into(folder: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether `pattern` names files inside `folder` (a last part `**` stands for anything below)."""
    if pattern[-1] == _ANYTHING_BELOW:
        return _matches(folder, pattern[:-1])
    return len(pattern) > len(folder) and _matches(folder, pattern)


def _names(file: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether `pattern` names `file`: part by part, or (ending in `**`) any file below what it names."""
    if pattern[-1] == _ANYTHING_BELOW:
        return len(file) >= len(pattern) and _matches(file, pattern[:-1])
    return len(pattern) == len(file) and _matches(file, pattern)


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether `parts` match the first parts of `pattern`, each by glob."""
    return all(fnmatchcase(part, glob_part) for part, glob_part in zip(parts, pattern))


def _is_ledger_part(entry: os.DirEntry, where: str) -> bool:
    """A ledger's file (any SQLite database: it begins with SQLite's header) or one of SQLite's companions. (A
    ledger's .sessions folder is refused too, as a folder we did not write: eval/ knows nothing of ledgers.)"""
    if entry.name.endswith(_SQLITE_COMPANIONS):
        return True
    if not entry.is_file(follow_symlinks=False):
        return False
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            return f.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError as err:
        raise OutputError(
            f"{where}: cannot read {entry.path} to check that it is no ledger ({err.strerror or err}); "
            "nothing was touched: move it out of the folder, or choose a new folder"
        ) from err


def _some(names: list[str]) -> str:
    """The first three `names` (sorted), and "..." for the rest."""
    return ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _entries(path: Path, where: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as err:
        raise OutputError(f"{where}: cannot list it ({err.strerror or err}); choose a folder you can write") from err


def _refuse_working_directory(path: Path, where: str, flag: str) -> None:
    """Replacing the folder a command runs in (or one above it) would pull it out from under the user."""
    cwd = Path(os.path.realpath(os.getcwd()))
    real = Path(os.path.realpath(path))
    if real == cwd or real in cwd.parents:
        raise OutputError(
            f"{where} is the working directory{'' if real == cwd else ' or a folder above it'}; "
            f"nothing was touched: name a new subfolder, e.g. {flag} runs/my-run"
        )

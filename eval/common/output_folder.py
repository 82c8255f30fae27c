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
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError

MARKER = ".welfare-offsets.json"
_TOOL = "welfare-offsets"


class OutputError(InputError):
    """The output folder cannot be written, or may not be: it holds what we did not write."""


@dataclass(frozen=True)
class Claim:
    """A destination checked by `claim`: `state` is "new", "empty" or "ours" (carries our marker)."""

    path: Path
    kind: str
    state: str
    flag: str


def output_path(path: str | os.PathLike) -> Path:
    """Absolute, `~` expanded, `..` folded by name; a final symbolic link is kept, never followed."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def claim(
    path: str | os.PathLike, kind: str, *, overwrite: bool = False, resumable: bool = False, flag: str = "--out"
) -> Claim:
    """May `path` receive a `kind` output? Raises OutputError saying why not and what to do; writes nothing.

    `resumable`: an own folder may be continued in place without --overwrite (a sweep's cache, a
    session's checkpoints; the caller applies its own rules to what is inside)."""
    path = output_path(path)
    where = f"{flag} {path}"
    _refuse_working_directory(path, where, flag)
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return Claim(path, kind, "new", flag)
    except OSError as err:
        raise OutputError(f"{where}: cannot inspect it ({err.strerror or err}); choose a folder you can write") from err
    if stat.S_ISLNK(status.st_mode):
        raise OutputError(
            f"{where} is a symbolic link (to {os.readlink(path)}); links are never followed, so "
            "nothing was written: pass the real folder or a new path"
        )
    if not stat.S_ISDIR(status.st_mode):
        raise OutputError(f"{where} exists and is not a folder; choose another path")
    entries = _entries(path, where)
    if not entries:
        return Claim(path, kind, "empty", flag)
    marker = read_marker(path)
    if marker is None:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputError(
            f"{where} holds files welfare-offsets did not write ({shown}); nothing was touched: "
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
    return Claim(path, kind, "ours", flag)


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
        _write_marker(staging, destination.kind)
    except OSError as err:
        raise OutputError(
            f"cannot write the output folder {destination.path}: {err.strerror or err}; "
            f"choose a folder you can write to with {destination.flag}"
        ) from err
    return staging


def swap_in(staging: Path, destination: Claim, *, overwrite: bool) -> Path:
    """Rename the complete `staging` folder into place. The destination is checked again first (it may
    have changed during a long run); an earlier output of ours is deleted only after the new one is in."""
    current = claim(destination.path, destination.kind, overwrite=overwrite, flag=destination.flag)
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


def _write_marker(folder: Path, kind: str) -> None:
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
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


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

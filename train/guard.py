"""What every command guards: how it ends when something fails, and the ledger from its outputs.

Exit codes, for `welfare` and the `accelerate launch` entry points alike:
  0  done;
  2  an expected failure (bad input, an unusable output folder, a ledger problem, a full disk or a
     permission denied): one line that says what, where and how to fix it;
  1  an internal error (a bug): one line, and the full traceback written to a crash log it names;
  130 interrupted (Ctrl-C);
  143 terminated (SIGTERM: what a scheduler, `accelerate launch` or torchrun sends to stop a job).
Ctrl-C and SIGTERM unwind like any failure, so a session still settles its hours in the ledger on the way out.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import traceback
from datetime import datetime, timezone
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.ledger.errors import LedgerError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that it unwinds (and settles) as Ctrl-C does."""


def _terminate(signum, frame):
    raise Terminated()


def run_guarded(body, argv: list[str], prog: str) -> int:
    """Run `body(argv)` and turn every failure into its exit code and one line on stderr."""
    handles_term = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handles_term else None
    try:
        return int(body(argv) or 0)
    except (InputError, LedgerError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        print(
            f"{prog}: error: {err.strerror or err}{where}; check that path (free space, permissions) or "
            "choose another, and run again",
            file=sys.stderr,
        )
        return 2
    except Exception as err:  # a bug: one line here, the whole story in the crash log
        message = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"{prog}: internal error: {type(err).__name__}: {message}; {_write_crash_log(prog)}", file=sys.stderr)
        return 1
    finally:
        if handles_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _write_crash_log(prog: str) -> str:
    """The current exception's traceback in a crash log; returns the sentence that says where."""
    from welfare_offsets.eval.subject import cache_dir

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = f"{prog} ({' '.join(sys.argv)})\n{traceback.format_exc()}"
    for folder in (cache_dir(), Path(tempfile.gettempdir())):
        path = folder / f"crash-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return f"full traceback written to {path}"
        except OSError:
            continue
    return "the traceback could not be written anywhere (no writable cache or temp folder)"


def refuse_ledger_paths(output: str | os.PathLike, ledger: str | os.PathLike | None, flag: str) -> None:
    """An output folder must not be, sit inside, or contain the ledger (its file, -wal/-shm, .sessions):
    replacing or filling it would destroy the ledger. `ledger` is the one the command uses (None: default;
    a ledger on a PostgreSQL server has no files here)."""
    from welfare_offsets.ledger.location import (
        COMPANION_SUFFIXES,
        SESSIONS_SUFFIX,
        check_not_ledger,
        is_server_url,
        resolve_ledger_path,
    )

    check_not_ledger(output, ledger, what=flag)
    base = resolve_ledger_path(ledger)
    if is_server_url(base):
        return
    real = Path(os.path.realpath(os.path.expanduser(os.fspath(output))))
    for part in (base, *(base.with_name(base.name + s) for s in (*COMPANION_SUFFIXES, SESSIONS_SUFFIX))):
        if real in Path(os.path.realpath(part)).parents:
            raise LedgerError(
                f"{flag} {real} holds the ledger {base}; writing that folder could destroy it, "
                "so nothing was written: choose an output folder outside it"
            )

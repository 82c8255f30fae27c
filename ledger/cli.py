"""`welfare ledger ...`: fund and audit the GPU-hour ledger from a shell.

Exit codes: 0 done; 1 `verify` found the ledger broken (the first bad seq and why are printed),
`backup` copied a broken one, or `copy` refused to; 2 bad input, or an I/O or server error such as a full
disk or an unreachable server (one line says what and how to fix it) with the ledger unchanged, or an
entry a command reads is malformed (the line names it and says to run `verify`). No output path
(`export --output`, `report --png`, `backup`) may be the ledger or a part of it
(`ledger.location.check_not_ledger`).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from welfare_offsets.ledger.accounts import check_hours, check_name
from welfare_offsets.ledger.book import Ledger
from welfare_offsets.ledger.chain import Head, VerifyResult, canonical_json
from welfare_offsets.ledger.errors import BrokenLedger, LedgerError
from welfare_offsets.ledger.export import EXPORT_FORMATS
from welfare_offsets.ledger.files import replacing
from welfare_offsets.ledger.location import ENV_VAR, check_not_ledger, shown
from welfare_offsets.ledger.report import plot_recovery, print_report
from welfare_offsets.ledger.signing import KEY_ENV_VAR, Keyring, generate_key

KINDS = ("fund", "transfer", "reserve", "settle", "correction", "measurement")


def _argument_type(check: Callable[[str], object]) -> Callable[[str], object]:
    """Run a library check inside argparse, so bad input fails before the ledger is even opened."""

    def parse(text: str) -> object:
        try:
            return check(text)
        except LedgerError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _hours_from_text(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LedgerError(f"hours must be a finite number of accelerator-hours, got {text!r} (e.g. 2.5)") from None
    return check_hours(value, field="hours")


_hours = _argument_type(_hours_from_text)
_name = _argument_type(lambda text: check_name(text, field="name"))
_anchor = _argument_type(Head.parse)


def _moment(text: str) -> datetime:
    """A --since/--until time in UTC, converted here, where a time that UTC puts outside the years 1 to
    9999 (0001-01-01T00:00+01:00) can be refused as bad input."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or time; use e.g. 2025-06-01 or 2025-06-01T12:00 "
            "(UTC unless an offset is given)"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is outside the years 1 to 9999 once converted to UTC; give a time within them"
        ) from None


def _parser() -> argparse.ArgumentParser:
    # --ledger is accepted before and after the command; SUPPRESS keeps one from erasing the other.
    ledger_option = argparse.ArgumentParser(add_help=False)
    ledger_option.add_argument(
        "--ledger",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"ledger file, or postgresql:// URL of a ledger's database (default: ${ENV_VAR}, else "
        "~/.local/share/welfare-offsets/ledger.sqlite)",
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--session", type=_name, help="only entries of this session")
    filters.add_argument("--kind", choices=KINDS, help="only entries of this kind")
    filters.add_argument("--since", type=_moment, help="only entries at or after this UTC time")
    filters.add_argument("--until", type=_moment, help="only entries before this UTC time")

    parser = argparse.ArgumentParser(
        prog="welfare ledger", parents=[ledger_option], description="Fund and audit the GPU-hour ledger."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=summary, parents=[ledger_option, *parents])

    fund = command("fund", "Give an account accelerator-hours.")
    fund.add_argument("--account", required=True, type=_name)
    fund.add_argument("--hours", required=True, type=_hours)
    fund.add_argument("--note", default="")
    transfer = command("transfer", "Move accelerator-hours between accounts (refused if the source cannot cover them).")
    transfer.add_argument("--from", dest="source", required=True, type=_name)
    transfer.add_argument("--to", dest="destination", required=True, type=_name)
    transfer.add_argument("--hours", required=True, type=_hours)
    transfer.add_argument("--note", default="")
    balance = command("balance", "Available, reserved and spent hours per account.")
    balance.add_argument("--account", type=_name, help="only this account")
    command("show", "Print entries, one per line (postings are in micro-hours).", filters)
    report = command("report", "Per-session and total hours, energy and wellbeing, as a table and a PNG.")
    report.add_argument(
        "--png",
        type=Path,
        default=Path("ledger_report.png"),
        help="where to write the plot (default: ./ledger_report.png)",
    )
    verify = command(
        "verify", "Check the hash chain, the accounting and the schema; exit 1 with the first bad seq if it is broken."
    )
    verify.add_argument(
        "--anchor", type=_anchor, help="a SEQ:HASH printed earlier by `head`, to detect truncation or rewrites"
    )
    verify.add_argument(
        "--keyring",
        type=Path,
        help="the auditor's keyring (YAML: keys with identity and roles): every entry must be signed by one of "
        "its keys, in a role that allows the entry's kind",
    )
    keygen = commands.add_parser(
        "keygen",
        help="Write a new signing key for a writer; print its public key for the auditor's keyring.",
        description="Write a new ed25519 signing key (mode 0600, never over an existing file) and print its "
        "public key. A writer signs every entry it appends when $WELFARE_LEDGER_KEY names the key file.",
    )
    keygen.add_argument("path", type=Path, metavar="KEY", help="a new file for the private key")
    command("head", "Print the last entry as SEQ:HASH, to keep elsewhere as an anchor.")
    export = command("export", "Write entries as JSONL or CSV.", filters)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    correct = command("correct", "Reverse a fund or transfer, or retract a measurement, by a new entry.")
    correct.add_argument("--seq", required=True, type=int)
    correct.add_argument("--reason", required=True)
    command("repair", "Settle sessions whose process died without settling.")
    backup = command(
        "backup",
        "Write a consistent single-file copy of the ledger (safe while sessions run; "
        "never copy the ledger file with cp).",
    )
    backup.add_argument("destination", type=Path, metavar="DEST", help="a new file (never overwritten)")
    copy = commands.add_parser(
        "copy",
        help="Copy a ledger to another store, every entry and hash as it is (SQLite file <-> PostgreSQL).",
        description="Copy the ledger SRC (a file or a postgresql:// URL) to DEST: a new SQLite file, or a "
        "PostgreSQL database holding no ledger yet. A broken ledger is not copied; the copy is verified and kept "
        "only if it ends at an entry SRC holds, with the same hash. Stop SRC's writers first to move a ledger.",
    )
    copy.add_argument("source", metavar="SRC", help="the ledger to copy: a file or a postgresql:// URL")
    copy.add_argument("destination", metavar="DEST", help="a new file, or a postgresql:// URL of an empty database")
    return parser


def _filters(args: argparse.Namespace) -> dict:
    return {"session": args.session, "kind": args.kind, "since": args.since, "until": args.until}


def _run(args: argparse.Namespace, ledger: Ledger) -> int:
    if args.command == "fund":
        entry = ledger.fund(args.account, args.hours, note=args.note)
        print(
            f"entry {entry.seq}: {args.account} funded with {args.hours:g} h; "
            f"available {ledger.balance(args.account).available_hours:g} h"
        )
    elif args.command == "transfer":
        entry = ledger.transfer(args.source, args.destination, args.hours, note=args.note)
        print(f"entry {entry.seq}: moved {args.hours:g} h from {args.source} to {args.destination}")
    elif args.command == "balance":
        _print_balances(ledger, args.account)
    elif args.command == "show":
        for entry in ledger.entries(**_filters(args)):
            print(f"{entry.seq:>6}  {entry.time}  {entry.kind:<11}  {canonical_json(entry.payload)}")
    elif args.command == "report":
        check_not_ledger(args.png, ledger.path, what="--png")
        report = ledger.report()
        with replacing(args.png, what="--png") as staging:
            print_report(report, _console())
            plot_recovery(report, staging)
        print(f"plot: {args.png}")
    elif args.command == "verify":
        keyring = Keyring.load(args.keyring) if args.keyring else None
        result = ledger.verify(args.anchor, keyring=keyring)
        if not result.ok:
            print(_broken(ledger, result), file=sys.stderr)
            return 1
        signed = (
            "every entry signed by a key of the keyring, in its role"
            if keyring
            else f"{result.signed} signed, {result.entries - result.signed} unsigned (pass --keyring to check signers)"
        )
        print(f"ledger intact: {result.entries} entries, head {result.head}; {signed}")
    elif args.command == "head":
        print(ledger.head())
    elif args.command == "export":
        if args.output is None:
            ledger.export(sys.stdout, args.format, **_filters(args))
        else:
            check_not_ledger(args.output, ledger.path, what="--output")
            with (
                replacing(args.output, what="--output") as staging,
                open(staging, "w", encoding="utf-8", newline="") as out,
            ):
                count = ledger.export(out, args.format, **_filters(args))
            print(f"wrote {count} entries to {args.output}")
    elif args.command == "correct":
        entry = ledger.correct(args.seq, args.reason)
        print(f"entry {entry.seq} corrects entry {args.seq}")
    elif args.command == "repair":
        _repair(ledger)
    elif args.command == "backup":
        return _backup(ledger, args.destination)
    elif args.command == "copy":
        return _copy(ledger, args.destination)
    return 0


def _repair(ledger: Ledger) -> None:
    outcomes = ledger.repair()
    for outcome in outcomes:
        settlement = outcome.settlement
        if settlement is None:
            print(f"{outcome.session}: still running, left open")
        elif not outcome.by_this_repair:
            print(f"{outcome.session}: settled meanwhile by another process (entry {settlement.seq})")
        else:
            print(f"{outcome.session}: settled by entry {settlement.seq} ({settlement.payload['basis']})")
    if not outcomes:
        print("no open sessions")


def _backup(ledger: Ledger, destination: Path) -> int:
    result = ledger.backup(destination)
    if not result.ok:
        print(
            f"wrote {destination}, a faithful copy of a BROKEN ledger (seq {result.first_bad_seq}: {result.reason})",
            file=sys.stderr,
        )
        return 1
    print(f"backed up {result.entries} entries (head {result.head}) to {destination}")
    return 0


def _copy(ledger: Ledger, destination: str) -> int:
    result = ledger.copy(destination)
    if not result.ok:
        print(f"{_broken(ledger, result)}. Nothing was copied", file=sys.stderr)
        return 1
    print(
        f"copied {result.entries} entries (head {result.head}) from {ledger.path} to {shown(destination)}; the copy verifies"
    )
    return 0


def _console():
    """rich wraps at 80 columns when not on a terminal; a report piped to a file should not wrap."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _print_balances(ledger: Ledger, account: str | None) -> None:
    from rich.table import Table

    balances = [ledger.balance(account)] if account else list(ledger.balances().values())
    table = Table(title=f"Accelerator-hours in {ledger.path}")
    for column in ("account", "available h", "reserved h (open)", "spent h"):
        table.add_column(column, justify="left" if column == "account" else "right")
    for balance in balances:
        table.add_row(
            balance.account, f"{balance.available_hours:g}", f"{balance.reserved_hours:g}", f"{balance.spent_hours:g}"
        )
    _console().print(table)


def _broken(ledger: Ledger, result: VerifyResult) -> str:
    """What a failed verify says: never to repair, which would settle on top of entries that cannot be
    trusted (a session that looks open may have settled in the entries that were lost or rewritten)."""
    where = f"at seq {result.first_bad_seq}" if result.first_bad_seq else "outside its entries"
    return (
        f"ledger {ledger.path} is BROKEN {where}: {result.reason}. Do not write to it or repair it: "
        "restore it from a backup (one made by `welfare ledger backup`) and check that against your last "
        "anchor (`welfare ledger verify --ledger BACKUP --anchor SEQ:HASH`), or send it to the ledger's "
        "auditor as it is"
    )


def _warn_abandoned(ledger: Ledger) -> None:
    try:
        abandoned = ledger.abandoned_sessions()
    # an auditor without access to the session lock files; a malformed entry the command itself did not need
    except (OSError, BrokenLedger) as error:
        print(f"note: could not check for sessions that died without settling ({error})", file=sys.stderr)
        return
    if not abandoned:
        return
    names = ", ".join(session.session for session in abandoned)
    result = ledger.verify()  # only here, when there is something to repair: advice to repair needs it
    if not result.ok:
        print(
            f"warning: {len(abandoned)} session(s) look unsettled ({names}), but {_broken(ledger, result)}",
            file=sys.stderr,
        )
        return
    print(
        f"warning: {len(abandoned)} session(s) died without settling ({names}); if `welfare ledger verify "
        "--anchor SEQ:HASH` passes with your last anchor (a rolled-back copy may have lost their settlements), "
        "run `welfare ledger repair` to settle them",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad input, 0 on --help
        return int(exit_.code or 0)
    if args.command == "keygen":  # touches no ledger
        try:
            public = generate_key(args.path)
        except LedgerError as error:
            return _failed(error)
        print(f"private key: {args.path} (keep it secret; writers use it through ${KEY_ENV_VAR})")
        print(f"public key for the auditor's keyring: {public}")
        return 0
    try:
        if args.command == "copy" and hasattr(args, "ledger"):
            raise LedgerError("copy names the ledger it copies as SRC; leave --ledger out")
        location = args.source if args.command == "copy" else getattr(args, "ledger", None)
        ledger = Ledger.open(location, create=args.command in ("fund",))
    except (LedgerError, OSError, sqlite3.Error) as error:
        return _failed(error)
    try:
        code = _run(args, ledger)
        if args.command != "repair" and code == 0:  # a failed verify or backup has said what to do instead
            _warn_abandoned(ledger)
        return code
    except (LedgerError, OSError, sqlite3.Error) as error:
        return _failed(error, ledger)
    finally:
        ledger.close()


def _failed(error: Exception, ledger: Ledger | None = None) -> int:
    """One line on standard error and exit 2; a write the error interrupted was rolled back by SQLite."""
    if isinstance(error, LedgerError):
        message = str(error)
    elif isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        message = f"{error.strerror or error}{where}; the command stopped, and the ledger holds no partial entry"
    else:
        where = f" in {ledger.path}" if ledger is not None else ""
        message = (
            f"SQLite failed{where}: {error}; the command stopped and its write, if any, was rolled back "
            "(check free disk space and that the ledger and its folder are writable)"
        )
    print(f"welfare ledger: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

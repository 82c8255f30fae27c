"""Ledger stores compared on this machine: durable appends with 1 and with N writer processes, and verify,
on SQLite against PostgreSQL.

    python -m benchmarks.bench_ledger_stores [--seconds 3] [--writers 16] [--dir DIR] [--update-md BENCHMARKS.md]

PostgreSQL is a throwaway cluster started here as the ledger tests start it (tests/ledger/pg_server.py),
reached over a Unix socket, and removed at the end, even on error. Each writer is a process of its own with
its own connection, appending one entry per commit (`Ledger.fund`) for --seconds; the runs alternate between
the stores, three times over (medians), so drift in the machine hits both alike. After every run the ledger
must verify and hold exactly the appends its writers saw acknowledged. SQLite files go under DIR (default:
the system temp directory). With --update-md the section below is replaced in that file.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import multiprocessing
import os
import platform
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks.bench_ledger import raw_sync_rate
from benchmarks.bench_signing import per_call_us, sessions, with_key
from benchmarks.markdown_section import publish
from tests.ledger import pg_server
from tests.ledger.conftest import new_schema
from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.postgres import _FINGERPRINT, PostgresStore

SECTION = "## Ledger stores: SQLite against PostgreSQL"
REPEATS = 3
VERIFY_ENTRIES = 10_000
STORES = ("SQLite", "PostgreSQL")

_start_together = None  # the barrier the writers wait at, in each pool process (`_share`)


def _share(barrier) -> None:
    """Pool initializer: a barrier reaches spawned processes only as they start, not as a task's argument."""
    global _start_together
    _start_together = barrier


def append_for(location: str, seconds: float) -> tuple[int, float]:
    """One writer: its own connection, opened before the clock starts; then single-entry durable commits
    for `seconds`. Returns (appends acknowledged, seconds taken)."""
    with Ledger.open(location, create=False) as ledger:
        _start_together.wait(timeout=300)  # every writer connected: start at once
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            ledger.fund("lab", 0.001, note="benchmark")
            count += 1
        return count, time.perf_counter() - start


def append_run(location: str, writers: int, seconds: float) -> list[float]:
    """Per-writer rates (entries/s) of `writers` processes appending to the new ledger at `location` at once,
    after checking that it verifies and holds every acknowledged append, no more."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(writers, initializer=_share, initargs=(context.Barrier(writers),)) as pool:
        runs = pool.starmap(append_for, [(location, seconds)] * writers)
    with Ledger.open(location, create=False) as ledger:
        result = ledger.verify()
        assert result.ok, f"{location}: {result.reason}"
        acknowledged = sum(count for count, _ in runs)
        assert ledger.head().seq == acknowledged, (
            f"{location}: {ledger.head().seq} entries, {acknowledged} acknowledged"
        )
    return [count / elapsed for count, elapsed in runs]


def verify_seconds(location: str) -> float:
    """Verify of the ledger at `location`, opened afresh as an auditor's `welfare ledger verify` finds it."""
    with Ledger.open(location, create=False) as ledger:
        start = time.perf_counter()
        result = ledger.verify()
        seconds = time.perf_counter() - start
    assert result.ok, f"{location}: {result.reason}"
    return seconds


def server_settings(url: str) -> str:
    """The server's version and the settings that make its commits durable."""
    with psycopg.connect(url) as db:
        names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
        version, *durability = (db.execute(f"SHOW {name}").fetchone()[0] for name in names)
    return f"PostgreSQL {version.split()[0]} ({', '.join(f'{n}={v}' for n, v in zip(names[1:], durability))}"


def measure(directory: Path, server: pg_server.Server, seconds: float, writers: int) -> dict:
    """Everything the report shows, the stores alternating at each step."""
    names = itertools.count()

    def new_ledger(store: str) -> str:
        location = str(directory / f"{next(names)}.sqlite") if store == "SQLite" else new_schema(server)
        Ledger.open(location).close()  # created here, so the writers only append
        return location

    folders = {"SQLite": directory, "PostgreSQL": server.folder}
    appends = {(store, count): [] for store in STORES for count in (1, writers)}
    raw = {store: [] for store in STORES}
    for _ in range(REPEATS):
        for store in STORES:
            raw[store].append(raw_sync_rate(folders[store], os.fdatasync, seconds))
        for count in (1, writers):
            for store in STORES:
                appends[store, count].append(append_run(new_ledger(store), count, seconds))
    ledgers = {store: new_ledger(store) for store in STORES}
    for location in ledgers.values():
        sessions(location, VERIFY_ENTRIES)
    verify = {store: [] for store in STORES}
    for _ in range(REPEATS):
        for store in STORES:
            verify[store].append(verify_seconds(ledgers[store]))
    store = PostgresStore.open(ledgers["PostgreSQL"], create=False)
    try:  # the parts of one PostgreSQL append, timed alone
        schema_us, head_us = per_call_us(store.schema_problem, 300), per_call_us(store.head)
        fingerprint_us = per_call_us(lambda: store._run(_FINGERPRINT, {}), 300)
    finally:
        store.close()
    return {
        "appends": appends,
        "verify_s": {store: min(times) for store, times in verify.items()},
        "raw": {store: statistics.median(rates) for store, rates in raw.items()},
        "schema_us": schema_us,
        "head_us": head_us,
        "fingerprint_us": fingerprint_us,
    }


def report(measured: dict, seconds: float, writers: int, where: dict[str, Path], settings: str) -> str:
    appends = measured["appends"]

    def total(store: str, count: int) -> float:
        return statistics.median(sum(rates) for rates in appends[store, count])

    def per_writer(store: str) -> tuple[float, float, float]:
        """Median over the runs of each run's mean, slowest and fastest writer."""
        runs = appends[store, writers]
        return tuple(statistics.median(f(rates) for rates in runs) for f in (statistics.mean, min, max))

    lines = [
        f"| {name} | {total('SQLite', count):,.0f} /s | {total('PostgreSQL', count):,.0f} /s "
        f"| {total('PostgreSQL', count) / total('SQLite', count):.2f} |"
        for name, count in (
            ("durable appends, 1 writer (`Ledger.fund`, one entry per commit)", 1),
            (f"durable appends, {writers} writer processes at once, in all", writers),
        )
    ]
    (sm, smin, smax), (pm, pmin, pmax) = per_writer("SQLite"), per_writer("PostgreSQL")
    lines.append(
        f"| the same, per writer: mean (slowest - fastest) | {sm:,.0f} /s ({smin:,.0f} - {smax:,.0f}) "
        f"| {pm:,.0f} /s ({pmin:,.0f} - {pmax:,.0f}) | {pm / sm:.2f} |"
    )
    v = measured["verify_s"]
    lines.append(
        f"| verify {VERIFY_ENTRIES:,} entries of sessions, every content distinct "
        f"| {VERIFY_ENTRIES / v['SQLite']:,.0f} entries/s ({v['SQLite'] * 1e3:.0f} ms) "
        f"| {VERIFY_ENTRIES / v['PostgreSQL']:,.0f} entries/s ({v['PostgreSQL'] * 1e3:.0f} ms) "
        f"| {v['SQLite'] / v['PostgreSQL']:.2f} |"
    )
    raw = measured["raw"]
    lines.append(
        f"| the disk's raw fdatasync rate where each store's files are (300-byte appends) | {raw['SQLite']:,.0f} /s "
        f"| {raw['PostgreSQL']:,.0f} /s | {raw['PostgreSQL'] / raw['SQLite']:.2f} |"
    )
    pg_append_us = 1e6 / total("PostgreSQL", 1)
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `python -m benchmarks.bench_ledger_stores {shlex.join(sys.argv[1:])}` ({datetime.date.today()}).",
            f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version} (files under `{where['SQLite']}`), {settings}; a throwaway cluster "
            f"under `{where['PostgreSQL']}`, reached over a Unix socket on this machine).",
            "",
            "| measure | SQLite | PostgreSQL | ratio (PostgreSQL / SQLite) |",
            "| --- | --- | --- | --- |",
            *lines,
            "",
            f"- PostgreSQL runs on the same machine and is reached over a Unix socket, so no network is in these "
            f"numbers; a team's server across a network adds a round trip per statement. One append there took "
            f"{pg_append_us:,.0f} us with one writer, and it is seven statements (BEGIN, the append lock, the "
            f"entries table's lock, the catalog's fingerprint, the head, the INSERT, COMMIT). The fingerprint took "
            f"{measured['fingerprint_us']:,.0f} us; the full catalog check (`schema_problem`), which a write reruns "
            f"only when the fingerprint changed (as SQLite reruns its own only when its schema cookie changes), "
            f"{measured['schema_us']:,.0f} us; a one-row statement (the head) {measured['head_us']:,.0f} us.",
            f"- {writers} writers share one chain: each commit holds the store's write lock (SQLite's, or the ledger's "
            f"advisory lock on PostgreSQL) until its WAL is flushed, so commits run one at a time and cannot share an "
            f"fsync: more writers add only the work they do outside the lock ({total('SQLite', writers) / total('SQLite', 1):.2f}x "
            f"one writer's rate on SQLite, {total('PostgreSQL', writers) / total('PostgreSQL', 1):.2f}x on PostgreSQL, "
            f"with {os.cpu_count()} CPUs for {writers} writers and, on PostgreSQL, their {writers} server processes). "
            "Waiting SQLite writers poll with growing sleeps (the busy timeout), PostgreSQL's queue on the lock: "
            "the slowest - fastest spread per writer shows how fairly each shares the lock.",
            f"- Appends and raw fdatasync: medians of {REPEATS} runs of {seconds:g} s per store, the stores alternating; "
            "each append run on a new ledger, which afterwards verified and held exactly the acknowledged appends. "
            f"Verify: best of {REPEATS}, alternating, each on a freshly opened ledger of sessions (fund, reserve, "
            "settle, measurement), the same content on both stores.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each append run lasts")
    parser.add_argument("--writers", type=int, default=16, help="writer processes in the concurrent runs")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the SQLite files go")
    parser.add_argument("--update-md", type=Path, help=f"replace the `{SECTION}` section of this markdown file")
    args = parser.parse_args()
    reason = pg_server.why_not_available()
    if reason is not None:
        sys.exit(f"cannot start a PostgreSQL server here: {reason}")
    with_key(None)  # unsigned entries, whatever the environment says (bench_signing measures signing)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-ledger-stores-") as directory:
        server = pg_server.Server()
        try:
            measured = measure(Path(directory), server, args.seconds, args.writers)
            settings = server_settings(server.url())
        finally:
            server.remove()
    where = {"SQLite": args.dir, "PostgreSQL": server.folder.parent}
    section = report(measured, args.seconds, args.writers, where, settings)
    publish(section, SECTION, args.update_md)


if __name__ == "__main__":
    main()

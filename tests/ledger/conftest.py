"""Ledger tests run against both stores: `location` is a new, empty ledger location in each, an SQLite
file in the test's temporary folder and a PostgreSQL schema of its own on a throwaway server this test
session starts (tests/ledger/pg_server.py). Where no server can start here, the PostgreSQL tests skip
and say why."""

from __future__ import annotations

import itertools

import pytest

from tests.ledger import pg_server
from welfare_offsets.ledger import postgres

_schemas = itertools.count()


def started_server():
    """A new throwaway server for a fixture to yield, removed when it is done; or the test skips, saying why."""
    reason = pg_server.why_not_available()
    if reason is not None:
        pytest.skip(f"no PostgreSQL server for the tests: {reason}")
    server = pg_server.Server()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def pg_server_session():
    yield from started_server()


def new_schema(server: pg_server.Server) -> str:
    """A new schema on `server`: a ledger location of its own (one database holds every test's)."""
    import psycopg

    schema = f"test{next(_schemas)}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    return server.url(schema=schema)


@pytest.fixture
def pg_url(pg_server_session, monkeypatch):
    # The server started moments ago: no session can be reconnecting, so do not wait out the grace.
    monkeypatch.setattr(postgres, "RESTART_GRACE_S", 0.0)
    return new_schema(pg_server_session)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    """Where a test's new ledger lives: a path to an SQLite file, or a postgresql:// URL."""
    if request.param == "sqlite":
        return tmp_path / "ledger.sqlite"
    return request.getfixturevalue("pg_url")

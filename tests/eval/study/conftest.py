"""Every sweep accounts for its accelerator-hours in a ledger: the sweeps of each test module here bill a
funded ledger of the module's own, as $WELFARE_LEDGER (subprocesses inherit it)."""

from __future__ import annotations

import pytest

from tests.ledger.helpers import funded_ledger

FUNDS_HOURS = 100.0


@pytest.fixture(scope="module", autouse=True)
def sweep_ledger(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    funded_ledger(path, FUNDS_HOURS, account="default").close()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WELFARE_LEDGER", str(path))
        yield path

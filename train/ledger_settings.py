"""The settings every job that bills the ledger shares: which ledger, and which account pays."""

from __future__ import annotations

from dataclasses import dataclass

from welfare_offsets.eval.settings import Settings, setting
from welfare_offsets.ledger import LedgerError
from welfare_offsets.ledger.accounts import check_name


@dataclass(kw_only=True)
class LedgerSettings(Settings):
    """Where a job's accelerator-hours are accounted (offset sessions, exposures and sweeps alike)."""

    ledger: str | None = setting(
        None,
        "ledger file or postgresql:// URL; default: $WELFARE_LEDGER or ~/.local/share/welfare-offsets/ledger.sqlite",
    )
    account: str = setting("default", "ledger account that pays for the job's accelerator-hours")

    def check(self):
        try:
            check_name(self.account, field="account")
        except LedgerError as err:
            raise ValueError(str(err)) from None

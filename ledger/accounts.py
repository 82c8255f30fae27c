"""Double-entry accelerator-hour accounts: names, amounts, and the postings each kind of entry makes.

Amounts are stored as integer micro-hours (3.6 ms of one accelerator; metered spend is rounded to the
nearest), so balances are exact sums and every entry's postings add up to exactly zero.
Accounts are user accounts (`lab`) that hold spendable hours, and system accounts that start with `@`:
`@external` (where funded hours come from), `@reserved/SESSION` and `@spent/SESSION`.
"""

from __future__ import annotations

import math
import re
from numbers import Real

from ledger.errors import LedgerError

MICROHOURS_PER_HOUR = 1_000_000
EXTERNAL = "@external"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

Postings = dict[str, int]


def reserved_account(session: str) -> str:
    return f"@reserved/{session}"


def spent_account(session: str) -> str:
    return f"@spent/{session}"


def check_name(name: object, *, field: str) -> str:
    """Account and session names: a letter or digit, then letters, digits, `_`, `.`, `-` (64 at most)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise LedgerError(
            f"{field} {name!r} is not a valid name: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. lab-2025)"
        )
    return name


def check_hours(value: object, *, field: str, allow_zero: bool = False) -> float:
    """A finite, positive number of hours (or zero, where allowed); the message names the field."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise LedgerError(f"{field} must be a finite number of accelerator-hours, got {value!r} (e.g. 2.5)")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise LedgerError(f"{field} must be {bound} accelerator-hours, got {value!r}")
    if value * MICROHOURS_PER_HOUR > 2**53:
        raise LedgerError(f"{field} = {value!r} hours is implausibly large; check the units (hours, not seconds)")
    if not allow_zero and round(value * MICROHOURS_PER_HOUR) == 0:  # a request that would record nothing
        raise LedgerError(f"{field} = {value!r} is below the ledger's resolution of one micro-hour")
    return float(value)


def to_microhours(hours: float) -> int:
    return round(hours * MICROHOURS_PER_HOUR)


def to_hours(microhours: int) -> float:
    return microhours / MICROHOURS_PER_HOUR


def fund_postings(account: str, microhours: int) -> Postings:
    return {account: microhours, EXTERNAL: -microhours}


def transfer_postings(source: str, destination: str, microhours: int) -> Postings:
    return {source: -microhours, destination: microhours}


def reserve_postings(account: str, session: str, microhours: int) -> Postings:
    return {account: -microhours, reserved_account(session): microhours}


def settle_postings(account: str, session: str, reserved: int, spent: int) -> Postings:
    """Close the reservation: spent to `@spent/SESSION`, the rest back to the account (an overrun is
    charged to it, as a negative refund)."""
    return {reserved_account(session): -reserved, spent_account(session): spent, account: reserved - spent}


def reversal(postings: Postings) -> Postings:
    return {name: -amount for name, amount in postings.items()}


def correction_postings(hours_by_account: dict[str, float], *, field: str) -> Postings:
    """Explicit postings for a correction: signed hours per existing-format account, summing to zero."""
    postings: Postings = {}
    for name, hours in hours_by_account.items():
        if not name.startswith("@"):
            check_name(name, field=f"{field} account")
        if isinstance(hours, bool) or not isinstance(hours, Real) or not math.isfinite(hours):
            raise LedgerError(f"{field}[{name!r}] must be a finite number of hours, got {hours!r}")
        postings[name] = to_microhours(hours)
    if not postings or sum(postings.values()) != 0:
        raise LedgerError(
            f"{field} must move hours between accounts and sum to zero (double entry), got {hours_by_account!r}"
        )
    return postings

"""Double-entry accelerator-hour accounts: names, amounts, and the postings each kind of entry makes.

Amounts are stored as integer micro-hours (3.6 ms of one accelerator; metered spend is rounded to the
nearest), so balances are exact sums and every entry's postings add up to exactly zero.
Accounts are user accounts (`lab`) that hold spendable hours, and system accounts that start with `@`:
`@external` (where funded hours come from), `@reserved/SESSION` and `@spent/SESSION`.

Bounds: one entry moves at most MAX_HOURS_PER_ENTRY (1e9 accelerator-hours, 1e15 micro-hours: more
than any real allocation, so a larger amount is a units mistake), and balances are summed in Python,
whose integers never overflow, so no number of entries can break `balance`.
No account is left below zero by an entry that takes hours from it, except `@external` (the source of
all hours) and a user account charged a session's overrun by its settlement (a debt, recorded as is).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from numbers import Real

from welfare_offsets.ledger.errors import LedgerError

MICROHOURS_PER_HOUR = 1_000_000
MAX_HOURS_PER_ENTRY = 1e9
MAX_MICROHOURS_PER_ENTRY = round(MAX_HOURS_PER_ENTRY * MICROHOURS_PER_HOUR)
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
    if value > MAX_HOURS_PER_ENTRY:
        raise LedgerError(
            f"{field} = {value!r} hours is more than one entry may move ({MAX_HOURS_PER_ENTRY:g} h); "
            "check the units (hours, not seconds)"
        )
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


def check_correction_account(name: object, *, field: str) -> None:
    """A correction posts to user accounts, `@external` or `@spent/SESSION`. Never to `@reserved/SESSION`:
    a reservation is returned by its settlement, which would then leave it below zero."""
    if isinstance(name, str) and name.startswith("@spent/"):
        check_name(name.removeprefix("@spent/"), field=f"{field} session")
    elif name != EXTERNAL:
        if isinstance(name, str) and name.startswith("@"):
            raise LedgerError(
                f"{field} account {name!r} cannot be corrected; post to user accounts, {EXTERNAL} "
                "or @spent/SESSION (a reservation is closed only by its settlement)"
            )
        check_name(name, field=f"{field} account")


def check_microhours(value: object, *, field: str) -> int:
    """A stored amount: a whole number of micro-hours within one entry's bound, either sign."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_MICROHOURS_PER_ENTRY:
        raise LedgerError(
            f"{field} must be a whole number of micro-hours of at most {MAX_MICROHOURS_PER_ENTRY} "
            f"either way, got {value!r}"
        )
    return value


def may_go_below_zero(account: str, kind: str) -> bool:
    """`@external` is where all hours come from; a settlement charges an overrun to its user account."""
    return account == EXTERNAL or (kind == "settle" and not account.startswith("@"))


def first_overdrawn(kind: str, postings: Postings, balance_after: Callable[[str], int]) -> str | None:
    """The first account these postings take hours from that they leave below zero, if any."""
    for name, amount in postings.items():
        if amount < 0 and balance_after(name) < 0 and not may_go_below_zero(name, kind):
            return name
    return None


def correction_postings(hours_by_account: dict[str, float], *, field: str) -> Postings:
    """Explicit postings for a correction: signed hours per correctable account, summing to zero."""
    postings: Postings = {}
    for name, hours in hours_by_account.items():
        check_correction_account(name, field=field)
        if isinstance(hours, bool) or not isinstance(hours, Real) or not math.isfinite(hours):
            raise LedgerError(f"{field}[{name!r}] must be a finite number of hours, got {hours!r}")
        if abs(hours) > MAX_HOURS_PER_ENTRY:
            raise LedgerError(
                f"{field}[{name!r}] = {hours!r} hours is more than one entry may move "
                f"({MAX_HOURS_PER_ENTRY:g} h); check the units"
            )
        postings[name] = to_microhours(hours)
    if not postings or sum(postings.values()) != 0:
        raise LedgerError(
            f"{field} must move hours between accounts and sum to zero (double entry), got {hours_by_account!r}"
        )
    return postings

"""Range checks for config dataclasses' __post_init__: one wording for every "expected X, got Y"."""

from __future__ import annotations

import math


def integers_at_least(config, low: int, *names: str) -> None:
    """Each named field is an integer >= `low` (None, where a field allows it, means unset)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not value >= low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value}")


def number_in(config, name: str, low: float | None = None, high: float | None = None, *, above: bool = False) -> None:
    """The named field is a finite number in [low, high] (or (low, high] with `above`)."""
    value = getattr(config, name)
    if value is None:
        return
    ok = (
        math.isfinite(value)
        and (low is None or (value > low if above else value >= low))
        and (high is None or value <= high)
    )
    if not ok:
        bounds = [
            f"{'>' if above else '>='} {low}" if low is not None else "",
            f"<= {high}" if high is not None else "",
        ]
        raise ValueError(
            f"{name}: expected a finite number {' and '.join(b for b in bounds if b)}, got {value}".rstrip()
        )


def one_of(config, name: str, choices: tuple) -> None:
    """The named field is one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name}: expected {' or '.join(map(str, choices))}, got {value!r}")

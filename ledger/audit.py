"""What `verify` proves beyond the chain: each entry is canonical and well formed for its kind, and the
accounts hold at every seq.

Checked for every entry, in seq order:
- its content `{"kind":...,"payload":{...}` is exactly what `canonical_json` makes of it (no duplicate
  key, no other spelling of the same JSON), its payload has the fields its kind writes, and its text is
  all text both stores can hold (`chain.is_portable_text`);
- its postings are whole micro-hours within `MAX_MICROHOURS_PER_ENTRY`, sum to zero, and are the ones
  its kind makes (a fund credits the funded account from `@external`, a settlement returns exactly what
  the session reserved, ...);
- a session reserves once, settles at most once and only after its reservation, and is measured only
  after it reserved; an entry is corrected at most once, by a later entry;
- no entry leaves an account it takes hours from below zero (see `accounts.may_go_below_zero`);
- with a keyring, each entry is signed by a key the keyring holds, in a role that allows its kind
  (ledger.signing).
The rules are the writers' own (ledger.accounts), so what the code writes is what verify accepts.
"""

from __future__ import annotations

import json
import math
import operator
from collections import Counter, defaultdict
from typing import Any

from welfare_offsets.ledger import accounts
from welfare_offsets.ledger.accounts import (
    check_microhours,
    check_name,
    reserved_account,
    spent_account,
)
from welfare_offsets.ledger.chain import canonical_json, first_unportable_text
from welfare_offsets.ledger.errors import LedgerError
from welfare_offsets.ledger.report import MEASURES
from welfare_offsets.ledger.signing import SIGNATURE, Keyring

_FIELDS = {
    "fund": {"account", "note", "postings"},
    "transfer": {"from", "to", "note", "postings"},
    "reserve": {"account", "session", "device", "processes", "purpose", "resumes", "wandb_run", "postings"},
    "settle": {"session", "account", "basis", "energy_kwh", "wall_seconds", "stopped_by_budget", "postings"},
    "correction": {"corrects", "reason", "postings"},
    "measurement": {"session", "probe", "results", "wandb_run", "note"},
}
_OPTIONAL = {"correction": {"session"}, "measurement": set(MEASURES)}
_SIGNED = {SIGNATURE}  # any kind may carry its writer's signature (ledger.signing)
_decode = json.JSONDecoder().decode
_MEMO_SIZE = 4096  # recent contents already checked: repeated entries (the same fund) are parsed once


class Audit:
    """Feed it each entry's content in seq order (`check`); it keeps the balances and sessions so far."""

    def __init__(self, keyring: Keyring | None = None) -> None:
        """With a `keyring`, every entry must also be signed by a key it holds, in a role that allows it."""
        self._keyring = keyring
        self._signatures: set[bytes] = set()  # signatures seen so far, decoded
        self.signed = 0  # entries that carry a signature
        self._memo: dict[bytes, _Checked] = {}
        self._entries: list[_Checked] = []  # by seq - 1, for corrections to look up what they correct
        self._balances: dict[str, int] = defaultdict(int)
        self._reserved: dict[str, tuple[str, int]] = {}  # session -> (account, micro-hours)
        self._settled: set[str] = set()
        self._corrected: set[int] = set()

    def check_contents(self, first_seq: int, contents: list[bytes]) -> tuple[int, str] | None:
        """The first bad seq among consecutive entries from `first_seq` on, and why, or None. When every
        content was seen before and none needs the entries before it or leaves an account to check (a
        batch of funds), their postings are added up per distinct content; otherwise entry by entry."""
        known = list(map(self._memo.get, contents))
        if None not in known and not any(map(_ORDERED, known)) and self._keyring is None:
            self.signed += sum(SIGNATURE in k[1] for k in known)
            self._entries.extend(known)
            for content, times in Counter(contents).items():
                for name, amount in self._memo[content][3]:
                    self._balances[name] += amount * times
            return None
        for seq, content in enumerate(contents, first_seq):
            wrong = self.check(seq, content)
            if wrong is not None:
                return seq, wrong
        return None

    def check(self, seq: int, content: bytes) -> str | None:
        """What is wrong with entry `seq` given all before it, or None. What depends on the content
        alone is worked out once per distinct content (`_checked`)."""
        checked = self._memo.get(content)
        if checked is None:
            try:
                checked = _checked(content)
            except LedgerError as error:
                return str(error)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[content] = checked
        kind, payload, in_order, postings, guarded, _ = checked
        self.signed += SIGNATURE in payload
        if self._keyring is not None:
            problem = self._keyring.problem(kind, payload, self._signatures)
            if problem is not None:
                return f"signature: {problem}"
        if in_order is not None:
            try:
                in_order(self, seq, payload)
            except LedgerError as error:
                return str(error)
        self._entries.append(checked)
        balances = self._balances
        for name, amount in postings:
            balances[name] += amount
        for name in guarded:
            if balances[name] < 0:
                return (
                    f"it leaves account {name!r} at {accounts.to_hours(balances[name]):g} h, below zero "
                    "(hours were spent or moved that the account did not hold)"
                )
        return None

    def _reserve(self, seq: int, payload: dict[str, Any]) -> None:
        session = payload["session"]
        if session in self._reserved:
            raise LedgerError(f"session {session!r} is reserved a second time (each session reserves once)")
        self._reserved[session] = (payload["account"], payload["postings"][reserved_account(session)])

    def _settle(self, seq: int, payload: dict[str, Any]) -> None:
        session = payload["session"]
        if session not in self._reserved:
            raise LedgerError(f"it settles session {session!r}, which has no earlier reservation")
        if session in self._settled:
            raise LedgerError(f"it settles session {session!r} a second time (a session settles once)")
        account, reserved = self._reserved[session]
        if payload["account"] != account or -payload["postings"][reserved_account(session)] != reserved:
            raise LedgerError(
                f"its postings do not return the {reserved} micro-hours session {session!r} "
                f"reserved from account {account!r}"
            )
        self._settled.add(session)

    def _correction(self, seq: int, payload: dict[str, Any]) -> None:
        target_seq = payload["corrects"]
        if not 1 <= target_seq < seq:
            raise LedgerError(f"it corrects entry {target_seq}, which is not an earlier entry")
        if target_seq in self._corrected:
            raise LedgerError(f"it corrects entry {target_seq} a second time (an entry is corrected once)")
        kind, target = self._entries[target_seq - 1][:2]
        if payload.get("session") != target.get("session"):
            raise LedgerError(f"its session {payload.get('session')!r} is not that of entry {target_seq}")
        if not payload["postings"] and kind != "measurement":
            raise LedgerError(f"it moves no hours, but entry {target_seq} is a {kind}, not a measurement")
        if kind == "correction" and not target["postings"]:
            raise LedgerError(f"it corrects entry {target_seq}, a retraction of a measurement")
        self._corrected.add(target_seq)

    def _measurement(self, seq: int, payload: dict[str, Any]) -> None:
        if payload["session"] not in self._reserved:
            raise LedgerError(f"it measures session {payload['session']!r}, which has no earlier reservation")


# What one content proves by itself: kind, payload, the check that needs the entries before it (or None),
# its postings to accounts whose balance is ever checked (not @external), the accounts it takes hours
# from that must not end below zero, and whether either of those makes the order of entries matter.
_Checked = tuple[str, dict[str, Any], Any, tuple[tuple[str, int], ...], tuple[str, ...], bool]
_ORDERED = operator.itemgetter(5)


def _checked(content: bytes) -> _Checked:
    kind, payload = _parse(content)
    postings = payload.get("postings", {})
    guarded = tuple(
        name for name, amount in postings.items() if amount < 0 and not accounts.may_go_below_zero(name, kind)
    )
    tracked = tuple((name, amount) for name, amount in postings.items() if name != accounts.EXTERNAL)
    in_order = _IN_ORDER.get(kind)
    return kind, payload, in_order, tracked, guarded, in_order is not None or bool(guarded)


_IN_ORDER = {
    "reserve": Audit._reserve,
    "settle": Audit._settle,
    "correction": Audit._correction,
    "measurement": Audit._measurement,
}


def _parse(content: bytes) -> tuple[str, dict[str, Any]]:
    """The kind and payload of an entry's content, if it is canonical and well formed for its kind."""
    try:
        text = content.decode("ascii") + "}"
        fields = _decode(text)
        canonical = canonical_json(fields) == text
    except (ValueError, RecursionError):  # not ASCII, not JSON, or numbers JSON cannot write (NaN, 1e999)
        canonical = False
    if not canonical or list(fields) != ["kind", "payload"]:
        raise LedgerError(
            "its stored body is not canonical JSON (a duplicate key, or another spelling of the "
            "same JSON: the entry was written by something other than this ledger)"
        )
    kind, payload = fields["kind"], fields["payload"]
    check_form(kind, payload, text)
    return kind, payload


def check_form(kind: object, payload: object, text: str) -> None:
    """Raise LedgerError, saying what is wrong ("its ..."), unless `payload` is well formed for an entry of
    `kind`: its fields and their types, its postings, and text both stores can hold. `text` is the entry's
    JSON, in which a NUL or a lone surrogate can only be written as a \\u escape: the payload is searched
    only if there is one. Verify checks every entry so, and so does the store on reading or writing one."""
    if not isinstance(kind, str) or kind not in _FIELDS or not isinstance(payload, dict):
        raise LedgerError(f"its kind {kind!r} is not one of {', '.join(_FIELDS)}, or its payload is not an object")
    missing = _FIELDS[kind] - payload.keys()
    extra = payload.keys() - _FIELDS[kind] - _OPTIONAL.get(kind, set()) - _SIGNED
    if missing or extra:
        raise LedgerError(f"its {kind} payload lacks {sorted(missing)} or has unknown fields {sorted(extra)}")
    postings = payload.get("postings", {})
    if not isinstance(postings, dict):
        raise LedgerError(f"its postings {postings!r} are not an object of account: micro-hours")
    for amount in postings.values():
        check_microhours(amount, field="each of its postings")
    if sum(postings.values()) != 0:
        raise LedgerError(f"its postings sum to {sum(postings.values())} micro-hours, not zero (double entry)")
    _WELL_FORMED[kind](payload, postings)
    where = first_unportable_text(payload) if "\\u" in text else None
    if where is not None:
        raise LedgerError(
            f"its field {where!r} holds text a PostgreSQL ledger cannot store (a NUL character, or a lone "
            "surrogate such as \\udcff: bytes of another encoding than UTF-8)"
        )


def _fund_ok(payload: dict[str, Any], postings: accounts.Postings) -> None:
    account = check_name(payload["account"], field="its account")
    _text(payload, "note")
    _positive_amount(postings, accounts.fund_postings(account, postings.get(account, 0)), account)


def _transfer_ok(payload: dict[str, Any], postings: accounts.Postings) -> None:
    source, destination = check_name(payload["from"], field="its from"), check_name(payload["to"], field="its to")
    _text(payload, "note")
    if source == destination:
        raise LedgerError(f"it transfers from {source!r} to itself")
    _positive_amount(
        postings, accounts.transfer_postings(source, destination, postings.get(destination, 0)), destination
    )


def _reserve_ok(payload: dict[str, Any], postings: accounts.Postings) -> None:
    account = check_name(payload["account"], field="its account")
    session = check_name(payload["session"], field="its session")
    _text(payload, "device", "purpose")
    processes = payload["processes"]
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise LedgerError(f"its processes {processes!r} is not a whole number >= 1")
    if payload["resumes"] is not None and not isinstance(payload["resumes"], dict):
        raise LedgerError(f"its resumes {payload['resumes']!r} is neither null nor an object")
    _optional_text(payload, "wandb_run")
    amount = postings.get(reserved_account(session), 0)
    _positive_amount(postings, accounts.reserve_postings(account, session, amount), reserved_account(session))


def _settle_ok(payload: dict[str, Any], postings: accounts.Postings) -> None:
    account = check_name(payload["account"], field="its account")
    session = check_name(payload["session"], field="its session")
    _text(payload, "basis")
    _amounts(payload, "energy_kwh", "wall_seconds")
    if not isinstance(payload["stopped_by_budget"], bool):
        raise LedgerError(f"its stopped_by_budget {payload['stopped_by_budget']!r} is not true or false")
    reserved, spent = -postings.get(reserved_account(session), 0), postings.get(spent_account(session), -1)
    if reserved <= 0 or spent < 0 or postings != accounts.settle_postings(account, session, reserved, spent):
        raise LedgerError(
            f"its postings {postings!r} are not a settlement of session {session!r} to account "
            f"{account!r} (reserved back to zero, spent >= 0, the rest to the account)"
        )


def _correction_ok(payload: dict[str, Any], postings: accounts.Postings) -> None:
    corrects = payload["corrects"]
    if isinstance(corrects, bool) or not isinstance(corrects, int):
        raise LedgerError(f"its corrects {corrects!r} is not an entry's seq")
    if not isinstance(payload["reason"], str) or not payload["reason"].strip():
        raise LedgerError("it gives no reason")
    if "session" in payload:
        check_name(payload["session"], field="its session")
    for name in postings:
        accounts.check_correction_account(name, field="its postings")


def _measurement_ok(payload: dict[str, Any], postings: accounts.Postings) -> None:
    check_name(payload["session"], field="its session")
    check_name(payload["probe"], field="its probe")
    _text(payload, "note")
    _optional_text(payload, "wandb_run")
    measured = [name for name in MEASURES if name in payload]
    if not measured or any(
        isinstance(payload[name], bool) or not isinstance(payload[name], float) for name in measured
    ):
        raise LedgerError(f"its measures {measured} are missing or not numbers")
    _amounts(payload, "debt", "credit")
    if not isinstance(payload["results"], list) or not all(
        isinstance(cited, dict) and cited.keys() == {"path", "sha256", "bytes"} for cited in payload["results"]
    ):
        raise LedgerError("its results are not a list of {path, sha256, bytes} citations")


_WELL_FORMED = {
    "fund": _fund_ok,
    "transfer": _transfer_ok,
    "reserve": _reserve_ok,
    "settle": _settle_ok,
    "correction": _correction_ok,
    "measurement": _measurement_ok,
}


def _positive_amount(postings: accounts.Postings, expected: accounts.Postings, credited: str) -> None:
    if postings.get(credited, 0) <= 0 or postings != expected:
        raise LedgerError(f"its postings {postings!r} are not what its kind makes, {expected!r} with a positive amount")


def _text(payload: dict[str, Any], *names: str) -> None:
    for name in names:
        if not isinstance(payload[name], str):
            raise LedgerError(f"its {name} {payload[name]!r} is not text")


def _optional_text(payload: dict[str, Any], name: str) -> None:
    if payload[name] is not None:
        _text(payload, name)


def _amounts(payload: dict[str, Any], *names: str) -> None:
    """Optional physical amounts: absent or null, or finite numbers >= 0."""
    for name in names:
        value = payload.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
        ):
            raise LedgerError(f"its {name} {value!r} is not a finite number >= 0")

"""The hash chain: canonical bytes of an entry, its hash, and the check that finds the first bad entry.

Free of storage, so the same rules hash an entry when it is written and when an auditor verifies it.
An entry's body is the canonical JSON (sorted keys, no whitespace, ASCII, no NaN) of
`{"kind", "payload", "prev_hash", "seq", "time"}`, stored as is; its hash is sha256 of those bytes.
The first entry's `prev_hash` is `GENESIS_HASH`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice, repeat
from typing import Any

from welfare_offsets.ledger.errors import LedgerError

GENESIS_HASH = hashlib.sha256(b"welfare-offsets ledger genesis").hexdigest()
_ANCHOR = re.compile(r"(\d+):([0-9a-f]{64})")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed: deterministic, whitespace-free, finite numbers only."""
    return _CANONICAL.encode(value)


def is_portable_text(text: str) -> bool:
    """Whether both stores can hold `text`: it has no NUL character, and UTF-8 can encode it (it has no
    lone surrogate such as \\udcff, which is how Python keeps bytes that were not UTF-8: an argument or file
    name in another encoding). SQLite keeps either in an entry as a JSON escape, but PostgreSQL refuses
    both, so such an entry could never be copied to a server."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_unportable_text(value: Any, where: str = "") -> str | None:
    """Where in the JSON value `value` (`where`, then `.key` and `[index]` below it) a key or text is that
    is not `is_portable_text`, or None if there is none. A loop, not recursion: a deeply nested value
    cannot make it fail."""
    pending = [(where, value)]
    while pending:
        place, item = pending.pop()
        if isinstance(item, str) and not is_portable_text(item):
            return place
        if isinstance(item, dict):
            for key, child in item.items():
                inner = f"{place}.{key}" if place else key
                if not is_portable_text(key):
                    return inner
                pending.append((inner, child))
        elif isinstance(item, list):
            pending.extend((f"{place}[{index}]", child) for index, child in enumerate(item))
    return None


def format_time(moment: datetime) -> str:
    """Entry times are fixed-width UTC text, so they sort and filter as strings. isoformat, not strftime,
    whose %Y does not pad years before 1000 to four digits on glibc."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utc_now() -> str:
    return format_time(datetime.now(timezone.utc))


def seal(seq: int, time: str, kind: str, payload: dict[str, Any], prev_hash: str) -> tuple[str, str]:
    """The stored body of a new entry (canonical JSON of all but its hash) and that hash."""
    body = canonical_json({"seq": seq, "time": time, "kind": kind, "payload": payload, "prev_hash": prev_hash})
    return body, hashlib.sha256(body.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Entry:
    seq: int
    time: str
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Head:
    """The last entry's seq and hash: printed as `SEQ:HASH` and kept elsewhere as an anchor."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str, *, field: str = "anchor") -> Head:
        match = _ANCHOR.fullmatch(text.strip())
        if match is None:
            raise LedgerError(
                f"{field} {text!r} is not SEQ:HASH (a seq number, a colon, 64 lowercase hex digits); "
                "copy it from `welfare ledger head`"
            )
        return cls(int(match.group(1)), match.group(2))


EMPTY_HEAD = Head(0, GENESIS_HASH)


@dataclass(frozen=True)
class VerifyResult:
    """`first_bad_seq` is 0 for what is wrong outside every entry: the schema, or an anchor at seq 0."""

    ok: bool
    entries: int
    head: Head | None = None
    first_bad_seq: int | None = None
    reason: str = ""
    signed: int | None = None  # entries carrying their writer's signature (ledger.signing); None: not counted


# What `verify_chain` hands its content check: the first seq of consecutive entries and their contents;
# it answers with the first bad seq among them and why, or None.
ContentCheck = Callable[[int, list[bytes]], "tuple[int, str] | None"]
_CHUNK = 4096  # rows checked, and contents handed over, at once: list operations in C, a run of alike entries added up at once


def verify_chain(
    rows: Iterable[tuple[bytes, str]],
    anchor: Head | None = None,
    check_contents: ContentCheck = lambda seq, contents: None,
) -> VerifyResult:
    """Walk stored (body, hash) rows in order and stop at the first bad entry.

    Each body must hash to its stored hash and end with the expected prev_hash, seq and a well-formed
    time that exists. Canonical JSON sorts `time` last and times are fixed-width, so that tail sits at a fixed place
    and what comes before it, `{"kind":...,"payload":{...}`, is the entry's content, which
    `check_contents` judges. Rows go a chunk at a time through list operations (`_sound_contents`); only
    a chunk that fails them, or holds the anchor, is walked entry by entry (`_walk`) to say what is wrong.
    """
    if anchor is not None and anchor.seq == 0 and anchor.hash != GENESIS_HASH:
        return _broken(0, "the anchor's seq 0 is not this ledger format's genesis")
    anchor_seq = -1 if anchor is None else anchor.seq
    seq, prev, rows = 1, GENESIS_HASH, iter(rows)
    while chunk := list(islice(rows, _CHUNK)):
        contents, failure = _sound_contents(chunk, seq, prev), None
        if contents is None or seq <= anchor_seq < seq + len(chunk):
            contents, failure = _walk(chunk, seq, prev, anchor)
        wrong = _first_wrong(check_contents, seq + len(contents), contents) or failure
        if wrong is not None:
            return wrong
        seq, prev = seq + len(chunk), chunk[-1][1]
    last = seq - 1
    if anchor is not None and anchor.seq > last:
        return _broken(
            last + 1, f"the ledger ends at seq {last} but the anchor is at seq {anchor.seq} (entries were truncated)"
        )
    return VerifyResult(True, last, Head(last, prev))


def _sound_contents(chunk: list[tuple[bytes, str]], seq: int, prev: str) -> list[bytes] | None:
    """The contents of consecutive rows from `seq` on if every one passes the chain checks, else None."""
    bodies, hashes = zip(*chunk)
    if [hashlib.sha256(body).hexdigest() for body in bodies] != list(hashes):
        return None
    tails = [
        f',"prev_hash":"{p}","seq":{s},"time":"'.encode()
        for p, s in zip((prev, *hashes[:-1]), range(seq, seq + len(bodies)))
    ]
    count = len(bodies)
    if not all(map(bytes.endswith, bodies, tails, repeat(0, count), repeat(-_TIME_TAIL, count))):
        return None
    # Each time slice is at most _TIME_TAIL long, so the joined slices equal n shapes only if each does.
    times = [body[-_TIME_TAIL:] for body in bodies]
    joined = b"".join(times)
    if joined.translate(_DIGITS_AS_ZERO) != _TIME_SHAPE * count or not _all_possible(joined, times):
        return None
    return [body[: -_TIME_TAIL - len(tail)] for body, tail in zip(bodies, tails)]


def _walk(
    chunk: list[tuple[bytes, str]], seq: int, prev: str, anchor: Head | None
) -> tuple[list[bytes], VerifyResult | None]:
    """Entry by entry: the contents of the rows up to the first bad one (or the anchor's, if it does not
    match), and that failure."""
    contents = []
    for expected_seq, (body, stored_hash) in enumerate(chunk, seq):
        tail = f',"prev_hash":"{prev}","seq":{expected_seq},"time":"'.encode()
        if (
            hashlib.sha256(body).hexdigest() != stored_hash
            or not body.endswith(tail, 0, -_TIME_TAIL)
            or body[-_TIME_TAIL:].translate(_DIGITS_AS_ZERO) != _TIME_SHAPE
            or not _is_possible(body[-_TIME_TAIL:])
        ):
            return contents, _broken(expected_seq, _explain(expected_seq, prev, body, stored_hash))
        contents.append(body[: -_TIME_TAIL - len(tail)])
        if anchor is not None and expected_seq == anchor.seq and stored_hash != anchor.hash:
            return contents, _broken(
                expected_seq, f"it does not match the anchor {anchor} (the ledger was rewritten behind the anchor)"
            )
        prev = stored_hash
    return contents, None


def _first_wrong(check_contents: ContentCheck, next_seq: int, contents: list[bytes]) -> VerifyResult | None:
    """The verdict on the contents of the entries just before `next_seq`, if one of them is bad."""
    wrong = check_contents(next_seq - len(contents), contents) if contents else None
    return None if wrong is None else _broken(*wrong)


# Characters after the tail checked above: the 27-character time, its closing quote and brace.
_TIME_TAIL = len(format_time(datetime(2000, 1, 1))) + 2
# A well-formed time and the body's end, with every digit read as 0 (cheaper than a regex, as exact).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TIME_SHAPE = format_time(datetime(2000, 1, 1)).translate(str.maketrans("123456789", "000000000")).encode() + b'"}'
# Where a time's seconds start ("YYYY-MM-DDTHH:MM:" before them), and a possible rest after its minute.
_SECOND_TENS = format_time(datetime(2000, 1, 1)).index(":00.") + 1
_MINUTE_REST = format_time(datetime(2000, 1, 1)).encode()[_SECOND_TENS:] + b'"}'


def _all_possible(joined: bytes, times: list[bytes]) -> bool:
    """Whether times of the right shape, joined, all name moments that exist. A second is possible if its
    tens digit is 0-5 (checked for all at once, every _TIME_TAIL bytes); the date, hour and minute before
    it are shared by every entry written in the same minute, so each distinct one is checked once."""
    if max(joined[_SECOND_TENS::_TIME_TAIL]) > ord("5"):
        return False
    return all(_is_possible(minute + _MINUTE_REST) for minute in {time[:_SECOND_TENS] for time in times})


def _is_possible(time_tail: bytes) -> bool:
    """Whether a time of the right shape (and its closing `Z"}`) names a moment that exists: no month 13,
    no 25:61. fromisoformat, in C, reads the shape format_time writes many times faster than strptime."""
    try:
        datetime.fromisoformat(time_tail[:-3].decode("ascii"))
    except ValueError:
        return False
    return True


def _explain(seq: int, expected_prev: str, body: bytes, stored_hash: str) -> str:
    try:
        fields = json.loads(body)
    except (ValueError, TypeError):
        return "its stored body is not JSON (the entry was edited)"
    if not isinstance(fields, dict):
        return "its stored body is not a JSON object (the entry was edited)"
    if fields.get("seq") != seq:
        return f"entry {fields.get('seq')!r} is stored where entry {seq} belongs (entries were deleted or reordered)"
    if fields.get("prev_hash") != expected_prev:
        return (
            f"its prev_hash does not match the hash of entry {seq - 1} (entries were deleted, reordered or re-chained)"
        )
    if hashlib.sha256(body).hexdigest() != stored_hash:
        return "its content does not match its hash (the entry was edited)"
    if body[-_TIME_TAIL:].translate(_DIGITS_AS_ZERO) != _TIME_SHAPE:
        return f"its time {fields.get('time')!r} is not fixed-width UTC text like {format_time(datetime(2000, 1, 1))}"
    if not _is_possible(body[-_TIME_TAIL:]):
        return (
            f"its time {fields.get('time')!r} is not a possible time "
            "(a month, day, hour, minute or second out of range)"
        )
    return "its stored body is not in canonical form (the entry was rewritten)"


def _broken(seq: int, why: str) -> VerifyResult:
    return VerifyResult(False, max(seq - 1, 0), None, seq, why)

"""Wellbeing instruments: the exact wording of every probe, as versioned data rather than code.

An instrument is one JSON file. The built-in one (`welfare-offsets-v2`, in eval/instruments/) is our own
wording of the anchor paper's constructs; `--instrument PATH` runs another, and a self-report battery in
the anchor's published format (an object with `questions: [{question_id, text, reversed}]` and a 1-7
scale) is read as-is, so a user who has those files runs its exact self-report wording, with our
wording for the other probes. Every result records the instrument's name, version and the sha256 of its
canonical content, so two results are comparable only when those agree.

Our own format ("format": "welfare-offsets instrument"):
  self_report.question    shared text with {scale}; the item-specific scale is spelled out last, so the ten
                          questions share the longest token prefix (the engine runs it once)
  self_report.items       [{id, levels: 7 labels, from 1 to 7}], self_report.headline_item
  experienced_utility     conversation_header (with {label}) put before each lived conversation; question
  decision_utility        question with {a} and {b} (the two conversations as transcripts)
  stop                    system (with {call}) offering the end-conversation tool; call, the reply that uses it
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from welfare_offsets.eval.common.errors import InputError
from welfare_offsets.eval.common.safe_read import load_json_bounded

OUR_FORMAT = "welfare-offsets instrument"
DEFAULT_INSTRUMENT = "welfare-offsets-v2"
SCALE = range(1, 8)  # the scorer reads the digits 1..7
MAX_INSTRUMENT_BYTES = 1 << 20


class InstrumentError(InputError):
    """An instrument file is unusable; the message names the file and the field."""


@dataclass(frozen=True)
class SelfReportItem:
    id: str
    question: str  # the whole user turn
    reversed: bool = False  # 7 is the *worst* answer; scored as 8 - digit


@dataclass(frozen=True)
class Instrument:
    name: str
    version: str
    source: str  # a built-in name or the file it was read from
    sha256: str  # of the canonical JSON of the wording below
    self_report: tuple[SelfReportItem, ...]
    headline_item: str
    conversation_header: str
    experienced_utility_question: str
    decision_utility_question: str
    stop_system: str
    stop_call: str

    def record(self) -> dict:
        """What a result file says about the instrument it used."""
        return {"name": self.name, "version": self.version, "source": self.source, "sha256": self.sha256}


def builtin_instruments() -> list[str]:
    folder = resources.files("welfare_offsets.eval.instruments")
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_instrument(given: str | Path | None = None) -> Instrument:
    """An instrument by built-in name, by path (ours or an anchor self-report battery), or the default."""
    name = str(given) if given else DEFAULT_INSTRUMENT
    if name in builtin_instruments():
        path = Path(str(resources.files("welfare_offsets.eval.instruments") / f"{name}.json"))
        source = name
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise InstrumentError(
                f"--instrument {name}: no such file or built-in instrument; built-in: {', '.join(builtin_instruments())}"
            )
        source = str(path)
    data = load_json_bounded(path, what="--instrument", max_bytes=MAX_INSTRUMENT_BYTES)
    if not isinstance(data, dict):
        raise InstrumentError(f"--instrument {path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") == OUR_FORMAT:
        return _ours(data, source, path)
    if "questions" in data:
        return _anchor_battery(data, source, path)
    raise InstrumentError(
        f"--instrument {path}: not an instrument: expected 'format': {OUR_FORMAT!r} or a self-report battery "
        "with a 'questions' list"
    )


def _ours(data: dict, source: str, path: Path) -> Instrument:
    where = _Where(path)
    sr = where.mapping(data, "self_report")
    question = where.text(sr, "self_report.question", placeholders=("{scale}",))
    items = []
    for k, item in enumerate(where.sequence(sr, "self_report.items")):
        field = f"self_report.items[{k}]"
        if not isinstance(item, dict):
            raise where.error(field, "expected an object with 'id' and 'levels'")
        item_id = where.text(item, f"{field}.id", key="id")
        levels = where.sequence(item, f"{field}.levels", key="levels")
        if len(levels) != len(SCALE) or not all(isinstance(x, str) and x.strip() for x in levels):
            raise where.error(f"{field}.levels", f"expected {len(SCALE)} non-empty labels, for 1 to 7 in order")
        scale = ", ".join(f"{n} means {label}" for n, label in zip(SCALE, levels[:-1]))
        scale += f", and {SCALE[-1]} means {levels[-1]}"
        items.append(SelfReportItem(item_id, question.replace("{scale}", scale)))
    eu = where.mapping(data, "experienced_utility")
    du = where.mapping(data, "decision_utility")
    stop = where.mapping(data, "stop")
    call = where.text(stop, "stop.call", key="call")
    return _built(
        data,
        source,
        path,
        items=items,
        headline=where.text(sr, "self_report.headline_item", key="headline_item"),
        header=where.text(
            eu, "experienced_utility.conversation_header", key="conversation_header", placeholders=("{label}",)
        ),
        eu_question=where.text(eu, "experienced_utility.question", key="question"),
        du_question=where.text(du, "decision_utility.question", key="question", placeholders=("{a}", "{b}")),
        stop_system=where.text(stop, "stop.system", key="system", placeholders=("{call}",)).replace("{call}", call),
        call=call,
    )


def _anchor_battery(data: dict, source: str, path: Path) -> Instrument:
    """A self-report battery in the anchor's published format; the other probes keep the built-in wording."""
    where = _Where(path)
    lo, hi, neutral = data.get("scale_min", 1), data.get("scale_max", 7), data.get("neutral", 4)
    if (lo, hi, neutral) != (1, 7, 4):
        raise where.error(
            "scale_min/scale_max/neutral", f"expected a 1-7 scale with neutral 4, got {lo}-{hi}, {neutral}"
        )
    items = []
    for k, q in enumerate(where.sequence(data, "questions")):
        field = f"questions[{k}]"
        if not isinstance(q, dict):
            raise where.error(field, "expected an object with 'question_id' and 'text'")
        item_id = where.text(q, f"{field}.question_id", key="question_id")
        reversed_ = q.get("reversed", False)
        if not isinstance(reversed_, bool):
            raise where.error(f"{field}.reversed", f"expected true or false, got {reversed_!r}")
        # Their ids carry a prefix ("wb_happy"); ours are the bare construct, which the headline item names.
        items.append(SelfReportItem(item_id.removeprefix("wb_"), where.text(q, f"{field}.text", key="text"), reversed_))
    ids = [i.id for i in items]
    base = load_instrument(DEFAULT_INSTRUMENT)
    headline = "happy" if "happy" in ids else ids[0]
    return _built(
        {"battery": data, "others": base.sha256},
        source,
        path,
        items=items,
        headline=headline,
        header=base.conversation_header,
        eu_question=base.experienced_utility_question,
        du_question=base.decision_utility_question,
        stop_system=base.stop_system,
        call=base.stop_call,
        name=f"anchor battery {data.get('version', path.stem)} + {base.name}",
        version=str(data.get("version", "unversioned")),
    )


def _built(
    data, source, path, *, items, headline, header, eu_question, du_question, stop_system, call, name=None, version=None
):
    where = _Where(path)
    if not items:
        raise where.error("self-report items", "the battery has no questions")
    ids = [i.id for i in items]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise where.error("self-report items", f"duplicate ids {duplicates}; each item needs its own id")
    if headline not in ids:
        raise where.error("self_report.headline_item", f"{headline!r} is not one of the items {ids}")
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return Instrument(
        name=name or str(data.get("name", path.stem)),
        version=version or str(data.get("version", "unversioned")),
        source=source,
        sha256=hashlib.sha256(canonical.encode()).hexdigest(),
        self_report=tuple(items),
        headline_item=headline,
        conversation_header=header,
        experienced_utility_question=eu_question,
        decision_utility_question=du_question,
        stop_system=stop_system,
        stop_call=call,
    )


@dataclass(frozen=True)
class _Where:
    """Field checks that name the file and the field in every error."""

    path: Path

    def error(self, field: str, problem: str) -> InstrumentError:
        return InstrumentError(f"--instrument {self.path}: field {field!r}: {problem}")

    def mapping(self, data: dict, field: str) -> dict:
        value = data.get(field)
        if not isinstance(value, dict):
            raise self.error(field, f"expected an object, got {type(value).__name__}")
        return value

    def sequence(self, data: dict, field: str, key: str | None = None) -> list:
        value = data.get(key or field.rsplit(".", 1)[-1])
        if not isinstance(value, list) or not value:
            raise self.error(field, f"expected a non-empty list, got {type(value).__name__}")
        return value

    def text(self, data: dict, field: str, key: str | None = None, placeholders: tuple[str, ...] = ()) -> str:
        value = data.get(key or field.rsplit(".", 1)[-1])
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"expected non-empty text, got {value!r}")
        missing = [p for p in placeholders if p not in value]
        if missing:
            raise self.error(field, f"the text must contain {', '.join(missing)}")
        return value

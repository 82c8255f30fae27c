"""Entries as text an auditor can read or load elsewhere: one JSON object per line, or CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import TextIO

from welfare_offsets.ledger.chain import Entry, canonical_json

EXPORT_FORMATS = ("jsonl", "csv")
_CSV_COLUMNS = ("seq", "time", "kind", "payload", "prev_hash", "hash")


def write_entries(entries: Sequence[Entry], out: TextIO, fmt: str) -> None:
    """jsonl lines are canonical JSON, so anyone can recompute each hash from the line minus `hash`."""
    if fmt == "jsonl":
        for entry in entries:
            out.write(canonical_json(entry.to_dict()) + "\n")
        return
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for entry in entries:
        row = entry.to_dict()
        row["payload"] = canonical_json(entry.payload)
        writer.writerow([row[column] for column in _CSV_COLUMNS])

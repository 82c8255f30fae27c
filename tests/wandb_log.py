"""Read an offline W&B run file (`run-*.wandb`) as its records' bytes, for tests to search.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
each with a 7-byte header (crc32, length, type); a record can be split over blocks. Searching the raw file
can miss a string cut by a chunk header, so tests search the joined chunk payloads instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import wandb

FILE_HEADER = 7
CHUNK_HEADER = 7
BLOCK = 32 * 1024


def record_bytes(path: str | Path, wait_s: float = 120.0) -> bytes:
    """The run file's records, once its writer is done.

    W&B's service process writes the file and may still hold records in its buffer when `finish()` returns
    (seen on a loaded CI machine: a file of nothing but its header), so shut the service down and wait for
    records to appear: a deadline, not a timing assertion.
    """
    wandb.teardown()
    deadline = time.monotonic() + wait_s
    while not (records := _records(Path(path).read_bytes(), path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return records


def _records(raw: bytes, path) -> bytes:
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    payloads, pos = [], FILE_HEADER
    while pos + CHUNK_HEADER <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # too little room for a chunk header: the block is padded
            pos += left
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        payloads.append(raw[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length])
        pos += CHUNK_HEADER + length
    return b"".join(payloads)

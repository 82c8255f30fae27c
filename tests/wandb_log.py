"""Read an offline W&B run file (`run-*.wandb`) as its records' bytes, for tests to search.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
each with a 7-byte header (crc32, length, type); a record can be split over blocks. Searching the raw file
can miss a string cut by a chunk header, so tests search the joined chunk payloads instead.
"""

from __future__ import annotations

from pathlib import Path

FILE_HEADER = 7
CHUNK_HEADER = 7
BLOCK = 32 * 1024


def record_bytes(path: str | Path) -> bytes:
    raw = Path(path).read_bytes()
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

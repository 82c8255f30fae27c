"""Benchmarks write their own `## Name` section of BENCHMARKS.md and leave the others untouched."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace the section starting at `heading` (up to the next `## ` heading), or append it."""
    lines = path.read_text().splitlines(keepends=True) if path.exists() else ["# Benchmarks\n", "\n"]
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        text = "".join(lines).rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    path.write_text(text)


def publish(section: str, heading: str, update_md: str | Path | None) -> None:
    """Print a benchmark's section, and with `--update-md` write it into that file in place of its old one."""
    print(section)
    if update_md:
        replace_section(Path(update_md), heading, section)

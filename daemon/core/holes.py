"""Holes in append-only JSONL files: regions a power cut left zero-filled, or bytes that are
not a line of the file's kind, with complete lines after them.

A power cut between a file's size growing and its data pages reaching the disk leaves pages of
zeros; when later pages did reach the disk, complete lines follow the hole, and a reader that
only looks at the tail (where the next append goes) never notices. A hole swallows the lines it
covers and cuts the ones around it: what remains is one long "line" (from the newline before the
hole to the one after it) that does not parse.

Everything here is pure: bytes in, findings out. The torn last line (no newline yet) is not a
hole: the torn-tail repair owns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NUL = b"\x00"


@dataclass(frozen=True, slots=True)
class Damage:
    """One damaged line: its offset (from the start of the data given, plus `base`) and length
    without its newline; `zeros`: it holds zero bytes (a page a power cut never wrote)."""

    offset: int
    length: int
    zeros: bool


def has_zeros(data: bytes) -> bool:
    """Whether the bytes hold a NUL: JSON escapes it inside strings, so no valid line has one
    (the fast check; `damaged_lines` parses every line)."""
    return NUL in data


def is_all_zeros(data: bytes) -> bool:
    """Whether non-empty bytes are nothing but zeros (a torn side file cut from a hole)."""
    return bool(data) and not data.strip(NUL)


def damaged_lines(data: bytes, is_good: Callable[[bytes], bool], *, base: int = 0) -> list[Damage]:
    """Every complete line (ending in a newline) that holds a NUL or that `is_good` refuses.

    Empty lines are not damage (nothing was lost). Bytes after the last newline are the torn
    tail, not looked at.
    """
    out: list[Damage] = []
    pos = 0
    end = data.rfind(b"\n") + 1
    while pos < end:
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if line:
            zeros = NUL in line
            if zeros or not is_good(line):
                out.append(Damage(base + pos, len(line), zeros))
        pos = nl + 1
    return out


def summarize(damage: list[Damage]) -> str:
    """`3 damaged line(s), 8,192 bytes, zero-filled at 4,096` for a report."""
    total = sum(d.length for d in damage)
    zeros = [d for d in damage if d.zeros]
    where = ", ".join(f"{d.offset:,}" for d in damage[:3]) + (", ..." if len(damage) > 3 else "")
    kind = "zero-filled" if len(zeros) == len(damage) else ("garbled" if not zeros else "mixed")
    return f"{len(damage)} damaged line(s), {total:,} bytes, {kind} at offset {where}"

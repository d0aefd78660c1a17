"""Memory files: `<workspace>/memory/YYYY-MM-DD.md`, where memory flushes leave lasting notes.

OpenClaw's agents read these files at the start of a session (and write them with their own tools);
sessiond only ever appends a section to them, never rewrites one. Worker threads only.
"""

from __future__ import annotations

import fcntl
import os
from datetime import datetime
from pathlib import Path

from daemon.store.fsutil import FILE_MODE, ensure_dir, fsync_dir, write_all


def write_memory(folder: Path, local: datetime, session_key: str, notes: str) -> tuple[Path, int]:
    """Append a flush's notes to `<folder>/YYYY-MM-DD.md` (worker thread): one write, one fsync.

    A new file (and the folders) are created with modes 0600 (0700); a file that exists keeps its
    mode. Returns the path and the bytes written. Raises OSError; nothing is then recorded, and
    the flush is retried.
    """
    path, sizes = write_memory_sections(folder, local, [(session_key, notes)])
    return path, sizes[0]


def write_memory_sections(
    folder: Path, local: datetime, sections: list[tuple[str, str]]
) -> tuple[Path, list[int]]:
    """Append the notes of several flushes (session key, notes) to `<folder>/YYYY-MM-DD.md` in
    one write and one fsync: the reset job flushes thousands of sessions, and a sync each would
    cost more than the notes. Returns the path and the bytes each section took. Raises OSError
    (then none of them is written).

    Several processes append to the same file (the reset job's flush workers, the daemon's own
    flushes): an exclusive lock on the file, from reading its tail to the sync, keeps each
    append whole and the day's heading written once."""
    day = local.strftime("%Y-%m-%d")
    ensure_dir(folder)
    path = folder / f"{day}.md"
    stamp = local.strftime("%H:%M")
    bodies = [f"## {stamp} memory flush ({key})\n\n{notes.strip()}\n" for key, notes in sections]
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size == 0:
            head = f"# {day}\n\n"
        else:
            head = _separator(os.pread(fd, min(2, size), max(0, size - 2)))
        parts = [(head if i == 0 else "\n") + body for i, body in enumerate(bodies)]
        raws = [p.encode("utf-8") for p in parts]
        write_all(fd, b"".join(raws))
        os.fsync(fd)
        if size == 0:
            # Under the lock: an append by another process is not reported durable before
            # the file it went into is.
            fsync_dir(folder)
    finally:
        os.close(fd)
    return path, [len(r) for r in raws]


def _separator(tail: bytes) -> str:
    """Blank line between what the file holds and the new section."""
    if tail.endswith(b"\n\n"):
        return ""
    if tail.endswith(b"\n"):
        return "\n"
    return "\n\n"

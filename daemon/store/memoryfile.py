"""Memory files: `<workspace>/memory/YYYY-MM-DD.md`, where memory flushes leave lasting notes.

OpenClaw's agents read these files at the start of a session (and write them with their own tools);
sessiond only ever appends a section to them, never rewrites one. Worker threads only.
"""

from __future__ import annotations

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
    day = local.strftime("%Y-%m-%d")
    ensure_dir(folder)
    path = folder / f"{day}.md"
    body = f"## {local.strftime('%H:%M')} memory flush ({session_key})\n\n{notes.strip()}\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            data = f"# {day}\n\n{body}"
        else:
            data = _separator(os.pread(fd, min(2, size), max(0, size - 2))) + body
        raw = data.encode("utf-8")
        write_all(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    if size == 0:
        fsync_dir(folder)
    return path, len(raw)


def _separator(tail: bytes) -> str:
    """Blank line between what the file holds and the new section."""
    if tail.endswith(b"\n\n"):
        return ""
    if tail.endswith(b"\n"):
        return "\n"
    return "\n\n"

"""Start-up recovery's checks against archives a reset (and maybe the retention sweep) made.

The journal may still hold the newest lines of a session that is archived, compressed or not:
archiving syncs a transcript before it moves it, so those lines are already in the archive and
replay must not begin a second copy of the session (issue 12). These helpers read a compressed
archive and decide whether a journal line is in it; `opening.replay_line` calls them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import structlog

from daemon.store import fileio, transcript
from daemon.store.fsutil import FILE_MODE, fsync_dir, write_all
from daemon.store.transcript import json_object

log = structlog.get_logger("daemon.store")


def archive_content(gz: Path) -> bytes:
    """A compressed archive's content; empty (logged) when it cannot be read."""
    try:
        return transcript.read_gz(gz)
    except (OSError, EOFError) as e:
        log.error("journal.archive_unreadable", path=str(gz), error=str(e))
        return b""


def check_archived_line(rel: str, gz: Path, content: bytes, offset: int, line: bytes) -> None:
    """A journal line of a session whose archive is compressed must be in the archive. One that
    is not (which archiving's sync should make impossible) is kept beside the archive in
    `<sessionId>.unreplayed` and logged, never written into a new transcript. Raises OSError
    when that side file cannot be written (start-up fails; nothing is lost)."""
    data = line + b"\n"
    if content[offset : offset + len(data)] == data or has_line(content, line):
        return
    # No ".jsonl" in the name: not a transcript of its own (archive.archived_files).
    side = gz.with_name(gz.name.removesuffix(".jsonl.gz") + ".unreplayed")
    log.error("journal.line_missing_from_archive", path=rel, offset=offset, kept=str(side))
    fd = fileio.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        write_all(fd, data)
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
    fsync_dir(side.parent)


class Phases:
    """Seconds spent in each step of start-up, logged with `store.opened`, so that a slow
    start says where its time went (a sync waiting on other writers' dirty pages, say)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[f"seconds{name.capitalize()}"] = round(now - self._last, 3)
        self._last = now


def has_line(content: bytes, line: bytes) -> bool:
    """Whether `line` is one of the lines of `content` (an archive's, decompressed)."""
    at = content.find(line)
    while at >= 0:
        end = at + len(line)
        if (at == 0 or content[at - 1 : at] == b"\n") and content[end : end + 1] == b"\n":
            return True
        at = content.find(line, at + 1)
    return False


def read_any_header(path: Path) -> dict[str, Any]:
    """A transcript's header, compressed or not; empty when unreadable."""
    try:
        if path.name.endswith(".gz"):
            first = transcript.read_gz(path).split(b"\n", 1)[0]
            return json_object(first) or {}
        return transcript.read_header(path) or {}
    except (OSError, EOFError):
        return {}

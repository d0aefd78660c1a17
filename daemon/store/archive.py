"""Archives: transcripts moved (never removed) into `archive/`, described by `archive/index.jsonl`.

    agents/<agentId>/sessions/archive/<sessionId>.jsonl[.gz]
    agents/<agentId>/sessions/archive/index.jsonl   one line per archived session

A move is a rename within one file system followed by an fsync of both folders; the index line is
appended and synced after the move. A crash between the two leaves a file in `archive/` without
an index line, which start-up completes (`missing_index_entries`); the transcript is in exactly
one place at every moment.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from daemon.store.fsutil import FILE_MODE, ensure_dir, fsync_dir, write_all

ARCHIVE_DIR = "archive"
INDEX = "index.jsonl"
REASONS = ("new", "reset", "daily", "idle", "deleted", "orphan", "import")


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """One line of archive/index.jsonl. Times are epoch milliseconds, as in sessions.json."""

    sessionId: str
    sessionKey: str | None
    agentId: str
    reason: str
    startedAt: int | None
    endedAt: int | None
    archivedAt: int
    messages: int
    bytes: int
    sha256: str
    predecessor: str | None
    successor: str | None
    file: str  # name inside archive/

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(obj: dict[str, Any]) -> ArchiveRecord | None:
        try:
            return ArchiveRecord(
                sessionId=str(obj["sessionId"]),
                sessionKey=obj.get("sessionKey"),
                agentId=str(obj["agentId"]),
                reason=str(obj.get("reason", "orphan")),
                startedAt=obj.get("startedAt"),
                endedAt=obj.get("endedAt"),
                archivedAt=int(obj.get("archivedAt") or 0),
                messages=int(obj.get("messages") or 0),
                bytes=int(obj.get("bytes") or 0),
                sha256=str(obj.get("sha256") or ""),
                predecessor=obj.get("predecessor"),
                successor=obj.get("successor"),
                file=str(obj.get("file") or f"{obj['sessionId']}.jsonl"),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class TranscriptStats:
    """What an index line says about a transcript's content."""

    messages: int
    bytes: int
    sha256: str
    started_at: int | None
    ended_at: int | None
    session_key: str | None
    session_id: str | None


def archive_folder(sessions_folder: Path) -> Path:
    return sessions_folder / ARCHIVE_DIR


def transcript_stats(path: Path) -> TranscriptStats:
    """Count messages and hash a transcript (read once, in chunks; used when archiving only)."""
    from daemon.store.transcript import parse_iso_ms

    h = hashlib.sha256()
    size = 0
    messages = 0
    started = ended = None
    key = sid = None
    tail = b""
    opener: Any = open
    if path.name.endswith(".gz"):
        import gzip

        opener = gzip.open
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                messages, started, ended, key, sid = _count(
                    line, messages, started, ended, key, sid, parse_iso_ms
                )
        if tail:
            messages, started, ended, key, sid = _count(
                tail, messages, started, ended, key, sid, parse_iso_ms
            )
    return TranscriptStats(messages, size, h.hexdigest(), started, ended, key, sid)


def _count(
    line: bytes,
    messages: int,
    started: int | None,
    ended: int | None,
    key: str | None,
    sid: str | None,
    parse: Any,
) -> tuple[int, int | None, int | None, str | None, str | None]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return messages, started, ended, key, sid
    if not isinstance(obj, dict):
        return messages, started, ended, key, sid
    ts = parse(obj.get("timestamp"))
    if obj.get("type") == "session":
        key = obj.get("sessionKey") if isinstance(obj.get("sessionKey"), str) else key
        sid = obj.get("id") if isinstance(obj.get("id"), str) else sid
        started = ts or started
    elif obj.get("type") == "message":
        messages += 1
        if started is None:
            started = ts or None
        ended = ts or ended
    return messages, started, ended, key, sid


def move_into_archive(src: Path, name: str) -> Path:
    """Rename `src` into its folder's archive/ under `name` and sync both folders.

    Never overwrites: if `name` is taken, a numbered variant is used. Returns the new path.
    Raises OSError (nothing is lost: the rename is atomic).
    """
    folder = archive_folder(src.parent)
    ensure_dir(folder)
    dest = folder / name
    n = 1
    while dest.exists():
        dest = folder / f"{name}.{n}"
        n += 1
    os.rename(src, dest)
    fsync_dir(folder)
    fsync_dir(src.parent)
    return dest


def append_index(sessions_folder: Path, records: list[ArchiveRecord]) -> None:
    """Append lines to archive/index.jsonl and fsync it. Raises OSError."""
    folder = archive_folder(sessions_folder)
    created = ensure_dir(folder)
    path = folder / INDEX
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        write_all(fd, b"".join(orjson.dumps(r.to_json()) + b"\n" for r in records))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created or not existed:
        fsync_dir(folder)


def read_index(sessions_folder: Path) -> list[ArchiveRecord]:
    """Every parseable line of archive/index.jsonl, in order (a torn last line is skipped)."""
    path = archive_folder(sessions_folder) / INDEX
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rec = ArchiveRecord.from_json(obj)
            if rec is not None:
                out.append(rec)
    return out


def archived_files(sessions_folder: Path) -> Iterator[Path]:
    folder = archive_folder(sessions_folder)
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        name = entry.name
        if entry.is_file() and name != INDEX and ".jsonl" in name and not name.startswith("."):
            yield Path(entry.path)


def missing_index_entries(sessions_folder: Path) -> list[Path]:
    """Files in archive/ that no index line describes (a crash between move and index)."""
    known = {r.file for r in read_index(sessions_folder)}
    return sorted(p for p in archived_files(sessions_folder) if p.name not in known)

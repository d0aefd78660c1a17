"""Archives: transcripts moved (never removed) into `archive/`, described by `archive/index.jsonl`.

    agents/<agentId>/sessions/archive/<sessionId>.jsonl[.gz]
    agents/<agentId>/sessions/archive/index.jsonl   one line per archived session

A move is a rename within one file system followed by an fsync of both folders; the index line is
appended and synced after the move. A crash between the two leaves a file in `archive/` without
an index line, which start-up completes (`missing_index_entries`); the transcript is in exactly
one place at every moment.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from daemon.failpoints import failpoint
from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE, ensure_dir, fsync_dir, sync_filesystem, write_all
from daemon.store.transcript import json_object

ARCHIVE_DIR = "archive"
INDEX = "index.jsonl"
SYNCFS_ABOVE = 16  # files archived at once beyond which one syncfs beats a fsync each
REASONS = ("new", "reset", "daily", "idle", "deleted", "orphan", "import", "missing-transcript")
# A registry row whose transcript was already gone when it was imported: the record keeps its
# key, ids, times and registry fields; no file holds it (`file` names the one that was missing).
MISSING_TRANSCRIPT = "missing-transcript"


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
    registry: dict[str, Any] | None = None  # the registry row, kept for a missing transcript

    def to_json(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict (which deep-copies each value): a reset job
        # writes ten thousand of these, and the mirror turns each into a state record.
        out: dict[str, Any] = {
            "sessionId": self.sessionId,
            "sessionKey": self.sessionKey,
            "agentId": self.agentId,
            "reason": self.reason,
            "startedAt": self.startedAt,
            "endedAt": self.endedAt,
            "archivedAt": self.archivedAt,
            "messages": self.messages,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "predecessor": self.predecessor,
            "successor": self.successor,
            "file": self.file,
        }
        if self.registry is not None:
            out["registry"] = copy.deepcopy(self.registry)
        return out

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
                registry=obj["registry"] if isinstance(obj.get("registry"), dict) else None,
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
    predecessor: str | None = None


def archive_folder(sessions_folder: Path) -> Path:
    return sessions_folder / ARCHIVE_DIR


def transcript_stats(path: Path) -> TranscriptStats:
    """Count messages and hash a transcript (read once, in chunks; used when archiving only).

    v3 lines begin with their `type`, so messages are counted by their first bytes, and only the
    header, the first message and the last one are parsed (the session's key and times):
    parsing every line cost ten times the hashing, and a reset job archives thousands of
    transcripts. Lines that begin otherwise are parsed. When the last message cannot give the
    end time (a torn write, no timestamp), the file is read again line by line, parsing all.
    """
    stats = _stats(path, fast=True) or _stats(path, fast=False)
    assert stats is not None  # read line by line, every line parsed, it always settles
    return stats


def _stats(path: Path, *, fast: bool) -> TranscriptStats | None:
    h = hashlib.sha256()
    size = 0
    tally = _Tally(fast)
    tail = b""
    predecessor = None
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
            if size == len(chunk) and lines:
                predecessor = _header_field(lines[0], "predecessor")
            for line in lines:
                tally.add(line)
        if tail:
            tally.add(tail)
    if not tally.settle():
        return None
    t = tally
    return TranscriptStats(
        t.messages, size, h.hexdigest(), t.started, t.ended, t.key, t.sid, predecessor
    )


_MESSAGE_PREFIX = b'{"type":"message",'
_TYPE_PREFIX = b'{"type":"'
_SESSION_PREFIX = b'{"type":"session"'


class _Tally:
    """What `transcript_stats` reports, line by line: with `fast`, message lines are counted
    by their first bytes and only the newest one is kept, to be parsed at the end."""

    def __init__(self, fast: bool) -> None:
        from daemon.store.transcript import parse_iso_ms

        self.parse = parse_iso_ms
        self.fast = fast
        self.messages = 0
        self.started: int | None = None
        self.ended: int | None = None
        self.key: str | None = None
        self.sid: str | None = None
        self.newest: bytes | None = None  # the newest message line, counted, not parsed
        self.failed = False  # a kept message could not be taken: parse every line

    def add(self, line: bytes) -> None:
        if self.fast and line.startswith(_TYPE_PREFIX) and not line.startswith(_SESSION_PREFIX):
            if not line.startswith(_MESSAGE_PREFIX):
                return  # another kind of entry: not counted, no time of its own
            if self.started is not None:  # else it may be when the session started: parse it
                self.messages += 1
                self.newest = line
                return
        # In order: the message kept may carry the latest time so far.
        if self.newest is not None and not self._take_newest():
            self.failed = True
        self.messages, self.started, self.ended, self.key, self.sid = _count(
            line, self.messages, self.started, self.ended, self.key, self.sid, self.parse
        )

    def settle(self) -> bool:
        """Parse the newest message kept; False when the counts need every line parsed."""
        if self.newest is not None and not self._take_newest():
            return False
        return not self.failed

    def _take_newest(self) -> bool:
        """Parse the message kept. False when it is not one (damaged, or torn), or has no time
        (the end is then an earlier message's, which was counted without being read)."""
        assert self.newest is not None
        line, self.newest = self.newest, None
        m, _s, ended, _k, _i = _count(line, 0, None, None, None, None, self.parse)
        if m != 1 or ended is None:
            return False
        self.ended = ended
        return True


def _header_field(line: bytes, name: str) -> str | None:
    obj = json_object(line)
    if obj is not None and obj.get("type") == "session":
        v = obj.get(name)
        return v if isinstance(v, str) else None
    return None


def _count(
    line: bytes,
    messages: int,
    started: int | None,
    ended: int | None,
    key: str | None,
    sid: str | None,
    parse: Any,
) -> tuple[int, int | None, int | None, str | None, str | None]:
    obj = json_object(line)
    if obj is None:
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


def move_into_archive(src: Path, name: str, *, sync: bool = True) -> Path:
    """Rename `src` into its folder's archive/ under `name` and sync both folders (unless
    `sync` is False: the caller syncs them once for a group of moves).

    Never overwrites: if `name` is taken, a numbered variant is used. Returns the new path.
    Raises OSError (nothing is lost: the rename is atomic).
    """
    folder = archive_folder(src.parent)
    ensure_dir(folder)
    dest = folder / _move_named(src, str(folder), name)
    if sync:
        fsync_dir(folder)
        fsync_dir(src.parent)
    return dest


def _move_named(src: Path, folder: str, name: str) -> str:
    """Rename `src` into the archive folder `folder` (which exists) under `name`, or a numbered
    variant of it if taken; returns the name it got. Strings, not Paths: a reset job moves ten
    thousand files, and building Paths was about a quarter of its archive worker's time."""
    dest = name
    n = 1
    while os.path.lexists(f"{folder}/{dest}"):
        dest = f"{name}.{n}"
        n += 1
    fileio.rename(src, f"{folder}/{dest}")
    return dest


def append_index(sessions_folder: Path, records: list[ArchiveRecord]) -> None:
    """Append lines to archive/index.jsonl and fsync it. Raises OSError.

    A torn last line (a crash during an earlier append) is ended with a newline first, so that
    it stays an unreadable line of its own instead of swallowing the new record."""
    folder = archive_folder(sessions_folder)
    created = ensure_dir(folder)
    path = folder / INDEX
    existed = path.exists()
    fd = fileio.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        lines = b"".join(orjson.dumps(r.to_json()) + b"\n" for r in records)
        write_all(fd, b"\n" + lines if torn else lines)
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
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
        obj = json_object(line)
        if obj is not None:
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


def transcript_candidates(path: Path) -> list[Path]:
    """Where a transcript last known at `path` may be now: moved into archive/ by a reset, or
    compressed to `.gz` by the retention sweep (or the other way round, for an index line that
    names the `.gz` a crash kept from being written)."""
    plain = path.with_name(path.name[: -len(".gz")]) if path.name.endswith(".gz") else path
    gz = plain.with_name(plain.name + ".gz")
    out = [path, plain, gz]
    if plain.parent.name != ARCHIVE_DIR:
        out += [plain.parent / ARCHIVE_DIR / plain.name, plain.parent / ARCHIVE_DIR / gz.name]
    return list(dict.fromkeys(out))


def locate_transcript(path: Path) -> Path:
    """The first of `transcript_candidates(path)` that exists, else `path` itself."""
    for p in transcript_candidates(path):
        if p.is_file():
            return p
    return path


def missing_index_entries(sessions_folder: Path) -> list[Path]:
    """Files in archive/ that no index line describes (a crash between move and index)."""
    known = {r.file for r in read_index(sessions_folder)}
    return sorted(p for p in archived_files(sessions_folder) if p.name not in known)


# ---------------------------------------------------------------------------------------------
# Archiving a session, and finishing what a crash interrupted

CLOSED = "sessiond.closed"
OPENCLAW_SUFFIX = re.compile(
    r"^(?P<base>.+?\.jsonl)\.(?P<kind>reset|deleted)\.(?P<ts>[0-9TZ:.-]+)$"
)


def closing_entry(path: Path) -> dict[str, Any] | None:
    """The `data` of a sessiond.closed entry if it is the transcript's last entry."""
    from daemon.store.transcript import iter_lines_backwards

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        for _off, line in iter_lines_backwards(fd, os.fstat(fd).st_size):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            if isinstance(obj, dict) and obj.get("customType") == CLOSED:
                data = obj.get("data")
                return data if isinstance(data, dict) else {}
            return None
    finally:
        os.close(fd)
    return None


def archive_transcript(
    path: Path,
    agent_id: str,
    reason: str,
    *,
    session_id: str,
    session_key: str | None,
    predecessor: str | None,
    successor: str | None,
    now: int,
) -> ArchiveRecord:
    """Sync, describe, move into archive/ and index one transcript (worker thread).

    Order: fsync the file (so nothing depends on the journal any more), hash it, rename it into
    archive/ (both folders synced), then append and sync the index line. Raises OSError; a crash
    at any point leaves the file in one place, and start-up completes the index.
    """
    fd = fileio.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fileio.fsync(fd)
    finally:
        fileio.close(fd)
    failpoint("archive.after_fsync")
    stats = transcript_stats(path)
    dest = move_into_archive(path, path.name)
    failpoint("archive.after_move")
    rec = ArchiveRecord(
        sessionId=session_id,
        sessionKey=session_key or stats.session_key,
        agentId=agent_id,
        reason=reason,
        startedAt=stats.started_at,
        endedAt=stats.ended_at,
        archivedAt=now,
        messages=stats.messages,
        bytes=stats.bytes,
        sha256=stats.sha256,
        predecessor=predecessor or stats.predecessor,
        successor=successor,
        file=dest.name,
    )
    append_index(path.parent, [rec])
    failpoint("archive.after_index")
    return rec


@dataclass(frozen=True, slots=True)
class ToArchive:
    """A closed transcript to archive (archive_transcripts)."""

    path: Path
    agent_id: str
    reason: str
    session_id: str
    session_key: str | None
    predecessor: str | None
    successor: str | None
    archived_at: int  # the time of the batch that closed it


def archive_transcripts(items: list[ToArchive]) -> list[ArchiveRecord | OSError]:
    """`archive_transcript` for a group (worker thread): each file is synced, described and
    moved as there, then each sessions folder and its archive/ are synced once and the group's
    index lines appended with one sync. The reset job archives thousands of sessions at once;
    four syncs each made it slow. Returns each item's record, or the OSError that stopped it
    (a file whose index line could not be written is in archive/: start-up indexes it)."""
    out: list[ArchiveRecord | OSError] = []
    folders: dict[Path, list[int]] = {}
    # Many files: one syncfs for all of them (as a checkpoint does, store/store.py); a fsync
    # each would cost one disk flush each.
    synced: list[OSError | None] = [None] * len(items)
    try:
        together = len(items) > SYNCFS_ABOVE and _sync_all(items)
    except OSError as e:
        # A write-back error: not retried file by file as if nothing happened (the kernel may
        # have dropped the pages); these stay where they are, and start-up archives them.
        together, synced = True, [e] * len(items)
    if not together:
        synced = [_sync_file(it.path) for it in items]
    made: dict[Path, str] = {}  # sessions folder -> its archive/, made (once per group)
    for i, it in enumerate(items):
        parent = it.path.parent
        try:
            if synced[i] is not None:
                raise synced[i]  # type: ignore[misc]
            failpoint("archive.after_fsync")
            stats = transcript_stats(it.path)
            arch = made.get(parent)
            if arch is None:
                folder = archive_folder(parent)
                ensure_dir(folder)
                arch = made[parent] = str(folder)
            name = _move_named(it.path, arch, it.path.name)
            failpoint("archive.after_move")
        except OSError as e:
            out.append(e)
            continue
        out.append(
            ArchiveRecord(
                sessionId=it.session_id,
                sessionKey=it.session_key or stats.session_key,
                agentId=it.agent_id,
                reason=it.reason,
                startedAt=stats.started_at,
                endedAt=stats.ended_at,
                archivedAt=it.archived_at,
                messages=stats.messages,
                bytes=stats.bytes,
                sha256=stats.sha256,
                predecessor=it.predecessor or stats.predecessor,
                successor=it.successor,
                file=name,
            )
        )
        folders.setdefault(parent, []).append(i)
    for folder, idx in folders.items():
        try:
            fsync_dir(archive_folder(folder))
            fsync_dir(folder)
            append_index(folder, [r for i in idx if isinstance(r := out[i], ArchiveRecord)])
            failpoint("archive.after_index")
        except OSError as e:
            for i in idx:
                out[i] = e
    return out


def _sync_all(items: list[ToArchive]) -> bool:
    """syncfs on each file system the items are on; False when it is not available. Raises
    OSError (a write-back error)."""
    devices: dict[int, Path] = {}
    for it in items:
        devices.setdefault(os.stat(it.path.parent).st_dev, it.path.parent)
    return all(sync_filesystem(folder) for folder in devices.values())


def _sync_file(path: Path) -> OSError | None:
    try:
        fd = fileio.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fileio.fsync(fd)
        finally:
            fileio.close(fd)
    except OSError as e:
        return e
    return None


def index_orphan(path: Path, agent_id: str, now: int, reason: str | None = None) -> ArchiveRecord:
    """An index line for a file already in archive/ that no line describes (after a crash)."""
    stats = transcript_stats(path)
    closed = closing_entry(path) or {}
    rec = ArchiveRecord(
        sessionId=stats.session_id or path.name.split(".jsonl")[0],
        sessionKey=stats.session_key,
        agentId=agent_id,
        reason=reason or str(closed.get("reason") or "orphan"),
        startedAt=stats.started_at,
        endedAt=stats.ended_at,
        archivedAt=now,
        messages=stats.messages,
        bytes=stats.bytes,
        sha256=stats.sha256,
        predecessor=closed.get("predecessor")
        if isinstance(closed.get("predecessor"), str)
        else None,
        successor=closed.get("successor") if isinstance(closed.get("successor"), str) else None,
        file=path.name,
    )
    append_index(path.parent.parent, [rec])
    return rec


def openclaw_archive_time(ts: str) -> int | None:
    """`2026-11-17T07-45-00.013Z` (OpenClaw's file-name form) as epoch ms."""
    from daemon.store.transcript import parse_iso_ms

    m = re.match(r"^(\d{4}-\d{2}-\d{2})T(\d{2})-(\d{2})-(\d{2})(\.\d+)?Z$", ts)
    if m is None:
        return None
    return parse_iso_ms(f"{m.group(1)}T{m.group(2)}:{m.group(3)}:{m.group(4)}{m.group(5) or ''}Z")


def adopt_openclaw_archives(
    sessions_folder: Path,
    agent_id: str,
    key_of: dict[str, str],
    now: int,
    active: dict[str, tuple[str, int | None]] | None = None,
) -> list[ArchiveRecord]:
    """Move OpenClaw's `<id>.jsonl.reset.<ts>` / `.jsonl.deleted.<ts>` files into archive/.

    Content stays byte-identical (a rename); the index line takes its reason from the suffix,
    archivedAt from the timestamp, and the session key from `key_of` (session id -> key, e.g.
    from OpenClaw's usageFamilySessionIds) or the transcript itself when it can be recovered.
    Predecessor and successor are rebuilt per key from the time order (daemon/core/lineage.py);
    `active` (key -> the key's active session id and start) links the newest to the current.
    """
    from daemon.core.lineage import Ended, rebuild

    found: list[tuple[Path, str, ArchiveRecord]] = []
    for entry in sorted(os.scandir(sessions_folder), key=lambda e: e.name):
        m = OPENCLAW_SUFFIX.match(entry.name)
        if m is None or not entry.is_file():
            continue
        src = Path(entry.path)
        stats = transcript_stats(src)
        base = m.group("base")
        sid = stats.session_id or base[: -len(".jsonl")]
        rec = ArchiveRecord(
            sessionId=sid,
            sessionKey=key_of.get(sid) or stats.session_key,
            agentId=agent_id,
            reason=m.group("kind"),
            startedAt=stats.started_at,
            endedAt=stats.ended_at,
            archivedAt=openclaw_archive_time(m.group("ts")) or now,
            messages=stats.messages,
            bytes=stats.bytes,
            sha256=stats.sha256,
            predecessor=None,
            successor=None,
            file=base,
        )
        found.append((src, base, rec))
    by_key: dict[str, list[Ended]] = {}
    for _src, _base, rec in found:
        if rec.sessionKey is not None:
            e = Ended(rec.sessionId, rec.startedAt, rec.archivedAt)
            by_key.setdefault(rec.sessionKey, []).append(e)
    links: dict[str, tuple[str | None, str | None]] = {}
    for key, ended in by_key.items():
        cur, started = (active or {}).get(key, (None, None))
        links.update(rebuild(ended, cur, started))
    out: list[ArchiveRecord] = []
    for src, base, rec in found:
        dest = move_into_archive(
            src, base if not (archive_folder(sessions_folder) / base).exists() else src.name
        )
        pred, succ = links.get(rec.sessionId, (None, None))
        rec = replace(rec, predecessor=pred, successor=succ, file=dest.name)
        append_index(sessions_folder, [rec])
        out.append(rec)
    return out

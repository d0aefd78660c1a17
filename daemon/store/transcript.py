"""Transcripts in OpenClaw's v3 JSONL format: building lines, reading from the end, torn tails.

A transcript is append-only. The first line is the session header; every later line is an entry
chained to the one before by `parentId`. Nothing here rewrites a complete line: a torn last line
(a crash mid-write) is moved into a side file before the transcript is cut back to its last newline.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE, fsync_dir, write_all

log = structlog.get_logger("daemon.store")

TAIL_CHUNK = 64 * 1024


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as OpenClaw's ISO-8601 UTC form: 2026-11-17T18:15:00.209Z."""
    sec, ms = divmod(epoch_ms, 1000)
    return f"{_iso_second(sec)}{ms:03d}Z"


@functools.lru_cache(maxsize=16)
def _iso_second(sec: int) -> str:
    # Every line of a batch (and every batch of a second) has the same second: formatted once.
    return datetime.fromtimestamp(sec, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def parse_iso_ms(v: Any) -> int:
    """An ISO-8601 timestamp (as in transcripts) as epoch milliseconds; 0 when unreadable."""
    if not isinstance(v, str):
        return 0
    try:
        return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def header_line(
    session_id: str, session_key: str, now_ms: int, cwd: str, predecessor: str | None = None
) -> bytes:
    """The v3 session header. `sessionKey` (and `predecessor`, the session a reset replaced) are
    our additions, which OpenClaw ignores: they let registry and lineage be rebuilt from files."""
    header: dict[str, Any] = {
        "type": "session",
        "version": 3,
        "id": session_id,
        "timestamp": iso_ms(now_ms),
        "cwd": cwd,
        "sessionKey": session_key,
    }
    if predecessor is not None:
        header["predecessor"] = predecessor
    return orjson.dumps(header)


def custom_line(
    entry_id: str,
    parent_id: str | None,
    timestamp: str,
    kind: str,
    data: Any,
    origin: dict[str, Any] | None = None,
) -> bytes:
    """An OpenClaw `custom` entry (as model-snapshot is): `customType` names what it records;
    `origin` as on a message, for an inbound command recorded this way (/stop)."""
    entry: dict[str, Any] = {
        "type": "custom",
        "customType": kind,
        "data": data,
        "id": entry_id,
        "parentId": parent_id,
        "timestamp": timestamp,
    }
    if origin is not None:
        entry["origin"] = origin
    return orjson.dumps(entry)


def message_line(
    entry_id: str,
    parent_id: str | None,
    timestamp: str,
    message: dict[str, Any],
    origin: dict[str, Any] | None = None,
) -> bytes:
    """A v3 `message` entry; `origin` carries inbound metadata (channel, sender, message id).

    `timestamp` is the ISO form (`iso_ms`), computed once per batch by the caller.
    """
    entry: dict[str, Any] = {
        "type": "message",
        "id": entry_id,
        "parentId": parent_id,
        "timestamp": timestamp,
        "message": message,
    }
    if origin is not None:
        entry["origin"] = origin
    return orjson.dumps(entry)


def json_object(line: bytes) -> dict[str, Any] | None:
    """The JSON object on a transcript line; None for anything else (a torn or damaged line,
    JSON that is not an object), which readers skip."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------------------------
# Reading from the end


@dataclass(frozen=True, slots=True)
class Tail:
    """What a writer needs to continue a transcript: its size and its last entry id."""

    size: int
    last_entry_id: str | None
    header: dict[str, Any] | None


def read_header(path: Path) -> dict[str, Any] | None:
    """The first line of a transcript if it is a session header, else None (bounded read)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(TAIL_CHUNK * 4)
    except OSError:
        return None
    obj = json_object(first)
    return obj if obj is not None and obj.get("type") == "session" else None


def iter_lines_backwards(fd: int, end: int, chunk: int = TAIL_CHUNK) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, line) for complete lines before `end`, newest first, reading only as needed.

    A trailing fragment without a newline is skipped: it is either being written right now or torn.
    """
    pos = end
    carry = b""  # bytes from `pos` up to the lines already yielded; starts mid-line
    trimmed = False
    while pos > 0:
        start = max(0, pos - chunk)
        data = os.pread(fd, pos - start, start) + carry
        pos = start
        if not trimmed:
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            data = data[:cut]
            trimmed = True
        parts = data.split(b"\n")
        carry = parts[0]
        offsets = []
        off = pos + len(carry) + 1
        for part in parts[1:]:
            offsets.append(off)
            off += len(part) + 1
        for i in range(len(parts) - 1, 0, -1):
            yield offsets[i - 1], parts[i]
    if trimmed:
        yield 0, carry


def read_tail(path: Path) -> Tail:
    """Size and last entry id of a transcript, reading only its end."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        last_id: str | None = None
        header: dict[str, Any] | None = None
        for _off, line in iter_lines_backwards(fd, size):
            obj = json_object(line)
            if obj is None:
                continue
            if obj.get("type") == "session":
                header = obj
                break
            if isinstance(obj.get("id"), str):
                last_id = obj["id"]
                break
        return Tail(size=size, last_entry_id=last_id, header=header)
    finally:
        os.close(fd)


def read_entries_backwards(
    path: Path, before: int | None, limit: int
) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """Up to `limit` entries (not the header) ending before byte offset `before`, newest first.

    Returns the entries with their offsets and whether the start of the file was reached.
    A compressed archive (`.gz`) is read whole, decompressed: archives are bounded, and offsets
    into the decompressed bytes work as cursors just as file offsets do.
    """
    if path.name.endswith(".gz"):
        return _entries_backwards_in(read_gz(path), before, limit)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        end = size if before is None else min(before, size)
        return _collect_entries(iter_lines_backwards(fd, end), limit)
    finally:
        os.close(fd)


def read_gz(path: Path) -> bytes:
    """The decompressed content of a `.gz` transcript (raises OSError, EOFError, BadGzipFile)."""
    import gzip

    with gzip.open(path, "rb") as f:
        return f.read()


def lines_backwards_in(data: bytes, end: int) -> Iterator[tuple[int, bytes]]:
    """`iter_lines_backwards` over bytes in memory (a decompressed archive)."""
    end = min(end, len(data))
    cut = data.rfind(b"\n", 0, end)
    if cut < 0:
        return
    pos = cut  # the newline that ends the line to yield next
    while True:
        start = data.rfind(b"\n", 0, pos) + 1
        yield start, data[start:pos]
        if start == 0:
            return
        pos = start - 1


def _entries_backwards_in(
    data: bytes, before: int | None, limit: int
) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    return _collect_entries(
        lines_backwards_in(data, len(data) if before is None else before), limit
    )


def _collect_entries(
    lines: Iterator[tuple[int, bytes]], limit: int
) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """Up to `limit` parsed entries (not the header) from newest-first lines, and whether the
    lines ran out (the start of the transcript was reached)."""
    out: list[tuple[int, dict[str, Any]]] = []
    for off, line in lines:
        obj = json_object(line)
        if obj is None or obj.get("type") == "session":
            continue
        out.append((off, obj))
        if len(out) >= limit:
            return out, False
    return out, True


# ---------------------------------------------------------------------------------------------
# Torn tails


def torn_fragment_path(path: Path, now_ms: int) -> Path:
    stamp = iso_ms(now_ms).replace(":", "-")
    return path.with_name(f"{path.name}.torn-{stamp}")


def cut_tail(path: Path, keep: int, now_ms: int) -> Path | None:
    """Move bytes after offset `keep` into a side file, then cut the transcript back to `keep`.

    The side file is written and synced before the transcript shrinks, so the fragment is never
    lost. Returns the side file's path, or None when there was nothing to keep (nothing to cut,
    or only zero bytes: those are cut without a side file).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size <= keep:
            return None
        fragment = os.pread(fd, size - keep, keep)
        if not fragment.strip(b"\0"):
            # Zeroes a power cut left where pages never reached the disk: nothing to keep, and
            # thousands of such side files would bury the ones that hold real bytes.
            fileio.ftruncate(fd, keep)
            fileio.fsync(fd)
            log.warning("transcript.zeroed_tail_cut", path=str(path), bytes=size - keep)
            return None
        side = torn_fragment_path(path, now_ms)
        n = 0
        while side.exists():
            n += 1
            side = torn_fragment_path(path, now_ms + n)
        sfd = fileio.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            write_all(sfd, fragment)
            fileio.fsync(sfd)
        finally:
            os.close(sfd)
        fsync_dir(path.parent)
        fileio.ftruncate(fd, keep)
        fileio.fsync(fd)
        return side
    finally:
        os.close(fd)


def repair_torn_tail(path: Path, now_ms: int) -> Path | None:
    """If the last line lacks its newline, keep the fragment aside and cut it off."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        pos = size
        while pos > 0:
            start = max(0, pos - TAIL_CHUNK)
            buf = os.pread(fd, pos - start, start)
            i = buf.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        else:
            keep = 0
    finally:
        os.close(fd)
    return cut_tail(path, keep, now_ms)

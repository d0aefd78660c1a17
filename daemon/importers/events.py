"""Transcripts as lines of events: hashing and counting, reset windows, v3 headers, zstd.

Shared by both OpenClaw eras. A transcript to import is described (size, sha256, entries,
messages) before it is written, from the same generator of bytes the writer will use, so the
writer can check what it wrote against what was read.

OpenClaw 2026.9 keeps the session id across a reset and appends a `{"type":"reset"}` event.
sessiond begins a new session at a reset, so `plan_session` turns each window before a reset
marker into an archived session (reason from the marker: reset, idle, daily) that ends with its
marker, and the window after the last marker into the live session under the original id.
Earlier windows get stable derived ids (uuid5), so a re-run recognises them; `predecessor` and
`successor` in the archive index, and `predecessor` in their headers, chain them in order. The
events' JSON is kept exactly as stored, one per line, under a v3 header carrying `sessionKey`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from daemon.importers.plan import Content, PlannedTranscript

CHUNK = 1 << 20
# Stable ids for the windows of a 2026.9 session that a reset split off.
WINDOW_NAMESPACE = uuid.UUID("5e55104d-0c1a-4e2a-9f6b-17a4d0e0c9a1")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ARCHIVE_NAME = re.compile(
    r"^(?P<base>.+?\.jsonl)\.(?P<kind>reset|deleted)"
    r"\.(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?Z)"
    r"(?:\.(?P<gen>[0-9A-Za-z]+))?(?P<zst>\.zst)?$"
)
MARKER_REASONS = {"reset": "reset", "idle": "idle", "daily": "daily", "new": "new"}


def iso_to_ms(value: Any) -> int | None:
    """An ISO-8601 UTC time as exact epoch milliseconds (integer arithmetic, no float rounding)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(milliseconds=1)


def suffix_time_ms(ts: str) -> int | None:
    """`2026-11-17T07-45-00.013Z` (an archive name's time, `-` for `:`) as epoch ms."""
    date, _, clock = ts.partition("T")
    return iso_to_ms(f"{date}T{clock.replace('-', ':')}")


# ---------------------------------------------------------------------------------------------
# OpenClaw's transcript file names


@dataclass(frozen=True, slots=True)
class ArchiveName:
    base: str  # the active name it had: <sessionId>.jsonl or <sessionId>-topic-<thread>.jsonl
    reason: str  # reset | deleted
    archived_at: int | None
    generation: str | None
    compressed: bool


def parse_archive_name(name: str) -> ArchiveName | None:
    m = ARCHIVE_NAME.match(name)
    if m is None:
        return None
    return ArchiveName(
        base=m["base"],
        reason=m["kind"],
        archived_at=suffix_time_ms(m["ts"]),
        generation=m["gen"],
        compressed=m["zst"] is not None,
    )


def session_id_of_name(name: str) -> str:
    """The session id in a transcript name: `<id>.jsonl` or `<id>-topic-<thread>.jsonl`."""
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return stem.split("-topic-", 1)[0]


# ---------------------------------------------------------------------------------------------
# Reading and describing bytes


def zstd_decompress(data: bytes) -> bytes:
    """Decompress zstd data; raises ValueError naming why it cannot (no module, bad data)."""
    try:
        from backports import zstd
    except ImportError:
        try:
            from compression import zstd  # type: ignore[import-not-found,no-redef]
        except ImportError:
            raise ValueError("zstd not available (install backports.zstd)") from None
    try:
        out: bytes = zstd.decompress(data)
    except zstd.ZstdError as e:
        raise ValueError(f"zstd data unreadable: {e}") from None
    return out


def header_of(line: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and obj.get("type") == "session" else None


@dataclass(frozen=True, slots=True)
class EventMeta:
    """What the plan needs to know about one event without keeping its text."""

    pos: int  # index among the session's events (header excluded)
    type: str
    reason: str | None  # a reset marker's reason
    timestamp: str | None


def meta_of(pos: int, line: bytes) -> EventMeta:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return EventMeta(pos, "?", None, None)
    if not isinstance(obj, dict):
        return EventMeta(pos, "?", None, None)
    reason = obj.get("reason")
    ts = obj.get("timestamp")
    return EventMeta(
        pos,
        str(obj.get("type")),
        reason if isinstance(reason, str) else None,
        ts if isinstance(ts, str) else None,
    )


def describe(
    chunks: Iterable[bytes], *, byte_copy: bool, produce: Callable[[], Iterator[bytes]]
) -> Content:
    """Hash and count a transcript's bytes: size, sha256, entries after the header, messages."""
    h = hashlib.sha256()
    size = entries = messages = 0
    started: int | None = None
    ended: int | None = None
    first = True
    tail = b""

    def line_seen(line: bytes) -> None:
        nonlocal first, entries, messages, started, ended
        if first:
            first = False
            meta = meta_of(-1, line)
            if meta.type == "session":
                started = iso_to_ms(meta.timestamp)
                return
        if not line.strip():
            return
        entries += 1
        meta = meta_of(entries, line)
        if meta.type == "message":
            messages += 1
            ts = iso_to_ms(meta.timestamp)
            if ts is not None:
                ended = ts
                if started is None:
                    started = ts

    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
        parts = (tail + chunk).split(b"\n")
        tail = parts.pop()
        for line in parts:
            line_seen(line)
    if tail:
        line_seen(tail)
    return Content(size, h.hexdigest(), entries, messages, started, ended, byte_copy, produce)


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def first_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.readline(4 * CHUNK)


# ---------------------------------------------------------------------------------------------
# Sessions as lists of events, split at reset markers


@dataclass(frozen=True, slots=True)
class Window:
    """Events [start, stop) of a session, closed by a reset marker (`reason`) or still open."""

    start: int
    stop: int
    reason: str | None


def split_windows(events: list[EventMeta]) -> list[Window]:
    """Cut a 2026.9 transcript at its reset markers; each marker ends the window it closes."""
    windows: list[Window] = []
    start = 0
    for ev in events:
        if ev.type == "reset":
            windows.append(Window(start, ev.pos + 1, MARKER_REASONS.get(ev.reason or "", "reset")))
            start = ev.pos + 1
    windows.append(Window(start, len(events), None))
    return windows


def window_id(session_id: str, index: int, count: int) -> str:
    """The last window keeps the session's id; earlier ones get a stable derived id."""
    if index == count - 1:
        return session_id
    return str(uuid.uuid5(WINDOW_NAMESPACE, f"{session_id}/window/{index}"))


def v3_header(
    session_id: str,
    timestamp: str,
    cwd: Any,
    session_key: str | None,
    predecessor: str | None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A v3 session header as sessiond writes it (`sessionKey`, and `predecessor` after a split)."""
    header: dict[str, Any] = {
        "type": "session",
        "version": 3,
        "id": session_id,
        "timestamp": timestamp,
        "cwd": cwd if isinstance(cwd, str) else "",
    }
    for k, v in (extra or {}).items():
        if k not in header and k not in ("sessionKey", "predecessor"):
            header[k] = v
    if session_key is not None:
        header["sessionKey"] = session_key
    if predecessor is not None:
        header["predecessor"] = predecessor
    return orjson.dumps(header)


def event_line(text: str) -> bytes:
    """One stored event as one JSONL line: its JSON exactly as stored, unless it spans lines."""
    if "\n" not in text and "\r" not in text:
        return text.encode()
    try:
        return orjson.dumps(orjson.loads(text))
    except orjson.JSONDecodeError:
        return text.replace("\r", "\\r").replace("\n", "\\n").encode()


@dataclass(slots=True)
class EventSource:
    """A session's events, readable again by position: `lines(start, stop)` yields raw lines."""

    header: dict[str, Any] | None
    events: list[EventMeta]
    lines: Callable[[int, int], Iterator[bytes]]


def events_from_jsonl(data: bytes) -> EventSource:
    raw = [line for line in data.split(b"\n") if line.strip()]
    header = header_of(raw[0]) if raw else None
    body = raw[1:] if header is not None else raw
    metas = [meta_of(i, line) for i, line in enumerate(body)]
    return EventSource(header, metas, lambda a, b: iter(body[a:b]))


@dataclass(frozen=True, slots=True)
class Ending:
    """How a session's last window ends: live (active) or archived for a reason."""

    active: bool
    reason: str | None = None
    archived_at: int | None = None
    predecessor: str | None = None  # of the first window
    successor: str | None = None  # of the last window


def plan_session(
    agent_id: str,
    session_id: str,
    session_key: str | None,
    source: EventSource,
    ending: Ending,
    origin: str,
    entry: dict[str, Any] | None,
) -> list[PlannedTranscript]:
    """Rebuilt v3 transcripts for one session, one per window (see the module docstring)."""
    windows = split_windows(source.events)
    head = source.header or {}
    ts0 = head.get("timestamp") if isinstance(head.get("timestamp"), str) else None
    if ts0 is None:
        ts0 = source.events[0].timestamp if source.events else None
    extra = {
        k: v for k, v in head.items() if k not in ("type", "version", "id", "timestamp", "cwd")
    }
    ids = [window_id(session_id, i, len(windows)) for i in range(len(windows))]
    if entry is not None and len(ids) > 1:
        # OpenClaw's own record of a key's sessions, oldest first, now names every window.
        family = [i for i in entry.get("usageFamilySessionIds") or [] if isinstance(i, str)]
        family = family or [session_id]
        if session_id in family:
            at = family.index(session_id)
            family[at : at + 1] = ids
        entry = {**entry, "usageFamilySessionIds": family}
    out: list[PlannedTranscript] = []
    for i, w in enumerate(windows):
        last = i == len(windows) - 1
        sid = ids[i]
        if i == 0:
            started = ts0 or ""
        else:
            started = source.events[windows[i - 1].stop - 1].timestamp or ts0 or ""
        pred = ids[i - 1] if i > 0 else ending.predecessor
        succ = ending.successor if last else ids[i + 1]
        header = v3_header(sid, started, head.get("cwd"), session_key, pred, extra)

        def produce(
            header: bytes = header, start: int = w.start, stop: int = w.stop
        ) -> Iterator[bytes]:
            yield header + b"\n"
            for line in source.lines(start, stop):
                yield line + b"\n"

        content = describe(produce(), byte_copy=False, produce=produce)
        active = last and ending.active
        if w.reason is not None:
            reason: str | None = w.reason
            marker_ts = source.events[w.stop - 1].timestamp
            archived_at = iso_to_ms(marker_ts)
        else:
            reason, archived_at = ending.reason, ending.archived_at
        note = None
        if len(windows) > 1:
            note = f"window {i + 1} of {len(windows)} of {session_id}"
            if w.reason is not None:
                note += f" (ended by a {w.reason} marker)"
        out.append(
            PlannedTranscript(
                agent_id=agent_id,
                session_id=sid,
                session_key=session_key,
                origin=origin if len(windows) == 1 else f"{origin} [events {w.start + 1}-{w.stop}]",
                name=f"{sid}.jsonl",
                content=content,
                active=active,
                entry=entry if active else None,
                reason=None if active else reason,
                archived_at=None if active else archived_at,
                predecessor=pred,
                successor=succ,
                note=note,
            )
        )
    return out

"""`sessiond backup restore --from BACKUP --state-dir NEW`: a lost state folder, rebuilt from the
mirror alone.

Every mirrored session becomes a transcript again, line by line as it was (`line_of`), with its
v3 header (which carries the session key). A session the mirror records as archived (its state
record, `<backup>/<id>/state.json`: reason, times, predecessor and successor as they were) goes
to `archive/` with that index line, deleted ones included. For a mirror without state records
(written before them), a session whose last entry is its closing entry, or that another, newer
session of the same key replaced, is archived. The others are the active sessions of a new
`sessions.json`. Message ids of the last
`dedupWindowHours` are written to the idempotency index, so an adapter that retries a message
after the restore gets its first answer back instead of a second copy.

The new folder must hold no transcripts: a restore never merges into, or overwrites, anything.
Files are written with mode 0600 (folders 0700), synced, and named only once complete. The caller
holds the new folder's lock.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from daemon.core.ingest import ingest_answer
from daemon.store import archive
from daemon.store import backup as mirror_files
from daemon.store.archive import ArchiveRecord
from daemon.store.dedup import DedupIndex, DedupKey
from daemon.store.fsutil import (
    atomic_write,
    ensure_dir,
    fsync_dir,
    write_new_file,
)
from daemon.store.registry import SESSIONS_JSON
from daemon.store.transcript import header_line, parse_iso_ms

CLOSED = archive.CLOSED
UNKNOWN_REASON = "orphan"  # archived, but the mirror does not say why (no closing entry)


class RestoreError(Exception):
    """The restore cannot start (the target holds sessions, the source is not a backup)."""


@dataclass(slots=True)
class Rebuilt:
    """One session as the mirror tells it."""

    agent_id: str
    session_id: str
    session_key: str | None
    lines: list[bytes]
    objs: list[Any]
    started: int
    last: int
    closed: dict[str, Any] | None  # the closing entry's data, if it ends with one
    state: dict[str, Any] | None = None  # its state record: archived, and how

    @property
    def header(self) -> dict[str, Any] | None:
        h = self.objs[0] if self.objs else None
        return h if isinstance(h, dict) and h.get("type") == "session" else None


@dataclass(slots=True)
class RestoreReport:
    sessions: int = 0
    active: int = 0
    archived: int = 0
    entries: int = 0
    messages: int = 0
    agents: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "active": self.active,
            "archived": self.archived,
            "entries": self.entries,
            "messages": self.messages,
            "agents": self.agents,
        }

    def render(self) -> str:
        return (
            f"restored {self.sessions} session(s) ({self.active} active, {self.archived} "
            f"archived), {self.entries} entries ({self.messages} messages) for agent(s) "
            f"{', '.join(self.agents) or '-'}"
        )


def has_sessions(state_dir: Path) -> bool:
    """Whether a state folder already holds any transcript or registry."""
    agents = state_dir / "agents"
    if not agents.is_dir():
        return False
    for agent in list(os.scandir(agents)):
        folder = Path(agent.path) / "sessions"
        if folder.is_dir():
            names = [e.name for e in os.scandir(folder)]
            if any(".jsonl" in n or n == SESSIONS_JSON for n in names):
                return True
    return False


def rebuild(root: Path, session_id: str, cwd: str) -> Rebuilt | None:
    """One session's lines from its mirror: each line once, in mirror order, header first."""
    seen: set[str] = set()
    lines: list[bytes] = []
    objs: list[Any] = []
    agent_id = key = None
    for rec in mirror_files.read_records(root, session_id):
        k = mirror_files.key_of_record(rec)
        if k in seen:
            continue
        seen.add(k)
        meta = rec["metadata"]
        agent_id = agent_id or meta.get("agentId")
        key = key or meta.get("sessionKey")
        line = mirror_files.line_of(rec)
        lines.append(line)
        objs.append(mirror_files.entry_of(rec))
    if not lines or not isinstance(agent_id, str):
        return None
    times = [parse_iso_ms(o.get("timestamp")) for o in objs if isinstance(o, dict)]
    times = [t for t in times if t] or [0]
    first = objs[0]
    if not (isinstance(first, dict) and first.get("type") == "session"):
        # A mirror that lost its first record: a header is written again, so the transcript
        # stays a v3 transcript that knows its key.
        lines.insert(0, header_line(session_id, key or "", min(times), cwd))
        objs.insert(0, orjson.loads(lines[0]))
    elif key is None and isinstance(first.get("sessionKey"), str):
        key = first["sessionKey"]
    last = objs[-1]
    closed = None
    if isinstance(last, dict) and last.get("customType") == CLOSED:
        data = last.get("data")
        closed = data if isinstance(data, dict) else {}
    state = mirror_files.read_state(root, session_id)
    return Rebuilt(agent_id, session_id, key, lines, objs, min(times), max(times), closed, state)


def write_new(path: Path, lines: list[bytes]) -> None:
    """Write a transcript that must not exist yet (O_EXCL), synced. Raises OSError."""
    ensure_dir(path.parent)
    write_new_file(path, b"".join(line + b"\n" for line in lines))


def registry_entry(s: Rebuilt, path: Path) -> dict[str, Any]:
    """A sessions.json entry from what the transcript says (the adapter's delivery fields come
    back with the session's next message)."""
    entry: dict[str, Any] = {
        "sessionId": s.session_id,
        "sessionFile": str(path),
        "updatedAt": s.last,
        "sessionStartedAt": s.started,
        "compactionCount": sum(
            1 for o in s.objs if isinstance(o, dict) and o.get("type") == "compaction"
        ),
    }
    tokens = 0
    for o in s.objs:
        msg = o.get("message") if isinstance(o, dict) else None
        if not isinstance(msg, dict):
            continue
        usage = msg.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("totalTokens"), int):
            tokens = usage["totalTokens"]
        else:
            tokens += math.ceil(len(orjson.dumps(msg.get("content"))) / 4)
        origin = o.get("origin")
        if msg.get("role") == "user" and isinstance(origin, dict):
            entry["lastInteractionAt"] = parse_iso_ms(o.get("timestamp")) or s.last
            channel = origin.get("channel")
            if isinstance(channel, str):
                chat = str(origin.get("chatType") or "direct")
                entry["chatType"] = "direct" if chat == "direct" else "group"
                entry["lastChannel"] = channel
                entry["lastAccountId"] = origin.get("accountId") or "default"
                if chat != "direct":
                    entry["channel"] = channel
                    entry["groupId"] = origin.get("groupId")
    entry["totalTokens"] = tokens
    entry.setdefault("lastInteractionAt", s.started)
    return entry


def active_sessions(sessions: list[Rebuilt]) -> set[int]:
    """Which sessions (by `id()`) come back active: per key, the newest one that the mirror
    neither records as archived nor ends with a closing entry; the others are archived."""
    active: dict[tuple[str, str], Rebuilt] = {}
    for s in sessions:
        if s.closed is None and s.state is None and s.session_key:
            k = (s.agent_id, s.session_key)
            cur = active.get(k)
            if cur is None or (s.started, s.last) > (cur.started, cur.last):
                active[k] = s
    return {id(s) for s in active.values()}


def restore(
    root: Path,
    state_dir: Path,
    *,
    workspace: Callable[[str], str],
    dedup_max: int = 10_000,
    dedup_window_ms: int = 24 * 3_600_000,
    now_ms: int = 0,
    progress: Callable[[int, int], None] = lambda _d, _t: None,
) -> RestoreReport:
    """Rebuild `state_dir` from the mirror at `root`. Raises RestoreError or OSError."""
    if not (root / mirror_files.BACKUP_MARKER).is_file() and not mirror_files.mirrored_sessions(
        root
    ):
        raise RestoreError(f"{root} is not a sessiond backup (no {mirror_files.BACKUP_MARKER})")
    if has_sessions(state_dir):
        raise RestoreError(
            f"{state_dir} already holds sessions; restore into a new, empty state folder"
        )
    sids = mirror_files.mirrored_sessions(root)
    sessions: list[Rebuilt] = []
    for n, sid in enumerate(sids, 1):
        s = rebuild(root, sid, "")
        if s is not None:
            if not (s.header or {}).get("cwd"):
                s = rebuild(root, sid, workspace(s.agent_id))
            if s is not None:
                sessions.append(s)
        progress(n, 2 * len(sids))
    chosen = active_sessions(sessions)
    report = RestoreReport()
    registries: dict[str, dict[str, Any]] = {}
    records: dict[str, list[ArchiveRecord]] = {}
    dedup = DedupIndex(state_dir / "dedup", dedup_max, dedup_window_ms)
    ids: list[tuple[int, str, DedupKey, dict[str, Any]]] = []
    ensure_dir(state_dir)
    for n, s in enumerate(sessions, 1):
        folder = state_dir / "agents" / s.agent_id / "sessions"
        if id(s) in chosen:
            path = folder / f"{s.session_id}.jsonl"
            write_new(path, s.lines)
            assert s.session_key is not None
            registries.setdefault(s.agent_id, {})[s.session_key] = registry_entry(s, path)
            report.active += 1
        else:
            path = folder / archive.ARCHIVE_DIR / f"{s.session_id}.jsonl"
            write_new(path, s.lines)
            records.setdefault(s.agent_id, []).append(_index_record(s, path))
            report.archived += 1
        ids += _message_ids(s, now_ms - dedup_window_ms if now_ms else 0)
        report.sessions += 1
        report.entries += len(s.lines) - 1
        report.messages += sum(
            1 for o in s.objs if isinstance(o, dict) and o.get("type") == "message"
        )
        progress(len(sids) + n * len(sids) // max(1, len(sessions)), 2 * len(sids))
    for agent_id in sorted({s.agent_id for s in sessions}):
        folder = state_dir / "agents" / agent_id / "sessions"
        ensure_dir(folder)
        arch = folder / archive.ARCHIVE_DIR
        if arch.is_dir():
            fsync_dir(arch)
        fsync_dir(folder)
        recs = sorted(records.get(agent_id, []), key=lambda r: r.archivedAt)
        if recs:
            archive.append_index(folder, recs)
        doc = registries.get(agent_id, {})
        atomic_write(folder / SESSIONS_JSON, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    for at, agent_id, dkey, answer in sorted(ids, key=lambda x: x[0]):  # oldest first
        dedup.remember(agent_id, dkey, at, answer)
    if now_ms:
        dedup.trim_all(now_ms)
    ensure_dir(dedup.folder)
    dedup.save(dedup.snapshots())
    report.agents = sorted({s.agent_id for s in sessions})
    return report


def _index_record(s: Rebuilt, path: Path) -> ArchiveRecord:
    stats = archive.transcript_stats(path)
    if s.state is not None:
        # The index line as it was (the file's own figures are taken from the file).
        recorded = ArchiveRecord.from_json({**s.state, "sessionId": s.session_id})
        if recorded is not None:
            return replace(
                recorded,
                agentId=s.agent_id,
                startedAt=stats.started_at,
                endedAt=stats.ended_at,
                messages=stats.messages,
                bytes=stats.bytes,
                sha256=stats.sha256,
                file=path.name,
            )
    closed = s.closed
    header = s.header or {}
    pred = header.get("predecessor")
    succ = closed.get("successor") if closed else None
    return ArchiveRecord(
        sessionId=s.session_id,
        sessionKey=s.session_key,
        agentId=s.agent_id,
        reason=str(closed.get("reason") or "reset") if closed is not None else UNKNOWN_REASON,
        startedAt=stats.started_at,
        endedAt=stats.ended_at,
        archivedAt=s.last,
        messages=stats.messages,
        bytes=stats.bytes,
        sha256=stats.sha256,
        predecessor=pred if isinstance(pred, str) else None,
        successor=succ if isinstance(succ, str) else None,
        file=path.name,
    )


def _message_ids(s: Rebuilt, since: int) -> list[tuple[int, str, DedupKey, dict[str, Any]]]:
    """The adapter message ids of a session newer than `since`, with the answer each got."""
    out: list[tuple[int, str, DedupKey, dict[str, Any]]] = []
    created = True
    for o in s.objs:
        if not isinstance(o, dict) or o.get("type") != "message":
            continue
        origin = o.get("origin")
        at = parse_iso_ms(o.get("timestamp"))
        if isinstance(origin, dict) and isinstance(origin.get("messageId"), str) and at >= since:
            key = (str(origin.get("channel")), str(origin.get("accountId")), origin["messageId"])
            answer = ingest_answer(s.session_key, s.session_id, str(o.get("id")), created)
            out.append((at, s.agent_id, key, answer))
        created = False
    return out

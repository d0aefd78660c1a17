"""The read side of the protocol: sessions.list, sessions.get, sessions.history and status.

Each method takes validated params and returns a JSON-ready result or raises a RequestError. The
write methods (message.ingest, message.append) live in the pipeline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from daemon import __version__
from daemon.clients import Clients
from daemon.core.ids import now_ms
from daemon.core.keys import agent_of_key
from daemon.core.lineage import Ended, walk_back
from daemon.core.protocol import (
    ArchivedParams,
    HistoryParams,
    ListParams,
    ResetParams,
    SessionRef,
)
from daemon.core.roles import ReadCaps, cap_entry
from daemon.errors import NotFound
from daemon.pipeline import Pipeline
from daemon.store.archive import locate_transcript
from daemon.store.registry import SessionState
from daemon.store.store import Archived, Store
from daemon.store.transcript import read_entries_backwards

if TYPE_CHECKING:
    from daemon.backup import Mirror
    from daemon.broker import RedisIngest
    from daemon.search import SearchService

SUMMARY_FIELDS = (
    "sessionId",
    "updatedAt",
    "sessionStartedAt",
    "lastInteractionAt",
    "chatType",
    "channel",
    "lastChannel",
    "totalTokens",
    "compactionCount",
)


class Api:
    """Read methods over the store; `status` also reports the pipeline's counters."""

    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        socket_path: Path,
        *,
        mirror: Mirror | None = None,
        search: SearchService | None = None,
        broker: RedisIngest | None = None,
    ) -> None:
        self.store = store
        self.mirror = mirror
        self.pipeline = pipeline
        self.socket_path = socket_path
        self.started_ms = now_ms()
        self.started_mono = time.monotonic()
        self.clients = Clients()  # the server fills it in
        self.search = search  # `status` reports the index worker
        self.broker = broker  # `status` reports the consumer

    def find(self, ref: SessionRef) -> SessionState:
        """An active session by id or key; raises NotFound."""
        if ref.session_id is not None:
            st = self.store.by_id.get(ref.session_id)
            if st is None or (ref.session_key is not None and st.session_key != ref.session_key):
                raise NotFound(f"no active session with id {ref.session_id!r}")
            return st
        assert ref.session_key is not None
        agent = agent_of_key(ref.session_key)
        reg = self.store.agents.get(agent) if agent is not None else None
        st = None if reg is None else reg.sessions.get(ref.session_key)
        if st is None:
            raise NotFound(f"no session with key {ref.session_key!r}")
        return st

    def find_transcript(self, ref: SessionRef, previous: int | None) -> tuple[str | None, str, str]:
        """(sessionKey, sessionId, transcript path relative to the state folder) of an active or
        archived session: by id, by key, or the `previous`-th session before a key's current."""
        store = self.store
        if previous is not None:
            key = ref.session_key
            if key is None:
                a = store.archived_by_id.get(ref.session_id or "")
                st = store.by_id.get(ref.session_id or "")
                key = a.session_key if a is not None else (st.session_key if st else None)
            if key is None:
                raise NotFound(f"no session with id {ref.session_id!r}")
            agent = agent_of_key(key)
            older = earlier_sessions(store, agent or "", key)
            if previous > len(older):
                raise NotFound(
                    f"{key!r} has {len(older)} earlier session(s); previous={previous} is too far"
                )
            a = older[previous - 1]
            return a.session_key, a.session_id, a.rel_path
        if ref.session_id is not None and ref.session_id not in store.by_id:
            a = store.archived_by_id.get(ref.session_id)
            if a is None:
                raise NotFound(f"no session with id {ref.session_id!r}")
            return a.session_key, a.session_id, a.rel_path
        st = self.find(ref)
        return st.session_key, st.session_id, st.rel_path

    def sessions_list(self, p: ListParams) -> dict[str, Any]:
        now = now_ms()
        cutoff = now - p.active_minutes * 60_000 if p.active_minutes else None
        out = []
        for agent_id, reg in self.store.agents.items():
            if p.agent_id is not None and agent_id != p.agent_id:
                continue
            for st in list(reg.sessions.values()):
                updated = int(st.entry.get("updatedAt") or 0)
                if cutoff is not None and updated < cutoff:
                    continue
                out.append(summary(st, now))
        out.sort(key=lambda s: (-int(s.get("updatedAt") or 0), s["sessionKey"]))
        return {"sessions": out[: p.limit]}

    def sessions_get(self, ref: SessionRef) -> dict[str, Any]:
        st = self.find(ref)
        return {"sessionKey": st.session_key, "agentId": st.agent_id, **st.entry}

    async def sessions_history(
        self, p: HistoryParams, caps: ReadCaps | None = None
    ) -> dict[str, Any]:
        """`caps` (agents' reads, daemon/auth.py) bound the answer's size; `truncated: true`
        then says that something was cut or left for the next page."""
        key, sid, rel = self.find_transcript(p.ref, p.previous)
        entries, before, truncated = await anyio.to_thread.run_sync(
            read_history, self.store.state_dir, rel, sid, p.before, p.limit, p.include_tools, caps
        )
        out = {"sessionKey": key, "sessionId": sid, "entries": entries, "before": before}
        if truncated:
            out["truncated"] = True
        return out

    async def sessions_archived(
        self, p: ArchivedParams, caps: ReadCaps | None = None
    ) -> dict[str, Any]:
        # Archiving follows a reset by milliseconds; answer with complete index records.
        await self.pipeline.archives_settled()
        out = []
        for agent_id, items in self.store.archives.items():
            if p.agent_id is not None and agent_id != p.agent_id:
                continue
            for a in items:
                if p.session_key is not None and a.session_key != p.session_key:
                    continue
                if p.after is not None and a.archived_at < p.after:
                    continue
                if p.before is not None and a.archived_at >= p.before:
                    continue
                out.append(archived_summary(a))
        out.sort(key=lambda r: (-int(r["archivedAt"]), r["sessionId"]))
        out = out[: p.limit]
        if caps is not None:
            used = 0
            for n, rec in enumerate(out):
                used += len(orjson.dumps(rec)) + 1
                if used > caps.max_bytes and n:
                    return {"sessions": out[:n], "truncated": True}
        return {"sessions": out}

    async def sessions_reset(self, p: ResetParams) -> dict[str, Any]:
        agent = agent_of_key(p.session_key)
        reg = self.store.agents.get(agent) if agent is not None else None
        if agent is None or reg is None or p.session_key not in reg.sessions:
            raise NotFound(f"no session with key {p.session_key!r}")
        return await self.pipeline.reset_and_wait(agent, p.session_key, p.reason, start_new=True)

    def status(self, _params: object = None) -> dict[str, Any]:
        c = self.pipeline.counters
        store = self.store
        return {
            "version": __version__,
            "pid": os.getpid(),
            "startedAt": self.started_ms,
            "uptimeSeconds": round(time.monotonic() - self.started_mono, 3),
            "stateDir": str(store.state_dir),
            "socket": str(self.socket_path),
            "storage": storage_state(store),
            "agents": {a: len(r.sessions) for a, r in sorted(store.agents.items())},
            "sessions": len(store.by_id),
            "connections": len(self.clients.open),
            "clients": self.clients.stats(),
            "ingested": c.ingested,
            "appended": c.appended,
            "duplicates": c.duplicates,
            "resets": c.resets,
            "resetsByReason": dict(sorted(c.resets_by_reason.items())),
            "rejected": c.rejected,
            "batches": c.batches,
            "checkpoints": c.checkpoints,
            "lastCheckpointAt": c.last_checkpoint_ms or None,
            "journalBytes": store.journal.size,
            "backup": m.status() if (m := self.mirror) else {"state": "disabled"},
            "search": s.status() if (s := self.search) else {"state": "disabled"},
            "broker": b.status() if (b := self.broker) else {"state": "disabled"},
        }


def earlier_sessions(store: Store, agent_id: str, key: str) -> list[Archived]:
    """The ended sessions of a key, newest first, walking the lineage chain back from the key's
    active session (daemon/core/lineage.py), as `sessions.archived` records it."""
    mine = {a.session_id: a for a in store.archives.get(agent_id, []) if a.session_key == key}
    reg = store.agents.get(agent_id)
    st = reg.sessions.get(key) if reg is not None else None
    ended = [
        Ended(
            a.session_id,
            a.record.startedAt if a.record is not None else None,
            a.archived_at,
            a.record.predecessor if a.record is not None else None,
            a.successor,
        )
        for a in mine.values()
    ]
    return [mine[e.session_id] for e in walk_back(st.session_id if st else None, ended)]


def archived_summary(a: Archived) -> dict[str, Any]:
    if a.record is not None:
        # A successor named after the archiving is in memory before its index line lands.
        return {**a.record.to_json(), "successor": a.successor or a.record.successor}
    return {
        "sessionId": a.session_id,
        "sessionKey": a.session_key,
        "agentId": a.agent_id,
        "reason": a.reason,
        "archivedAt": a.archived_at,
        "successor": a.successor,
        "pending": True,
    }


def summary(st: SessionState, now: int) -> dict[str, Any]:
    """A sessions.list row: ours, plus OpenClaw's `key`, `kind`, `ageMs` and `model` (as its
    gateway and `openclaw sessions --json` spell them)."""
    e = st.entry
    out: dict[str, Any] = {"sessionKey": st.session_key, "agentId": st.agent_id}
    for k in SUMMARY_FIELDS:
        if k in e:
            out[k] = e[k]
    updated = e.get("updatedAt")
    out["key"] = st.session_key
    out["kind"] = session_kind(st.session_key, e)
    out["ageMs"] = max(0, now - updated) if isinstance(updated, int) and updated else None
    model = e.get("modelOverride") or e.get("model")
    out["model"] = model if isinstance(model, str) else None
    return out


def session_kind(key: str, entry: Mapping[str, Any]) -> str:
    """OpenClaw's display kind of a session (src/sessions/classify-session-kind.ts): global,
    unknown, cron, spawn-child, group (groups and channels) or direct."""
    if key in ("global", "unknown"):
        return key
    parts = key.split(":", 2)
    if len(parts) == 3 and parts[0] == "agent" and parts[2].startswith("cron:"):
        return "cron"
    if entry.get("spawnedBy"):
        return "spawn-child"
    if entry.get("chatType") in ("group", "channel") or ":group:" in key or ":channel:" in key:
        return "group"
    return "direct"


def read_history(
    state_dir: Path,
    rel: str,
    session_id: str,
    before: int | None,
    limit: int,
    include_tools: bool,
    caps: ReadCaps | None = None,
) -> tuple[list[dict[str, Any]], int | None, bool]:
    """Newest-first entries ending before `before`; the cursor is the oldest one's offset.

    A session being archived may move while it is read: then it is read from archive/.
    With `caps`, long texts are cut and the page ends early once the byte budget is spent (at
    least one entry is always returned, so paging makes progress); the flag says so.
    """
    # Moved into archive/ by a reset, or compressed to .gz by the retention sweep meanwhile.
    path = locate_transcript(state_dir / rel)
    out: list[dict[str, Any]] = []
    cursor = before
    used = 0
    truncated = False
    while len(out) < limit:
        try:
            page, at_start = read_entries_backwards(path, cursor, limit - len(out))
        except FileNotFoundError:
            if locate_transcript(path) == path:
                return out, None, truncated
            path = locate_transcript(path)  # compressed while it was read: same offsets
            continue
        for off, entry in page:
            kept = entry if include_tools else without_tools(entry)
            if kept is not None and caps is not None:
                kept, cut = cap_entry(kept, caps)
                used += len(orjson.dumps(kept)) + 1
                if used > caps.max_bytes and out:
                    return out, cursor, True
                truncated = truncated or cut
            cursor = off
            if kept is not None:
                out.append(kept)
        if at_start:
            return out, None, truncated
    return out, cursor, truncated


def without_tools(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The entry without tool calls and results (None when nothing else is left)."""
    msg = entry.get("message")
    if not isinstance(msg, dict):
        return entry
    if msg.get("role") == "toolResult":
        return None
    content = msg.get("content")
    if isinstance(content, list):
        kept = [b for b in content if not (isinstance(b, dict) and b.get("type") == "toolCall")]
        if not kept:
            return None
        if len(kept) != len(content):
            return {**entry, "message": {**msg, "content": kept}}
    return entry


def storage_state(store: Store) -> str:
    """`status`'s storage field: unavailable whenever writes fail (a failed sync, a disk that was
    full at start-up, or the last write failing, e.g. ENOSPC), else ok."""
    problem = store.broken or store.write_error
    return "ok" if problem is None else f"unavailable: {problem}"


def openclaw_list(
    rows: list[dict[str, Any]], state_dir: Path, agent: str | None, active_minutes: int | None
) -> dict[str, Any]:
    """`sessiond sessions list --json` in the shape of `openclaw sessions --json`: {path, count,
    activeMinutes, sessions}; over several agents `path` is null and `stores` lists each one's."""
    agents = [agent] if agent else sorted({str(r["agentId"]) for r in rows})

    def store(a: str) -> str:
        return str(state_dir / "agents" / a / "sessions" / "sessions.json")

    out: dict[str, Any] = {"path": store(agents[0]) if len(agents) == 1 else None}
    if len(agents) > 1:
        out["stores"] = [{"agentId": a, "path": store(a)} for a in agents]
        out["allAgents"] = True
    out.update(count=len(rows), activeMinutes=active_minutes, sessions=rows)
    return out

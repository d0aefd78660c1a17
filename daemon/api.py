"""The read side of the protocol: sessions.list, sessions.get, sessions.history and status.

Each method takes validated params and returns a JSON-ready result or raises a RequestError. The
write methods (message.ingest, message.append) live in the pipeline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio

from daemon import __version__
from daemon.core.keys import agent_of_key
from daemon.core.protocol import HistoryParams, ListParams, SessionRef
from daemon.errors import NotFound
from daemon.pipeline import Pipeline
from daemon.store.registry import SessionState
from daemon.store.store import Store, now_ms
from daemon.store.transcript import read_entries_backwards

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

    def __init__(self, store: Store, pipeline: Pipeline, socket_path: Path) -> None:
        self.store = store
        self.pipeline = pipeline
        self.socket_path = socket_path
        self.started_ms = now_ms()
        self.started_mono = time.monotonic()
        self.connections = 0

    def find(self, ref: SessionRef) -> SessionState:
        if ref.session_id is not None:
            st = self.store.by_id.get(ref.session_id)
            if st is None or (ref.session_key is not None and st.session_key != ref.session_key):
                raise NotFound(f"no session with id {ref.session_id!r}")
            return st
        assert ref.session_key is not None
        agent = agent_of_key(ref.session_key)
        reg = self.store.agents.get(agent) if agent is not None else None
        st = None if reg is None else reg.sessions.get(ref.session_key)
        if st is None:
            raise NotFound(f"no session with key {ref.session_key!r}")
        return st

    def sessions_list(self, p: ListParams) -> dict[str, Any]:
        cutoff = now_ms() - p.active_minutes * 60_000 if p.active_minutes else None
        out = []
        for agent_id, reg in self.store.agents.items():
            if p.agent_id is not None and agent_id != p.agent_id:
                continue
            for st in list(reg.sessions.values()):
                updated = int(st.entry.get("updatedAt") or 0)
                if cutoff is not None and updated < cutoff:
                    continue
                out.append(summary(st))
        out.sort(key=lambda s: (-int(s.get("updatedAt") or 0), s["sessionKey"]))
        return {"sessions": out[: p.limit]}

    def sessions_get(self, ref: SessionRef) -> dict[str, Any]:
        st = self.find(ref)
        return {"sessionKey": st.session_key, "agentId": st.agent_id, **st.entry}

    async def sessions_history(self, p: HistoryParams) -> dict[str, Any]:
        st = self.find(p.ref)
        if p.previous is not None:
            raise NotFound(
                f"no session before the current one of {st.session_key!r} "
                "(archived sessions are not kept by this version)"
            )
        path = self.store.state_dir / st.rel_path
        entries, before = await anyio.to_thread.run_sync(
            read_history, path, p.before, p.limit, p.include_tools
        )
        return {
            "sessionKey": st.session_key,
            "sessionId": st.session_id,
            "entries": entries,
            "before": before,
        }

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
            "storage": "ok" if store.broken is None else f"unavailable: {store.broken}",
            "agents": {a: len(r.sessions) for a, r in sorted(store.agents.items())},
            "sessions": len(store.by_id),
            "connections": self.connections,
            "ingested": c.ingested,
            "appended": c.appended,
            "duplicates": c.duplicates,
            "rejected": c.rejected,
            "batches": c.batches,
            "checkpoints": c.checkpoints,
            "lastCheckpointAt": c.last_checkpoint_ms or None,
            "journalBytes": store.journal.size,
        }


def summary(st: SessionState) -> dict[str, Any]:
    out: dict[str, Any] = {"sessionKey": st.session_key, "agentId": st.agent_id}
    for k in SUMMARY_FIELDS:
        if k in st.entry:
            out[k] = st.entry[k]
    return out


def read_history(
    path: Path, before: int | None, limit: int, include_tools: bool
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest-first entries ending before `before`; the cursor is the oldest one's offset."""
    out: list[dict[str, Any]] = []
    cursor = before
    while len(out) < limit:
        try:
            page, at_start = read_entries_backwards(path, cursor, limit - len(out))
        except FileNotFoundError:
            return out, None
        for off, entry in page:
            cursor = off
            kept = entry if include_tools else without_tools(entry)
            if kept is not None:
                out.append(kept)
        if at_start:
            return out, None
    return out, cursor


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

"""The memory flush (SPEC 4.7): lasting notes saved before history is summarised away.

Once per compaction cycle (`memoryFlushCompactionCount`), before that cycle's compaction, the
summarizer gets the flush prompt and the messages since the last compaction. Its notes are
appended to `<workspace>/memory/YYYY-MM-DD.md` (store/memoryfile.py), unless it answers NO_REPLY,
and a `sessiond.memoryFlush` custom entry then records the cycle in the transcript through the
committer, so that the fact is as durable as a message and survives a crash with the journal.

A session a reset closed is flushed from its archived transcript (`flush_closed`): only what no
flush of its last cycle covered. The scheduling (when, how often, retries) is the compaction
worker's (daemon/compaction.py); this module only does one flush when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from daemon.config import CompactionConfig
from daemon.core import tokens
from daemon.core.ids import next_entry_id, now_ms
from daemon.store.context import FLUSH_ENTRY, find_transcript, read_context
from daemon.store.memoryfile import write_memory
from daemon.store.registry import SessionState
from daemon.store.store import Batch
from daemon.store.transcript import custom_line
from daemon.summarizers import DEFAULT_FLUSH_PROMPT, SummaryRequest, check_notes, make_summarizer
from daemon.work import Entrance

log = structlog.get_logger("daemon.memoryflush")


class MemoryFlusher:
    """Runs single flushes for the compaction worker."""

    def __init__(self, entrance: Entrance, workspace_of: Callable[[str], str]) -> None:
        self.entrance = entrance
        self.store = entrance.store
        self.workspace_of = workspace_of
        # The last entry id a flush of a session covered: a reset right after a flush whose
        # marker could no longer be appended must not write the same notes twice.
        self._covered: dict[str, str] = {}

    async def flush_cycle(self, st: SessionState, cc: CompactionConfig, reason: str) -> None:
        """Flush the cycle's lasting notes, then record the cycle in the transcript. With no
        message since the last compaction there is nothing to flush and nothing is recorded.

        Raises SummarizerFailed or OSError (nothing written, nothing recorded: the caller
        retries), NotFound (the session was reset meanwhile), StorageUnavailable.
        """
        path = self.store.state_dir / st.rel_path
        view = await anyio.to_thread.run_sync(read_context, path)
        entries = tuple(e for e in view.after if tokens.is_message(e))
        if not entries:
            # Nothing since the last compaction: the cycle's flush is still to come.
            return
        cycle = _int(st.entry.get("compactionCount"))
        notes = await self._notes(cc, entries, st.session_key, st.agent_id)
        with anyio.CancelScope(shield=True):
            # Short and must not be cut in half: one write + fsync, then the marker's append.
            written = await self._write(st.agent_id, st.session_key, notes)
            if view.last_entry_id is not None:
                self._covered[st.session_id] = view.last_entry_id
            data = {
                "compactionCount": cycle,
                "reason": reason,
                "entries": len(entries),
                "file": written[0] if written else None,
                "bytes": written[1] if written else 0,
                "noReply": notes is None,
            }

            def prepare(batch: Batch, s: SessionState, now: int, ts: str) -> dict[str, Any]:
                eid = next_entry_id(s.last_entry_id)
                cycle = data["compactionCount"] = _int(s.entry.get("compactionCount"))
                line = custom_line(eid, s.last_entry_id, ts, FLUSH_ENTRY, data)
                self.store.add_line(batch, s, line, eid)
                s.entry.memory_flush_compaction_count = cycle
                return {"entryId": eid}

            await self.entrance.append_prepared(st.session_id, prepare)
        self._publish(st.agent_id, st.session_key, st.session_id, reason, data)

    async def _notes(
        self,
        cc: CompactionConfig,
        entries: tuple[dict[str, Any], ...],
        session_key: str,
        agent_id: str,
    ) -> str | None:
        if not entries:
            return None
        prompt = cc.memoryFlush.prompt or DEFAULT_FLUSH_PROMPT
        req = SummaryRequest(
            "memoryFlush", prompt, entries, session_key=session_key, agent_id=agent_id
        )
        return check_notes(await make_summarizer(cc.summarizer).summarize(req))

    async def _write(
        self, agent_id: str, session_key: str, notes: str | None
    ) -> tuple[str, int] | None:
        if notes is None:
            return None
        now = now_ms()
        local = datetime.fromtimestamp(now / 1000, tz=self.entrance.policies.tz)
        folder = Path(self.workspace_of(agent_id)) / "memory"
        path, n = await anyio.to_thread.run_sync(write_memory, folder, local, session_key, notes)
        return str(path), n

    def _publish(
        self, agent_id: str, session_key: str, session_id: str, reason: str, data: dict[str, Any]
    ) -> None:
        info = {
            "agentId": agent_id,
            "sessionKey": session_key,
            "sessionId": session_id,
            "reason": reason,
            "file": data.get("file"),
            "bytes": data.get("bytes", 0),
            "noReply": data.get("noReply", False),
            "entries": data.get("entries", 0),
        }
        log.info("memory.flushed", **info)
        self.entrance.events.publish("memory.flushed", info)

    async def flush_closed(
        self, agent_id: str, session_key: str, session_id: str, rel_path: str, cc: CompactionConfig
    ) -> None:
        """Flush a session a reset closed, from its transcript wherever archiving put it: the
        messages no flush has covered yet. Raises SummarizerFailed or OSError (nothing written).
        """
        path = self.store.state_dir / rel_path
        # What a model can read at most: the newest context window's worth. A session that was
        # never flushed (imported, or hundreds of MB long) is not read into memory whole.
        budget = cc.contextWindow * tokens.CHARS_PER_TOKEN
        view = await anyio.to_thread.run_sync(
            lambda: read_context(find_transcript(path), max_bytes=budget)
        )
        after = view.after
        # Only what no flush has covered yet: after the cycle's marker, or after what a flush
        # of this process covered when its marker could not be appended any more.
        start = 0
        covered = self._covered.pop(session_id, None)
        for i, e in enumerate(after):
            is_marker = e.get("type") == "custom" and e.get("customType") == FLUSH_ENTRY
            if is_marker or (covered is not None and e.get("id") == covered):
                start = i + 1
        entries = tuple(e for e in after[start:] if tokens.is_message(e))
        if not entries:
            log.debug("memory.flush_skipped", sessionId=session_id, reason="nothing new")
            return
        notes = await self._notes(cc, entries, session_key, agent_id)
        with anyio.CancelScope(shield=True):
            written = await self._write(agent_id, session_key, notes)
        data = {
            "file": written[0] if written else None,
            "bytes": written[1] if written else 0,
            "noReply": notes is None,
            "entries": len(entries),
        }
        self._publish(agent_id, session_key, session_id, "reset", data)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0

"""The memory flush (SPEC 4.7): lasting notes saved before history is summarised away.

Once per compaction cycle (`memoryFlushCompactionCount`), before that cycle's compaction, the
summarizer gets the flush prompt and the messages since the last compaction. Its notes are
appended to `<workspace>/memory/YYYY-MM-DD.md` (store/memoryfile.py), unless it answers NO_REPLY,
and a `sessiond.memoryFlush` custom entry then records the cycle in the transcript through the
committer, so that the fact is as durable as a message and survives a crash with the journal.

The notes are written by the summarizer in a worker process (daemon/compaction_job.py); this
module writes them and records the cycle. A session a reset closed is flushed from its archived
transcript, in groups, entirely in a worker (compaction_job.flush_closed). The scheduling (when,
how often, retries) is the compaction worker's (daemon/compaction.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from daemon.core.ids import next_entry_id, now_ms
from daemon.store.context import FLUSH_ENTRY
from daemon.store.memoryfile import write_memory
from daemon.store.registry import SessionState
from daemon.store.store import Batch
from daemon.store.transcript import custom_line
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
        self.covered: dict[str, str] = {}

    async def record_cycle(
        self,
        st: SessionState,
        entries: int,
        notes: str | None,
        last_entry_id: str | None,
        reason: str,
    ) -> None:
        """Write the cycle's notes (computed in a worker: daemon/compaction_job.py), then record
        the cycle in the transcript.

        Raises OSError (nothing recorded: the caller retries), NotFound (the session was reset
        meanwhile), StorageUnavailable.
        """
        cycle = _int(st.entry.get("compactionCount"))
        with anyio.CancelScope(shield=True):
            # Short and must not be cut in half: one write + fsync, then the marker's append.
            written = await self._write(st.agent_id, st.session_key, notes)
            if last_entry_id is not None:
                self.covered[st.session_id] = last_entry_id
            data = {
                "compactionCount": cycle,
                "reason": reason,
                "entries": entries,
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
        self.publish(st.agent_id, st.session_key, st.session_id, reason, data)

    async def _write(
        self, agent_id: str, session_key: str, notes: str | None
    ) -> tuple[str, int] | None:
        if notes is None:
            return None
        folder = self.memory_folder(agent_id)
        path, n = await anyio.to_thread.run_sync(
            write_memory, folder, self.local_now(), session_key, notes
        )
        return str(path), n

    def publish(
        self,
        agent_id: str,
        session_key: str,
        session_id: str,
        reason: str,
        data: dict[str, Any],
        *,
        grouped: bool = False,
    ) -> None:
        """Log and send `memory.flushed`. `grouped`: a flush of the reset job's groups, logged
        at debug level (the group's `memory.group_flushed` line sums them up); subscribers get
        every one."""
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
        if grouped:
            log.debug("memory.flushed", **info)
        else:
            log.info("memory.flushed", **info)
        self.entrance.events.publish("memory.flushed", info)

    def memory_folder(self, agent_id: str) -> Path:
        return Path(self.workspace_of(agent_id)) / "memory"

    def local_now(self) -> datetime:
        """Now in the daemon's time zone: the memory file's day and the section's time."""
        return datetime.fromtimestamp(now_ms() / 1000, tz=self.entrance.policies.tz)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0

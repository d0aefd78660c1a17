"""The requests the committer takes (daemon/pipeline.py): each is answered once through `reply`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.core.commands import Command
from daemon.core.keys import Route
from daemon.core.protocol import AppendParams, IngestParams
from daemon.errors import RequestError
from daemon.store.dedup import DedupKey
from daemon.store.registry import SessionState
from daemon.store.store import Batch

Reply = Callable[[dict[str, Any] | RequestError], None]


@dataclass(slots=True)
class IngestWork:
    route: Route
    params: IngestParams
    reply: Reply
    dedup_key: DedupKey | None
    received: float  # time.monotonic() when it arrived: its ack latency is measured from here


@dataclass(slots=True)
class AppendWork:
    params: AppendParams
    reply: Reply


@dataclass(slots=True)
class ResetWork:
    """A reset without a message: `sessions.reset` (starts a new session at once) or the
    scheduler (archives a stale session; the next message begins a new one)."""

    agent_id: str
    session_key: str
    reason: str
    reply: Reply
    only_if_stale: bool = False
    start_new: bool = True
    at: int | None = None  # the time staleness is judged at (the scheduler's run time)


@dataclass(slots=True)
class EntryWork:
    """Entries built outside the committer (compaction summaries, memory-flush markers): the
    committer calls `prepare(batch, state, now, ts)` at the session's current end, where it adds
    its lines with `Store.add_line` and returns the answer."""

    session_id: str
    prepare: Callable[[Batch, SessionState, int, str], dict[str, Any]]
    reply: Reply


Work = IngestWork | AppendWork | ResetWork | EntryWork


class CompactionHooks(Protocol):
    """What the background compaction (daemon/compaction.py) needs from the committer."""

    def after_write(self, batch: Batch) -> None:
        """A batch is durable (before its answers go out)."""

    def command_reply(self, cmd: Command, st: SessionState) -> str:
        """The reply to /compact or /context."""

    async def context_detail(self, st: SessionState) -> str:
        """The reply to /context detail: each entry's share of the tokens. Never raises."""

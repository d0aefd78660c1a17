"""What the compaction worker (daemon/compaction.py) keeps per session: requests, pending work
and its backoff, the memory flushes of closed sessions, the latest summaries for /context, and
the small helpers its answers are made with. Plain data; no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.config import CompactionConfig
from daemon.errors import RequestError, os_reason
from daemon.store.registry import SessionState

MAX_BACKOFF_SECONDS = 3600.0
RESET_FLUSH_ATTEMPTS = 6

Outcome = dict[str, Any]
Waiter = Callable[[Outcome], None]


@dataclass(slots=True)
class Request:
    """A compaction asked for by /compact or sessions.compact."""

    instructions: str | None
    reason: str  # "command" | "api"
    waiters: list[Waiter] = field(default_factory=list)


@dataclass(slots=True)
class Pending:
    """A session's outstanding work; its jobs run one at a time."""

    agent_id: str
    session_key: str
    session_id: str
    flush: bool = False  # the flush threshold was crossed
    compact: bool = False  # the compaction threshold was crossed
    requested: Request | None = None
    running: bool = False
    compacting: bool = False  # the running job includes a compaction
    taken: Request | None = None  # the request the running job took on
    failures: int = 0
    retry_at: float = 0.0  # anyio.current_time() before which no retry starts
    last_error: str | None = None

    @property
    def has_work(self) -> bool:
        return self.flush or self.compact or self.requested is not None


@dataclass(slots=True)
class ResetFlush:
    """The memory flush of a session closed by a reset; reads its archived transcript."""

    agent_id: str
    session_key: str
    session_id: str
    rel_path: str
    settings: CompactionConfig
    size: int = 0  # the transcript's bytes when it was closed
    attempts: int = 0
    retry_at: float = 0.0
    running: bool = False


def int_of(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def flushed(st: SessionState) -> bool:
    """Has the memory flush of the session's current cycle run?"""
    fc = st.entry.get("memoryFlushCompactionCount")
    return isinstance(fc, int) and fc == int_of(st.entry.get("compactionCount"))


def not_done(st: SessionState, reason: str) -> Outcome:
    return {
        "compacted": False,
        "sessionKey": st.session_key,
        "sessionId": st.session_id,
        "reason": reason,
    }


def answer(waiters: list[Waiter], outcome: Outcome) -> None:
    for w in waiters:
        w(outcome)
    waiters.clear()


def why(e: Exception) -> str:
    if isinstance(e, OSError):
        return f"{os_reason(e)} ({getattr(e, 'filename', None) or 'file'})"
    if isinstance(e, RequestError):
        return e.message
    return str(e) or type(e).__name__

"""The requests the committer takes, the door they come in by, and what a durable batch did.

Made first, before the pipeline and everything that writes through it (compaction, memory
flush), so that none of them needs another assigned after construction:

    Entrance   the door: a bounded queue of requests, the current config and reset policies,
               the counters and the event bus; each request is answered once through `reply`
    Work       one request (an inbound message, an agent's message, a reset, prepared entries)
    Commit     one durable batch as the pipeline sees it: the store's `Batch` (lines and
               positions) plus what the requests did (answers, resets, stops, sessions that
               received a message), handed to every after-commit `Stage` in order
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from daemon.committer import Counters, WorkQueue
from daemon.config import Config
from daemon.config_load import resolve_timezone
from daemon.core.ingest import CommandPlan
from daemon.core.keys import Route, agent_of_key
from daemon.core.protocol import AppendParams, IngestParams
from daemon.errors import RequestError, StorageUnavailable
from daemon.events import EventBus
from daemon.lifecycle import Policies
from daemon.store.dedup import DedupKey
from daemon.store.registry import SessionState
from daemon.store.store import Archived, Batch, Store

Answer = dict[str, Any]
Reply = Callable[[Answer | RequestError], None]


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
    prepare: Callable[[Batch, SessionState, int, str], Answer]
    reply: Reply


Work = IngestWork | AppendWork | ResetWork | EntryWork


@dataclass(slots=True)
class IngestOutcome:
    """What a stored inbound message's answer is made of; the pipeline turns it into the answer
    (`core.ingest.ingest_answer`) once the after-commit stages have run."""

    session: SessionState
    entry_id: str
    created: bool
    reset: dict[str, Any] | None
    command: CommandPlan | None  # with its reply rendered, except /context detail's
    compaction: dict[str, Any] | None  # known when prepared (/compact)


@dataclass(slots=True)
class Commit:
    """One batch and what its requests did, from preparation to the last answer."""

    batch: Batch
    now: int  # the batch's clock: every entry and registry change in it carries this time
    ts: str  # `now` as the transcripts write it
    answers: list[tuple[Work, Answer | IngestOutcome]] = field(default_factory=list)
    # (old session, new session or None, reason) for every reset in the batch
    resets: list[tuple[SessionState, SessionState | None, str]] = field(default_factory=list)
    stops: list[dict[str, Any]] = field(default_factory=list)  # session.stop events to publish
    # Sessions that received a message (inbound or an agent's), by session id, in order.
    messaged: dict[str, SessionState] = field(default_factory=dict)
    # (ended session, the session of its key that begins in this batch) for sessions ended
    # without a successor (scheduler, deleted): their index gets one more line once durable
    linked: list[tuple[Archived, str]] = field(default_factory=list)
    # Set by the compaction check (stage 6): session id -> the `compaction` field of the last
    # inbound message's answer in that session (a compaction it newly scheduled).
    compaction: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def requests(self) -> list[Work]:
        return [w for w, _ in self.answers]


class Stage(Protocol):
    """One after-commit stage (SPEC 4.5-7): runs in order once a batch is durable, before its
    answers go out. `background` is the committer's task group, for work that may outlast the
    batch; it is waited for before the committer's final checkpoint. Never raises."""

    async def after_commit(self, commit: Commit, background: TaskGroup) -> None: ...


class Entrance:
    """The door every write comes in by (the pipeline's entrances, compaction, memory flush).

    Holds the committer's bounded queue and what a reload changes (config, reset policies).
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.events = events if events is not None else EventBus()
        self.counters = Counters()
        self.queue: WorkQueue[Work] = WorkQueue()
        self.config = config
        self.policies = Policies(config.session, resolve_timezone(config))

    def set_config(self, config: Config) -> None:
        """A reloaded config: the next request is judged by it."""
        self.config = config
        self.policies = Policies(config.session, resolve_timezone(config))

    def check_open(self) -> None:
        """Raises StorageUnavailable when nothing can be stored now."""
        if self.queue.closed:
            raise StorageUnavailable("the daemon is shutting down; nothing was stored, retry")
        self.store.check_writable()

    def put(
        self, work: Work, abandoned: Callable[[Work], None] | None = None
    ) -> Awaitable[None] | None:
        """Queue `work`: None when queued, or an awaitable to wait on while the queue is full
        (`abandoned(work)` runs if that wait is given up)."""
        return self.queue.put(work, self.check_open, abandoned)

    async def outcome(self, put: Callable[[Reply], Awaitable[None] | None]) -> Answer:
        """Queue a request with `put(reply)` and wait for its outcome; raises its RequestError."""
        done = anyio.Event()
        box: list[Answer | RequestError] = []

        def reply(outcome: Answer | RequestError) -> None:
            box.append(outcome)
            done.set()

        waiter = put(reply)
        if waiter is not None:
            await waiter
        await done.wait()
        if isinstance(box[0], RequestError):
            raise box[0]
        return box[0]

    async def append_prepared(
        self, session_id: str, prepare: Callable[[Batch, SessionState, int, str], Answer]
    ) -> Answer:
        """Append entries built by `prepare` to an active session and wait until they are
        durable. Raises NotFound (the session was reset or archived) or StorageUnavailable."""
        self.check_open()
        return await self.outcome(lambda reply: self.put(EntryWork(session_id, prepare, reply)))

    def find_by_key(self, session_key: str) -> SessionState | None:
        agent_id = agent_of_key(session_key)
        if agent_id is None:
            return None
        reg = self.store.agents.get(agent_id)
        return None if reg is None else reg.sessions.get(session_key)

    def close(self) -> None:
        """No more requests: the committer finishes what is queued, checkpoints and returns."""
        self.queue.close()

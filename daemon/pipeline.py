"""The stages every inbound message goes through, in the order SPEC section 4 lists them:

    1. resolve key (and shard)       daemon/routing.py             `Pipeline.ingest`
    2. access                        daemon/routing.py (core/access.py)
       idempotency: a message id seen before gets its first answer again (store/dedup.py)
    3. evaluate reset                daemon/core/ingest.py (pure)  `Pipeline.prepare`
    4. append (group commit)         daemon/applying.py, then daemon/committer.py writes the batch
    5. mirror to backup              \\
    6. compaction check               } the after-commit stages, in order  `Pipeline.committed`
    7. memory flush (scheduled by 6) /
       answer                        `core.ingest.ingest_answer`, once the stages have run

The after-commit stages are an ordered list given to the constructor (app.py builds it: the
backup mirror, the session events, the compaction service, then the search index keeping the
batch's lines for its next pass). The committer (queue, batches,
writer thread, journal sync, checkpoints) knows nothing of the SPEC: it calls this module's
`prepare` and `committed` (its `Handler`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon.applying import Applier, Commands
from daemon.archiving import Archiver
from daemon.committer import Committer, Counters
from daemon.config import Config
from daemon.core.ids import now_ms
from daemon.core.ingest import ROUTE_FIELD, as_duplicate, ingest_answer, spread_new_sessions
from daemon.core.protocol import AppendParams, IngestParams
from daemon.errors import NotFound, RequestError, SenderNotAllowed, WrongShard
from daemon.events import EventBus
from daemon.lifecycle import Policies
from daemon.routing import Router
from daemon.store.dedup import DedupKey
from daemon.store.registry import SessionState
from daemon.store.store import Batch, Store
from daemon.store.transcript import iso_ms
from daemon.work import (
    Answer,
    AppendWork,
    Commit,
    Entrance,
    EntryWork,
    IngestOutcome,
    IngestWork,
    Reply,
    ResetWork,
    Stage,
    Work,
)

log = structlog.get_logger("daemon.pipeline")

# Sessions one batch may begin. Each is a transcript created before the batch is acknowledged
# (about 0.7 ms on the development machine, more on a loaded disk): a cold start's first batch
# began 813 at once and held every acknowledgement for 542 ms. 32 keep a batch's share near
# 20 ms; the rest begin in the batches after it, while existing sessions' messages go on. A
# batch of new sessions alone begins at most MAX_NEW_ALONE (core.ingest.spread_new_sessions).
# Both grow with the new sessions waiting (a quarter of them, half when alone): where creating
# files is slow (a loaded disk, a busy loop holding the interpreter lock the writer needs),
# batches this small would begin fewer sessions a second than arrive, and the held requests'
# wait would grow without end. On a quiet machine few wait, and batches stay small.
MAX_NEW_SESSIONS = 32
MAX_NEW_ALONE = 64


class Pipeline:
    """The entrances (`ingest`, `append`, `reset`) and the stages; owns the committer."""

    def __init__(
        self,
        entrance: Entrance,
        *,
        stages: Sequence[Stage] = (),
        commands: Commands | None = None,
        archiver: Archiver | None = None,
    ) -> None:
        """`stages` run in order after each durable batch (SPEC 4.5-7); `commands` answers the
        chat commands that need the compaction service (None: it does not run); `archiver`
        moves the sessions a batch closed (None: into archive/ in worker processes)."""
        self.entrance = entrance
        self.store: Store = entrance.store
        self.events: EventBus = entrance.events
        self.counters: Counters = entrance.counters
        self.stages = tuple(stages)
        self.router = Router(entrance.config)  # stage 1: key resolution and access
        self.applier = Applier(entrance, commands)  # stages 3-4, applied to the batch
        self.commands = commands
        # Sessions closed by a durable batch.
        self.archiver = archiver if archiver is not None else Archiver(self.store)
        self._inflight: dict[tuple[str, DedupKey], list[Reply]] = {}
        interval = entrance.config.daemon.checkpointIntervalMs / 1000
        self.committer: Committer[Work, Commit] = Committer(
            self.store, entrance.queue, self, self.counters, checkpoint_interval=interval
        )

    @property
    def config(self) -> Config:
        return self.entrance.config

    @property
    def policies(self) -> Policies:
        return self.entrance.policies

    # ------------------------------------------------------------------------------------------
    # Entrances (event loop)

    def ingest(self, params: IngestParams, reply: Reply) -> Awaitable[None] | None:
        """Stage 1 and idempotency, then hand the message to the committer; `reply` is called
        once. Returns None when the message was queued (or answered), or an awaitable to wait
        on when the committer's queue is full. Raises RequestError for a message refused."""
        route, denied = self.router.route(params)
        if denied is not None:
            self.counters.rejected += 1
            log.warning(
                "request.rejected",
                reason="sender_not_allowed",
                detail=denied,
                channel=route.channel,
                agentId=route.agent_id,
            )
            raise SenderNotAllowed(denied, data={"channel": route.channel})
        self._check_shard(route.agent_id)
        self.entrance.check_open()
        dkey: DedupKey | None = None
        if params.message_id is not None:
            dkey = (route.channel, route.account_id, params.message_id)
            prior = self.store.dedup.lookup(route.agent_id, dkey)
            if prior is not None:
                self.counters.duplicates += 1
                reply(as_duplicate(prior))
                return None
            waiters = self._inflight.get((route.agent_id, dkey))
            if waiters is not None:
                self.counters.duplicates += 1
                waiters.append(reply)
                return None
            self._inflight[(route.agent_id, dkey)] = []
        work = IngestWork(route, params, reply, dkey, time.monotonic())
        return self.entrance.put(work, self._abandoned)

    def _abandoned(self, work: Work) -> None:
        """A request given up while it waited for room in the queue."""
        if isinstance(work, IngestWork) and work.dedup_key is not None:
            self._inflight.pop((work.route.agent_id, work.dedup_key), None)

    def append(self, params: AppendParams, reply: Reply) -> Awaitable[None] | None:
        """Queue an agent's message for a session; same contract as `ingest`."""
        agent_id = params.session_key.split(":", 2)[1] if params.session_key.count(":") >= 2 else ""
        self._check_shard(agent_id)
        if self.find_by_key(params.session_key) is None:
            raise NotFound(f"no session with key {params.session_key!r}")
        self.entrance.check_open()
        return self.entrance.put(AppendWork(params, reply))

    def reset(
        self,
        agent_id: str,
        session_key: str,
        reason: str,
        reply: Reply,
        *,
        only_if_stale: bool = False,
        start_new: bool = True,
        at: int | None = None,
    ) -> Awaitable[None] | None:
        """Queue a reset of one session; same contract as `ingest`."""
        self.entrance.check_open()
        work = ResetWork(agent_id, session_key, reason, reply, only_if_stale, start_new, at)
        return self.entrance.put(work)

    async def reset_and_wait(
        self, agent_id: str, session_key: str, reason: str, **kw: Any
    ) -> Answer:
        """`reset`, awaiting its outcome (for the API and the scheduler)."""
        return await self.entrance.outcome(
            lambda reply: self.reset(agent_id, session_key, reason, reply, **kw)
        )

    def find_by_key(self, session_key: str) -> SessionState | None:
        return self.entrance.find_by_key(session_key)

    def _check_shard(self, agent_id: str) -> None:
        try:
            self.router.check_shard(agent_id)
        except WrongShard:
            self.counters.rejected += 1
            raise

    def set_config(self, config: Config) -> None:
        """Swap in a reloaded config (daemon/reload.py): the next message is routed, checked and
        reset by it. Memoised routes and policies were derived from the old one, so they go."""
        self.entrance.set_config(config)
        self.router = Router(config)

    def close(self) -> None:
        """No more requests: the committer finishes what is queued, checkpoints and returns."""
        self.entrance.close()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The committer's lifetime (returns once `close` was called and all is answered)."""
        try:
            await self.committer.run(task_status=task_status)
        finally:
            await self.archiver.aclose()

    async def archives_settled(self) -> None:
        """Wait (a bounded while) until closed sessions are in archive/ with their index lines."""
        await self.archiver.settled()

    def counts(self) -> dict[str, int]:
        return self.counters.counts()

    # ------------------------------------------------------------------------------------------
    # The committer's handler: stages 3-4 while a batch is prepared, 5-7 once it is durable

    def sessions_of(self, item: Work) -> Iterable[SessionState]:
        """The existing sessions a request may write to (their tails must be read first)."""
        if isinstance(item, AppendWork):
            st = self.find_by_key(item.params.session_key)
            return () if st is None else (st,)
        if isinstance(item, EntryWork):
            st = self.store.by_id.get(item.session_id)
            return () if st is None else (st,)
        if isinstance(item, IngestWork):
            agent_id, key = item.route.agent_id, item.route.session_key
        else:
            agent_id, key = item.agent_id, item.session_key
        reg = self.store.agents.get(agent_id)
        st = None if reg is None else reg.sessions.get(key)
        if st is None or reg is None:
            return ()
        target = st.entry.get(ROUTE_FIELD)  # `route_to`, without a property call per request
        routed = reg.sessions.get(target) if isinstance(target, str) else None
        return (st,) if routed is None else (st, routed)

    def held_back(self, items: list[Work], begun: int = 0, others: bool = False) -> list[int]:
        """A batch that answers existing sessions begins at most MAX_NEW_SESSIONS sessions,
        one of new sessions alone MAX_NEW_ALONE, or more while many wait (stage 4): the
        requests of further new sessions wait for the next batch."""
        if len(items) + begun <= MAX_NEW_SESSIONS or self._begins_few(items, begun):
            return []
        # Each request's key once, None for one of a known session (to the rule the same as a
        # request that never begins one): at 100,000 sessions nearly every batch comes here,
        # and asking twice per request, parsing each key for its agent, took a tenth of the
        # event loop.
        agents = self.store.agents
        find = self.find_by_key
        keys: list[str | None] = []
        for item in items:
            if isinstance(item, IngestWork):
                route = item.route
                reg = agents.get(route.agent_id)
                key: str | None = route.session_key
                if reg is not None and key in reg.sessions:
                    key = None
            else:
                key = _key_of(item)
                if key is not None and find(key) is not None:
                    key = None
            keys.append(key)
        waiting = len(set(keys)) - (None in keys)
        cap = max(MAX_NEW_SESSIONS, waiting // 4)
        alone = max(MAX_NEW_ALONE, waiting // 2)
        return spread_new_sessions(keys, _unknown, cap, alone, begun=begun, others=others)

    def _begins_few(self, items: list[Work], begun: int) -> bool:
        """True when so few of `items` may begin a session that none waits: none at all, or
        no more than MAX_NEW_SESSIONS with the `begun` of the batch they join.

        Called for every batch and every request joining one, mostly of messages to existing
        sessions: one dict lookup per inbound message (in its agent's registry, as
        `plan_ingest` looks), where the exact rule parses every key. Other requests count as
        possibly new, except prepared entries (never new); more sends the batch to the rule."""
        room = max(MAX_NEW_SESSIONS - begun, 0)
        agents = self.store.agents
        maybe_new = 0
        for item in items:
            if isinstance(item, IngestWork):
                route = item.route
                reg = agents.get(route.agent_id)
                if reg is not None and route.session_key in reg.sessions:
                    continue
            elif isinstance(item, EntryWork):
                continue
            maybe_new += 1
            if maybe_new > room:
                return False
        return True

    def prepare(self, items: list[Work], batch: Batch) -> Commit | None:
        now = now_ms()
        commit = Commit(batch, now, iso_ms(now))
        self.extend(commit, items)
        return commit if commit.answers else None

    def extend(self, commit: Commit, items: list[Work]) -> None:
        """Stages 3-4 for `items` in a batch not yet written (its clock is theirs too)."""
        apply = self.applier
        for item in items:
            try:
                if isinstance(item, IngestWork):
                    answer: Answer | IngestOutcome = apply.ingest(item, commit)
                elif isinstance(item, AppendWork):
                    answer = apply.append(item, commit)
                elif isinstance(item, EntryWork):
                    answer = apply.entries(item, commit)
                else:
                    answer = apply.reset(item, commit)
            except RequestError as e:
                self._finish(item, e)
                continue
            commit.answers.append((item, answer))

    def requests(self, prepared: Commit) -> list[Work]:
        return prepared.requests

    async def committed(self, commit: Commit, background: TaskGroup) -> None:
        """The batch is durable: the after-commit stages in order, then the answers."""
        for stage in self.stages:
            await stage.after_commit(commit, background)
        written = time.monotonic()
        batch = commit.batch
        if batch.closing:
            self.archiver.archive(background, batch.closing, commit.now)
        if commit.linked:
            self.archiver.link(background, commit.linked)
        self._answer_all(commit, written, background)
        self.store.dedup.trim_all(commit.now)
        # One line per batch, not per message: at full speed a line per message would cost
        # more than storing the message.
        log.debug(
            "message.appended",
            messages=len(commit.answers),
            sessions=len(batch.touched),
            created=len(batch.created),
        )

    def _answer_all(self, commit: Commit, written: float, background: TaskGroup) -> None:
        counters = self.counters
        latency = counters.ingest_latency
        finish = self._finish
        now = now_ms()
        scheduled = commit.compaction
        last: dict[str, int] = {}  # session id -> its last inbound message (gets `scheduled`)
        if scheduled:
            for i, (_item, a) in enumerate(commit.answers):
                if isinstance(a, IngestOutcome):
                    last[a.session.session_id] = i
        for i, (item, a) in enumerate(commit.answers):
            kind = type(item)
            if kind is IngestWork:
                assert isinstance(item, IngestWork) and isinstance(a, IngestOutcome)
                counters.ingested += 1
                latency.observe(written - item.received)
                compaction = a.compaction
                if compaction is None and scheduled and last.get(a.session.session_id) == i:
                    compaction = scheduled.get(a.session.session_id)
                if a.command is None:  # a plain message, the common case
                    finish(item, _answer(a, compaction, None), now)
                    continue
                if a.command.reply is None:
                    background.start_soon(self._answer_detail, item, a, compaction)
                    continue
                finish(item, _answer(a, compaction, None), now)
                continue
            if kind is AppendWork:
                counters.appended += 1
            assert not isinstance(a, IngestOutcome)
            finish(item, a, now)

    async def _answer_detail(
        self, item: IngestWork, a: IngestOutcome, compaction: dict[str, Any] | None
    ) -> None:
        """Answer /context detail once the context is read (the message itself is durable)."""
        assert self.commands is not None
        reply = await self.commands.context_detail(a.session)
        self._finish(item, _answer(a, compaction, reply))

    def _finish(self, item: Work, outcome: Answer | RequestError, now: int | None = None) -> None:
        item.reply(outcome)
        if type(item) is IngestWork and item.dedup_key is not None:
            waiters = self._inflight.pop((item.route.agent_id, item.dedup_key), [])
            if isinstance(outcome, dict):
                at = now_ms() if now is None else now
                self.store.dedup.remember(item.route.agent_id, item.dedup_key, at, outcome)
                if not waiters:
                    return
                outcome = as_duplicate(outcome)
            for w in waiters:
                w(outcome)

    def reject(self, items: Iterable[Work], err: RequestError) -> None:
        for item in items:
            self._finish(item, err)


def _unknown(_key: str) -> bool:
    """`held_back` has turned the keys of known sessions into None already."""
    return False


def _key_of(item: Work) -> str | None:
    """The session key a request may begin a session of (None: it never begins one)."""
    if isinstance(item, IngestWork):
        return item.route.session_key
    if isinstance(item, AppendWork):
        return item.params.session_key
    if isinstance(item, ResetWork):
        return item.session_key
    return None


def _answer(a: IngestOutcome, compaction: dict[str, Any] | None, detail: str | None) -> Answer:
    st = a.session
    command = None
    if a.command is not None:
        reply = detail if a.command.reply is None else a.command.reply
        command = {"name": a.command.name, "reply": reply}
    return ingest_answer(
        st.session_key,
        st.session_id,
        a.entry_id,
        a.created,
        reset=a.reset,
        command=command,
        compaction=compaction,
    )

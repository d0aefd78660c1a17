"""The stages every inbound message goes through, in the order SPEC section 4 lists them.

    resolve key -> access -> (reset policy) -> idempotency -> append (group commit) -> answer

Resolving the key and access is `daemon/routing.py`; the reset decision, the entry and the
registry changes are planned by the pure `daemon/core/ingest.py` (`plan_ingest`) and applied to
the batch in `_prepare_ingest`, in one place. The append stage is the committer: a single task
that takes whatever requests are waiting (`committer.WorkQueue`), prepares them as one batch,
writes the batch to its transcripts and the journal in a worker thread, and answers every request
of the batch after the one fdatasync that covers them all. After the write, in order: the backup
mirror (stage 5), the session events, the compaction check (which also schedules memory flushes),
the archiving of closed sessions, the answers. Checkpoints run between batches
(`committer.Checkpoints`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from daemon.archiving import Archiver
from daemon.backup import Mirror
from daemon.committer import CheckpointMark, Checkpoints, Counters, WorkQueue
from daemon.config import Config
from daemon.config_load import resolve_timezone
from daemon.core import tokens
from daemon.core.commands import Command
from daemon.core.ids import next_entry_id, now_ms
from daemon.core.ingest import (
    RESET_ENTRY,
    ROUTE_FIELD,
    STOP_ENTRY,
    CommandPlan,
    carried_fields,
    plan_ingest,
    stop_event,
)
from daemon.core.protocol import AppendParams, IngestParams
from daemon.errors import (
    NotFound,
    RequestError,
    SenderNotAllowed,
    StorageUnavailable,
    WrongShard,
    os_reason,
    storage_unavailable,
)
from daemon.events import EventBus
from daemon.failpoints import failpoint
from daemon.lifecycle import Policies, sessions_reply, status_reply
from daemon.logs import Throttle
from daemon.routing import Router
from daemon.store.dedup import DedupKey
from daemon.store.registry import SessionState
from daemon.store.store import Batch, Store, ingest_answer
from daemon.store.transcript import custom_line, header_line, iso_ms, message_line
from daemon.work import AppendWork as AppendWork  # re-exported: compaction reads answers by kind
from daemon.work import CompactionHooks, EntryWork, Reply, ResetWork, Work
from daemon.work import IngestWork as IngestWork

log = structlog.get_logger("daemon.pipeline")

WRITE_FAILURE_LOG_SECONDS = 10.0


class Pipeline:
    """Owns the committer task; `ingest` and `append` are its entrances."""

    def __init__(
        self,
        store: Store,
        config: Config,
        events: EventBus | None = None,
        *,
        mirror: Mirror | None = None,
        compaction: Callable[[Pipeline], CompactionHooks] | None = None,
    ) -> None:
        """`mirror` is stage 5; `compaction` builds stages 6-7 (compaction check, memory flush)
        on this pipeline, whose entrances it uses to append its entries."""
        self.store = store
        self.config = config
        self.events = events if events is not None else EventBus()
        self.mirror = mirror  # stage 5, the backup mirror (daemon/backup.py): None when off
        self.policies = Policies(config.session, resolve_timezone(config))
        self.router = Router(config)  # stage 1: key resolution and access
        self.counters = Counters()
        self._queue: WorkQueue[Work] = WorkQueue(self._abandoned)
        self._epoch = 0  # advanced by a failed write: batches prepared before it are void
        # Batches prepared and not yet taken by the writer, oldest first. When a write fails,
        # their sessions are unloaded at once, not when the writer reaches them: a batch
        # prepared meanwhile under the new epoch must not build on their lines.
        self._unwritten: deque[Batch] = deque()
        self.archiver = Archiver(store)
        self._inflight: dict[tuple[str, DedupKey], list[Reply]] = {}
        self.checkpoints = Checkpoints(store, self.counters)
        # A full disk fails every batch: one line per kind of failure per 10 s says so.
        self._failure_lines = Throttle(WRITE_FAILURE_LOG_SECONDS)
        self._failed_batches = 0  # since the last batch written
        self.compaction = None if compaction is None else compaction(self)

    # ------------------------------------------------------------------------------------------
    # Entrances (event loop)

    def ingest(self, params: IngestParams, reply: Reply) -> Awaitable[None] | None:
        """Run the pure stages, then hand the message to the committer; `reply` is called once.

        Returns None when the message was queued (or answered), or an awaitable to wait on when
        the committer's queue is full. Raises RequestError for a message that is refused.
        """
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
        self._check_open()
        dkey: DedupKey | None = None
        if params.message_id is not None:
            dkey = (route.channel, route.account_id, params.message_id)
            prior = self.store.dedup.lookup(route.agent_id, dkey)
            if prior is not None:
                self.counters.duplicates += 1
                reply({**prior, "duplicate": True})
                return None
            waiters = self._inflight.get((route.agent_id, dkey))
            if waiters is not None:
                self.counters.duplicates += 1
                waiters.append(reply)
                return None
            self._inflight[(route.agent_id, dkey)] = []
        return self._put(IngestWork(route, params, reply, dkey, time.monotonic()))

    def _check_open(self) -> None:
        if self._queue.closed:
            raise StorageUnavailable("the daemon is shutting down; nothing was stored, retry")
        self.store.check_writable()

    def _put(self, work: Work) -> Awaitable[None] | None:
        return self._queue.put(work, self._check_open)

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
        self._check_open()
        return self._put(AppendWork(params, reply))

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
        self._check_open()
        work = ResetWork(agent_id, session_key, reason, reply, only_if_stale, start_new, at)
        return self._put(work)

    async def reset_and_wait(
        self, agent_id: str, session_key: str, reason: str, **kw: Any
    ) -> dict[str, Any]:
        """`reset`, awaiting its outcome (for the API and the scheduler)."""
        return await self._outcome(
            lambda reply: self.reset(agent_id, session_key, reason, reply, **kw)
        )

    async def append_prepared(
        self, session_id: str, prepare: Callable[[Batch, SessionState, int, str], dict[str, Any]]
    ) -> dict[str, Any]:
        """Append entries built by `prepare` to an active session and wait until they are
        durable. Raises NotFound (the session was reset or archived) or StorageUnavailable."""
        self._check_open()
        return await self._outcome(lambda reply: self._put(EntryWork(session_id, prepare, reply)))

    async def _outcome(self, put: Callable[[Reply], Awaitable[None] | None]) -> dict[str, Any]:
        """Queue a request with `put(reply)` and wait for its outcome; raises its RequestError."""
        done = anyio.Event()
        box: list[dict[str, Any] | RequestError] = []

        def reply(outcome: dict[str, Any] | RequestError) -> None:
            box.append(outcome)
            done.set()

        waiter = put(reply)
        if waiter is not None:
            await waiter
        await done.wait()
        if isinstance(box[0], RequestError):
            raise box[0]
        return box[0]

    def find_by_key(self, session_key: str) -> SessionState | None:
        from daemon.core.keys import agent_of_key

        agent_id = agent_of_key(session_key)
        if agent_id is None:
            return None
        reg = self.store.agents.get(agent_id)
        return None if reg is None else reg.sessions.get(session_key)

    def _check_shard(self, agent_id: str) -> None:
        try:
            self.router.check_shard(agent_id)
        except WrongShard:
            self.counters.rejected += 1
            raise

    def set_config(self, config: Config) -> None:
        """Swap in a reloaded config (daemon/reload.py): the next message is routed, checked and
        reset by it. Memoised routes and policies were derived from the old one, so they go."""
        self.config = config
        self.router = Router(config)
        self.policies = Policies(config.session, resolve_timezone(config))

    def close(self) -> None:
        """No more requests: the committer finishes what is queued, checkpoints and returns."""
        self._queue.close()

    # ------------------------------------------------------------------------------------------
    # The committer

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The committer: prepares batches and hands them to the writer, one batch ahead.

        While the writer syncs batch N, batch N+1 is prepared, so the event loop's work and the
        disk's overlap. Checkpoint markers travel in the same stream, so a journal switch always
        falls between two batches.
        """
        interval = self.config.daemon.checkpointIntervalMs / 1000
        next_checkpoint = time.monotonic() + interval
        send, recv = anyio.create_memory_object_stream[Batch | CheckpointMark](1)
        queue = self._queue
        task_status.started()
        async with anyio.create_task_group() as tg:
            self._archive_tg = tg
            tg.start_soon(self._writer, recv, tg)
            async with send:
                while True:
                    if not queue:
                        if queue.closed:
                            break
                        await queue.wait(next_checkpoint - time.monotonic())
                    items = queue.take()
                    if items:
                        batch = await self._prepare(items)
                        if batch is not None:
                            self._unwritten.append(batch)
                            await send.send(batch)
                    if time.monotonic() >= next_checkpoint:
                        next_checkpoint = time.monotonic() + interval
                        await send.send(CheckpointMark(final=False))
                await send.send(CheckpointMark(final=True))
        if self.store.broken is None and self.checkpoints.complete:
            # Everything is in the transcripts and synced: a clean stop leaves nothing to replay.
            try:
                await anyio.to_thread.run_sync(self.store.journal.start_fresh)
            except OSError as e:  # a full disk, say: the next start replays the journal instead
                log.warning("store.journal_kept", error=os_reason(e))
        log.info("store.flushed", **self.counts())

    async def _prepare(self, items: list[Work]) -> Batch | None:
        """Build one batch from queued requests (event loop, after any tail reads it needs)."""
        store = self.store
        if store.broken is not None:
            self._reject_all(items, storage_unavailable(store.broken, hint=None))
            return None
        while True:
            unloaded: list[SessionState] = []
            for item in items:
                for st in self._sessions_of(item):
                    if not st.loaded:
                        unloaded.append(st)
            if not unloaded:
                break
            # A failed write may unload sessions meanwhile: check again after the read.
            try:
                await anyio.to_thread.run_sync(store.ensure_loaded, unloaded)
            except OSError as e:  # EMFILE, EIO: these requests fail, the committer goes on
                self._reject_all(items, storage_unavailable(e, "reading a transcript"))
                return None
        now = now_ms()
        ts = iso_ms(now)
        batch = Batch(epoch=self._epoch, now=now)
        for item in items:
            try:
                if isinstance(item, IngestWork):
                    answer = self._prepare_ingest(item, batch, now, ts)
                elif isinstance(item, AppendWork):
                    answer = self._prepare_append(item, batch, now, ts)
                elif isinstance(item, EntryWork):
                    answer = self._prepare_entries(item, batch, now, ts)
                else:
                    answer = self._prepare_reset(item, batch, now, ts)
            except RequestError as e:
                self._finish(item, e)
                continue
            batch.answers.append((item, answer))
        return batch if batch.answers else None

    def _sessions_of(self, item: Work) -> list[SessionState]:
        """The existing sessions a request may write to (their tails must be read first)."""
        if isinstance(item, AppendWork):
            st = self.find_by_key(item.params.session_key)
            return [] if st is None else [st]
        if isinstance(item, EntryWork):
            st = self.store.by_id.get(item.session_id)
            return [] if st is None else [st]
        if isinstance(item, IngestWork):
            agent_id, key = item.route.agent_id, item.route.session_key
        else:
            agent_id, key = item.agent_id, item.session_key
        reg = self.store.agents.get(agent_id)
        st = None if reg is None else reg.sessions.get(key)
        if st is None or reg is None:
            return []
        target = st.entry.get(ROUTE_FIELD)
        routed = reg.sessions.get(target) if isinstance(target, str) else None
        return [st] if routed is None else [st, routed]

    async def _writer(
        self, recv: MemoryObjectReceiveStream[Batch | CheckpointMark], tg: TaskGroup
    ) -> None:
        async with recv:
            async for item in recv:
                if isinstance(item, CheckpointMark):
                    if item.final:
                        await self.checkpoints.settled()
                    if not self.checkpoints.running:
                        await self.checkpoints.start(tg, self._unwritten, final=item.final)
                else:
                    await self._write(item)

    async def _write(self, batch: Batch) -> None:
        store = self.store
        answers = batch.answers
        if self._unwritten and self._unwritten[0] is batch:
            self._unwritten.popleft()
        if batch.epoch != self._epoch or store.broken is not None:
            # Prepared on top of a batch that failed: its offsets are wrong; nothing written.
            store.fail(batch)
            reason = store.broken or "an earlier write failed"
            self._reject_all([w for w, _ in answers], storage_unavailable(reason))
            return
        started = time.monotonic()
        try:
            await anyio.to_thread.run_sync(store.write_batch, batch)
        except OSError as e:
            self._epoch += 1
            store.fail(batch)
            for later in self._unwritten:
                store.fail(later)  # void already (old epoch); its sessions re-read their tails
            reason = os_reason(e)
            store.write_error = f"{reason} (writing a batch)"  # `status` says so
            self._failed_batches += 1
            left_out = self._failure_lines.allow((e.errno, store.broken is not None))
            if left_out is not None:
                log.error(
                    "store.write_failed",
                    error=reason,
                    errno=e.errno,
                    messages=len(answers),
                    broken=store.broken is not None,
                    failuresNotLogged=left_out,
                )
            self._reject_all([w for w, _ in answers], storage_unavailable(reason))
            return
        synced = time.monotonic()
        if self._failed_batches:
            log.warning("store.write_resumed", failedBatches=self._failed_batches)
            self._failed_batches = 0
        store.write_error = None
        store.apply(batch)
        if self.mirror is not None:
            # Stage 5: hand the batch to the backup mirror (waits only with sync "ack").
            await self.mirror.committed(batch)
        counters = self.counters
        written = time.monotonic()  # the answers go out now (after the mirror, with "ack")
        counters.commit_latency.observe(synced - started)
        counters.batch_sizes.observe(len(answers))
        counters.batches += 1
        for st in batch.created:
            log.info(
                "session.created",
                agentId=st.agent_id,
                sessionKey=st.session_key,
                sessionId=st.session_id,
            )
            self.events.publish(
                "session.created",
                {"agentId": st.agent_id, "sessionKey": st.session_key, "sessionId": st.session_id},
            )
        for old, new, reason in batch.resets:
            info = {
                "agentId": old.agent_id,
                "sessionKey": old.session_key,
                "previousSessionId": old.session_id,
                "sessionId": None if new is None else new.session_id,
                "reason": reason,
            }
            log.info("session.reset", **info)
            self.events.publish("session.reset", info)
            # Every reset counts, whoever asked: a trigger in chat, a policy, the API, the jobs.
            counters.resets += 1
            counters.resets_by_reason[reason] = counters.resets_by_reason.get(reason, 0) + 1
        for info in batch.stops:
            log.info("session.stop", **info)
            self.events.publish("session.stop", info)
        if self.compaction is not None:
            self.compaction.after_write(batch)
        if batch.closing:
            self.archiver.archive(self._archive_tg, batch.closing, batch.now)
        if batch.linked:
            self.archiver.link(self._archive_tg, batch.linked)
        counters = self.counters
        finish = self._finish
        now = now_ms()
        latency = counters.ingest_latency
        details = batch.details
        for item, answer in answers:
            kind = type(item)
            if kind is IngestWork:
                counters.ingested += 1
                latency.observe(written - item.received)
            elif kind is AppendWork:
                counters.appended += 1
            if details and id(item) in details:
                self._archive_tg.start_soon(self._finish_detail, item, answer, details[id(item)])
                continue
            finish(item, answer, now)
        failpoint("append.after_ack")
        store.dedup.trim_all(batch.now)
        # One line per batch, not per message: at full speed a line per message would cost
        # more than storing the message.
        log.debug(
            "message.appended",
            messages=len(answers),
            sessions=len(batch.touched),
            created=len(batch.created),
        )

    def _prepare_ingest(self, item: IngestWork, batch: Batch, now: int, ts: str) -> dict[str, Any]:
        """Stages 2-4 of SPEC 4: the pure planner decides, this applies its plan to the batch."""
        store = self.store
        route, p = item.route, item.params
        reg = store.agents.get(route.agent_id)
        sessions: dict[str, SessionState] = {} if reg is None else reg.sessions
        plan = plan_ingest(
            sessions,
            route,
            p,
            self.policies,
            now,
            reset_triggers=self.config.session.resetTriggers,
            compaction=self.compaction is not None,
        )
        old = sessions[plan.reset.previous] if plan.reset is not None else None
        if plan.new is not None:
            st = self._begin_session(
                batch,
                route.agent_id,
                plan.new.session_key,
                plan.new.fields,
                old,
                plan.reset.reason if plan.reset is not None else None,
                plan.reset.data if plan.reset is not None else None,
                now,
                ts,
            )
        else:
            assert plan.target is not None
            st = sessions[plan.target]
            if plan.rewrite_header:
                self._rewrite_header(batch, st, now)
        entry_id = next_entry_id(st.last_entry_id)
        if plan.kind == "stop":
            line = custom_line(
                entry_id, st.last_entry_id, ts, STOP_ENTRY, plan.stop_data, plan.origin
            )
            batch.stops.append(stop_event(st.agent_id, st, entry_id, p))
        else:
            assert plan.message is not None
            line = message_line(entry_id, st.last_entry_id, ts, plan.message, plan.origin)
        store.add_line(batch, st, line, entry_id)
        fields = plan.registry
        if plan.added_tokens is not None:
            total = int(st.entry.get("totalTokens") or 0) + plan.added_tokens
            fields = {**fields, "totalTokens": total}
        store.update_entry(st, fields)
        change = plan.route_change
        if change is not None:
            chat = store.agent(route.agent_id).sessions.get(change.chat_key, st)
            if change.target is None:
                store.update_entry(chat, {}, drop=(ROUTE_FIELD,))
            else:
                store.update_entry(chat, {ROUTE_FIELD: change.target})
        answer = ingest_answer(st, entry_id, plan.new is not None)
        if old is not None and plan.reset is not None:
            answer["reset"] = {"reason": plan.reset.reason, "previousSessionId": old.session_id}
        if plan.compaction is not None:
            answer["compaction"] = plan.compaction
        if plan.command is not None:
            answer["command"] = self._command(plan.command, st, route.agent_id, now, batch, item)
        return answer

    def _begin_session(
        self,
        batch: Batch,
        agent_id: str,
        key: str,
        fields: dict[str, Any],
        old: SessionState | None,
        reason: str | None,
        reset_data: dict[str, Any] | None,
        now: int,
        ts: str,
    ) -> SessionState:
        """Create a session (header first); when it replaces `old`, close and archive that one
        and record why in the new one, so a reset is never silent."""
        store = self.store
        # A key whose last session ended without a successor (a scheduled reset, a deletion, an
        # adopted archive) continues that chain: the header names it, its index line follows.
        prev = store.predecessor_of(agent_id, key) if old is None else None
        pred = old.session_id if old is not None else (prev.session_id if prev else None)
        st, header = store.create_session(agent_id, key, now, fields, pred)
        if prev is not None:
            batch.linked.append((prev, st.session_id))
        # Registered now, so the next batch (prepared during this one's sync) finds it.
        store.register(st)
        batch.created.append(st)
        store.add_line(batch, st, header, None)
        if old is not None and reason is not None:
            store.close_session(batch, old, reason, st.session_id, ts)
            data = reset_data or {"reason": reason, "predecessor": old.session_id}
            eid = next_entry_id(st.last_entry_id)
            store.add_line(batch, st, custom_line(eid, None, ts, RESET_ENTRY, data), eid)
            batch.resets.append((old, st, reason))
        return st

    def _rewrite_header(self, batch: Batch, st: SessionState, now: int) -> None:
        cwd = self.store.workspaces.get(st.agent_id) or str(self.store.state_dir / "workspace")
        self.store.add_line(batch, st, header_line(st.session_id, st.session_key, now, cwd), None)

    def _command(
        self,
        cmd: CommandPlan,
        st: SessionState,
        agent_id: str,
        now: int,
        batch: Batch,
        item: IngestWork,
    ) -> dict[str, Any]:
        """The planned reply to a chat command, rendered here where it needs more state."""
        reply = cmd.reply
        if reply is not None:
            reply = reply.replace("{sessionId}", st.session_id)
        elif cmd.ask == "status":
            reply = status_reply(st, self.policies, now)
        elif cmd.ask == "sessions":
            reply = sessions_reply(self.store, agent_id, self.policies.tz)
        else:
            assert self.compaction is not None
            if cmd.ask == "context_detail":
                batch.details[id(item)] = st  # answered once the transcript is read
            reply = self.compaction.command_reply(Command(cmd.name, "/" + cmd.name, cmd.arg), st)
        return {"name": cmd.name, "reply": reply}

    def _prepare_reset(self, item: ResetWork, batch: Batch, now: int, ts: str) -> dict[str, Any]:
        """A reset asked for by the API or the scheduler (no message to carry)."""
        reg = self.store.agents.get(item.agent_id)
        st = None if reg is None else reg.sessions.get(item.session_key)
        if st is None:
            raise NotFound(f"no session with key {item.session_key!r}")
        if item.only_if_stale:
            verdict = self.policies.staleness(st, max(now, item.at or 0))
            if not verdict.stale:
                return {"sessionKey": st.session_key, "skipped": True}
            reason = verdict.reason or item.reason
        else:
            reason = item.reason
        if item.start_new:
            new = self._begin_session(
                batch,
                st.agent_id,
                st.session_key,
                carried_fields(st.entry, None),
                st,
                reason,
                None,
                now,
                ts,
            )
            return {
                "sessionKey": st.session_key,
                "previousSessionId": st.session_id,
                "sessionId": new.session_id,
                "reason": reason,
            }
        self.store.close_session(batch, st, reason, None, ts)
        batch.resets.append((st, None, reason))
        return {
            "sessionKey": st.session_key,
            "previousSessionId": st.session_id,
            "sessionId": None,
            "reason": reason,
        }

    def _prepare_entries(self, item: EntryWork, batch: Batch, now: int, ts: str) -> dict[str, Any]:
        st = self.store.by_id.get(item.session_id)
        if st is None or st.size <= 0:
            raise NotFound(f"no active session with id {item.session_id!r}")
        return item.prepare(batch, st, now, ts)

    def _prepare_append(
        self,
        item: AppendWork,
        batch: Batch,
        now: int,
        ts: str,
    ) -> dict[str, Any]:
        st = self.find_by_key(item.params.session_key)
        if st is None:
            raise NotFound(f"no session with key {item.params.session_key!r}")
        store = self.store
        entry_id = next_entry_id(st.last_entry_id)
        message = dict(item.params.message)
        message.setdefault("timestamp", now)
        line = message_line(entry_id, st.last_entry_id, ts, message)
        store.add_line(batch, st, line, entry_id)
        # SPEC 4.6: the provider's usage where known, else ceil(chars/4) on top.
        total = tokens.after_message(int(st.entry.get("totalTokens") or 0), message)
        self.store.update_entry(st, {"updatedAt": now, "totalTokens": total})
        return {"sessionKey": st.session_key, "sessionId": st.session_id, "entryId": entry_id}

    async def archives_settled(self) -> None:
        """Wait (a bounded while) until closed sessions are in archive/ with their index lines."""
        await self.archiver.settled()

    def _finish(
        self, item: Work, outcome: dict[str, Any] | RequestError, now: int | None = None
    ) -> None:
        item.reply(outcome)
        if type(item) is IngestWork and item.dedup_key is not None:
            waiters = self._inflight.pop((item.route.agent_id, item.dedup_key), [])
            if isinstance(outcome, dict):
                at = now_ms() if now is None else now
                self.store.dedup.remember(item.route.agent_id, item.dedup_key, at, outcome)
                if not waiters:
                    return
                outcome = {**outcome, "duplicate": True}
            for w in waiters:
                w(outcome)

    async def _finish_detail(self, item: Work, answer: dict[str, Any], st: SessionState) -> None:
        """Answer /context detail once the context is read (the message itself is durable)."""
        assert self.compaction is not None
        answer["command"]["reply"] = await self.compaction.context_detail(st)
        self._finish(item, answer)

    def _reject_all(self, items: list[Work], err: RequestError) -> None:
        for item in items:
            self._finish(item, err)

    def counts(self) -> dict[str, int]:
        c = self.counters
        return {
            "ingested": c.ingested,
            "appended": c.appended,
            "duplicates": c.duplicates,
            "resets": c.resets,
            "batches": c.batches,
        }

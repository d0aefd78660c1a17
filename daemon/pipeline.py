"""The stages every inbound message goes through, in the order SPEC section 4 lists them.

    resolve key -> access -> (reset policy) -> idempotency -> append (group commit) -> answer

The first stages are pure calls into `daemon.core`. The append stage is the committer: a single
task that takes whatever requests are waiting, prepares them as one batch, writes the batch to
its transcripts and the journal in a worker thread, and answers every request of the batch after
the one fdatasync that covers them all. It also runs the periodic checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon.config import Config
from daemon.core.access import check_access
from daemon.core.keys import Inbound, Route, resolve_route
from daemon.core.protocol import AppendParams, IngestParams
from daemon.errors import NotFound, RequestError, SenderNotAllowed, StorageUnavailable
from daemon.store.dedup import DedupKey
from daemon.store.registry import SessionState
from daemon.store.store import Batch, Store, now_ms
from daemon.store.transcript import message_line, next_entry_id

log = structlog.get_logger("daemon.pipeline")

Reply = Callable[[dict[str, Any] | RequestError], None]

QUEUE_SIZE = 16_384  # requests waiting for the committer; beyond it adapters are pushed back
MAX_BATCH = 8_192


@dataclass(slots=True)
class IngestWork:
    route: Route
    params: IngestParams
    reply: Reply
    dedup_key: DedupKey | None


@dataclass(slots=True)
class AppendWork:
    params: AppendParams
    reply: Reply


Work = IngestWork | AppendWork


@dataclass(slots=True)
class Counters:
    ingested: int = 0
    appended: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    checkpoints: int = 0
    last_checkpoint_ms: int = 0


class Pipeline:
    """Owns the committer task; `ingest` and `append` are its entrances."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.counters = Counters()
        self._send, self._recv = anyio.create_memory_object_stream[Work](QUEUE_SIZE)
        self._inflight: dict[tuple[str, DedupKey], list[Reply]] = {}
        self._checkpointing = False
        self._checkpoint_done = anyio.Event()
        self._checkpoint_done.set()

    # ------------------------------------------------------------------------------------------
    # Entrances (event loop)

    async def ingest(self, params: IngestParams, reply: Reply) -> None:
        """Run the pure stages, then hand the message to the committer; `reply` is called once."""
        cfg = self.config
        inbound = Inbound(
            channel=params.channel,
            chat_type=params.chat_type,
            peer=params.peer,
            account_id=params.account_id,
            group_id=params.group_id,
            thread_id=params.thread_id,
            agent_id=params.agent_id,
        )
        route = resolve_route(inbound, cfg)
        denied = check_access(inbound, cfg.access)
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
        self.store.check_writable()
        dkey: DedupKey | None = None
        if params.message_id is not None:
            dkey = (route.channel, route.account_id, params.message_id)
            prior = self.store.dedup.lookup(route.agent_id, dkey)
            if prior is not None:
                self.counters.duplicates += 1
                reply({**prior, "duplicate": True})
                return
            waiters = self._inflight.get((route.agent_id, dkey))
            if waiters is not None:
                self.counters.duplicates += 1
                waiters.append(reply)
                return
            self._inflight[(route.agent_id, dkey)] = []
        try:
            await self._send.send(IngestWork(route, params, reply, dkey))
        except anyio.get_cancelled_exc_class():
            if dkey is not None:
                self._inflight.pop((route.agent_id, dkey), None)
            raise
        except anyio.ClosedResourceError:
            if dkey is not None:
                self._inflight.pop((route.agent_id, dkey), None)
            raise StorageUnavailable("the daemon is shutting down; nothing was stored") from None

    async def append(self, params: AppendParams, reply: Reply) -> None:
        if self.find_by_key(params.session_key) is None:
            raise NotFound(f"no session with key {params.session_key!r}")
        self.store.check_writable()
        try:
            await self._send.send(AppendWork(params, reply))
        except anyio.ClosedResourceError:
            raise StorageUnavailable("the daemon is shutting down; nothing was stored") from None

    def find_by_key(self, session_key: str) -> SessionState | None:
        from daemon.core.keys import agent_of_key

        agent_id = agent_of_key(session_key)
        if agent_id is None:
            return None
        reg = self.store.agents.get(agent_id)
        return None if reg is None else reg.sessions.get(session_key)

    def close(self) -> None:
        """No more requests: the committer finishes what is queued, checkpoints and returns."""
        self._send.close()

    # ------------------------------------------------------------------------------------------
    # The committer

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        interval = self.config.daemon.checkpointIntervalMs / 1000
        next_checkpoint = time.monotonic() + interval
        task_status.started()
        async with anyio.create_task_group() as tg, self._recv:
            while True:
                items: list[Work] = []
                with anyio.move_on_after(max(0.0, next_checkpoint - time.monotonic())):
                    try:
                        items.append(await self._recv.receive())
                    except anyio.EndOfStream:
                        break
                while len(items) < MAX_BATCH:
                    try:
                        items.append(self._recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if items:
                    await self._commit(items)
                if time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + interval
                    if not self._checkpointing:
                        await self._start_checkpoint(tg)
            await self._checkpoint_done.wait()
            await self._start_checkpoint(tg)
        log.info("store.flushed", **self._counts())

    async def _commit(self, items: list[Work]) -> None:
        store = self.store
        if store.broken is not None:
            self._reject_all(items, StorageUnavailable(f"storage unavailable: {store.broken}"))
            return
        unloaded: list[SessionState] = []
        for item in items:
            if isinstance(item, IngestWork):
                reg = store.agents.get(item.route.agent_id)
                st = None if reg is None else reg.sessions.get(item.route.session_key)
            else:
                st = self.find_by_key(item.params.session_key)
            if st is not None and not st.loaded:
                unloaded.append(st)
        if unloaded:
            await anyio.to_thread.run_sync(store.ensure_loaded, unloaded)
        now = now_ms()
        batch = Batch()
        created: dict[tuple[str, str], SessionState] = {}
        answers: list[tuple[Work, dict[str, Any]]] = []
        for item in items:
            try:
                if isinstance(item, IngestWork):
                    answer = self._prepare_ingest(item, batch, created, now)
                else:
                    answer = self._prepare_append(item, batch, created, now)
            except RequestError as e:
                self._finish(item, e)
                continue
            answers.append((item, answer))
        if not answers:
            return
        try:
            await anyio.to_thread.run_sync(store.write_batch, batch)
        except OSError as e:
            store.fail(batch)
            reason = e.strerror or str(e)
            log.error(
                "store.write_failed",
                error=reason,
                errno=e.errno,
                messages=len(answers),
                broken=store.broken is not None,
            )
            err = StorageUnavailable(f"storage unavailable: {reason}; nothing was stored, retry")
            self._reject_all([w for w, _ in answers], err)
            return
        store.apply(batch)
        self.counters.batches += 1
        for st in batch.created:
            log.info(
                "session.created",
                agentId=st.agent_id,
                sessionKey=st.session_key,
                sessionId=st.session_id,
            )
        for item, answer in answers:
            if isinstance(item, IngestWork):
                self.counters.ingested += 1
                log.debug(
                    "message.appended",
                    sessionKey=answer["sessionKey"],
                    entryId=answer["entryId"],
                    channel=item.route.channel,
                )
            else:
                self.counters.appended += 1
            self._finish(item, answer)

    def _prepare_ingest(
        self,
        item: IngestWork,
        batch: Batch,
        created: dict[tuple[str, str], SessionState],
        now: int,
    ) -> dict[str, Any]:
        store = self.store
        route, p = item.route, item.params
        reg = store.agents.get(route.agent_id)
        st = None if reg is None else reg.sessions.get(route.session_key)
        if st is None:
            st = created.get((route.agent_id, route.session_key))
        is_new = st is None
        if st is None:
            st, header = store.create_session(
                route.agent_id, route.session_key, now, registry_fields(route, p)
            )
            created[(route.agent_id, route.session_key)] = st
            batch.created.append(st)
            store.add_line(batch, st, header, None)
        entry_id = next_entry_id(store.last_entry_id(batch, st), _seed(st))
        message: dict[str, Any] = {
            "role": "user",
            "content": p.content,
            "timestamp": p.timestamp_ms if p.timestamp_ms is not None else now,
        }
        line = message_line(
            entry_id, store.last_entry_id(batch, st), now, message, origin_of(route, p)
        )
        store.add_line(batch, st, line, entry_id)
        touch_registry(st, route, p, now)
        store.agent(route.agent_id).dirty = True
        answer = {
            "sessionKey": st.session_key,
            "sessionId": st.session_id,
            "entryId": entry_id,
            "created": is_new,
            "duplicate": False,
            "reset": None,
            "command": None,
            "compaction": None,
        }
        if item.dedup_key is not None:
            store.add_dedup(batch, route.agent_id, item.dedup_key, now, answer)
        return answer

    def _prepare_append(
        self,
        item: AppendWork,
        batch: Batch,
        created: dict[tuple[str, str], SessionState],
        now: int,
    ) -> dict[str, Any]:
        st = self.find_by_key(item.params.session_key)
        if st is None:
            raise NotFound(f"no session with key {item.params.session_key!r}")
        store = self.store
        entry_id = next_entry_id(store.last_entry_id(batch, st), _seed(st))
        message = dict(item.params.message)
        message.setdefault("timestamp", now)
        line = message_line(entry_id, store.last_entry_id(batch, st), now, message)
        store.add_line(batch, st, line, entry_id)
        st.entry["updatedAt"] = now
        usage = message.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("totalTokens"), int):
            st.entry["totalTokens"] = usage["totalTokens"]
        elif isinstance(usage, dict):
            pass
        else:
            text_len = _content_chars(message.get("content"))
            st.entry["totalTokens"] = int(st.entry.get("totalTokens") or 0) + math.ceil(
                text_len / 4
            )
        self.store.agents[st.agent_id].dirty = True
        return {"sessionKey": st.session_key, "sessionId": st.session_id, "entryId": entry_id}

    def _finish(self, item: Work, outcome: dict[str, Any] | RequestError) -> None:
        item.reply(outcome)
        if isinstance(item, IngestWork) and item.dedup_key is not None:
            waiters = self._inflight.pop((item.route.agent_id, item.dedup_key), [])
            if isinstance(outcome, dict):
                self.store.dedup.remember(item.route.agent_id, item.dedup_key, now_ms(), outcome)
                outcome = {**outcome, "duplicate": True}
            for w in waiters:
                w(outcome)

    def _reject_all(self, items: list[Work], err: RequestError) -> None:
        for item in items:
            self._finish(item, err)

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    async def _start_checkpoint(self, tg: TaskGroup) -> None:
        store = self.store
        if store.broken is not None:
            return
        registries = store.dirty_registries()
        if not store.written_since_switch and not store.new_dirs and not registries:
            return
        try:
            paths, dirs = await anyio.to_thread.run_sync(store.switch_journal)
        except OSError as e:
            store.broken = f"journal switch failed: {e.strerror or e}"
            log.error("store.checkpoint_failed", error=store.broken)
            return
        self._checkpointing = True
        self._checkpoint_done = anyio.Event()
        tg.start_soon(self._checkpoint, paths, dirs, registries)

    async def _checkpoint(self, paths: set[str], dirs: set[str], registries: list[Any]) -> None:
        started = time.monotonic()
        try:
            await anyio.to_thread.run_sync(self.store.checkpoint_sync, paths, dirs, registries)
        except OSError as e:
            self.store.broken = f"checkpoint sync failed: {e.strerror or e}"
            log.error("store.checkpoint_failed", error=self.store.broken)
        else:
            self.counters.checkpoints += 1
            self.counters.last_checkpoint_ms = now_ms()
            log.debug(
                "store.checkpoint",
                transcripts=len(paths),
                registries=len(registries),
                seconds=round(time.monotonic() - started, 4),
            )
        finally:
            self._checkpointing = False
            self._checkpoint_done.set()

    def _counts(self) -> dict[str, int]:
        c = self.counters
        return {
            "ingested": c.ingested,
            "appended": c.appended,
            "duplicates": c.duplicates,
            "batches": c.batches,
        }


# ---------------------------------------------------------------------------------------------
# Registry and origin fields, as OpenClaw writes them


def _seed(st: SessionState) -> int:
    return int(st.session_id.replace("-", "")[:8], 16) if st.session_id else 0


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    total = 0
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                if block.get("type") == "image":
                    total += 4800
                else:
                    total += len(str(block.get("text") or block.get("content") or ""))
    return total


def _from_to(route: Route, p: IngestParams) -> tuple[str, str]:
    if route.chat_type == "direct":
        who = f"{route.channel}:{p.peer}"
        return who, who
    target = f"{route.channel}:{p.group_id}"
    if p.thread_id is not None:
        target += f":topic:{p.thread_id}" if route.channel == "telegram" else ""
    return f"{route.channel}:group:{p.group_id}", target


def registry_fields(route: Route, p: IngestParams) -> dict[str, Any]:
    """The first registry fields of a session begun by an inbound message."""
    frm, to = _from_to(route, p)
    origin: dict[str, Any] = {
        "provider": route.channel,
        "surface": route.channel,
        "chatType": route.chat_type,
        "from": frm,
        "to": to,
        "accountId": route.account_id,
    }
    if p.sender_name and route.chat_type == "direct":
        origin["label"] = p.sender_name
    delivery: dict[str, Any] = {"channel": route.channel, "to": to, "accountId": route.account_id}
    fields: dict[str, Any] = {
        "chatType": route.chat_type,
        "origin": origin,
        "deliveryContext": delivery,
        "lastChannel": route.channel,
        "lastTo": to,
        "lastAccountId": route.account_id,
    }
    if p.thread_id is not None:
        origin["threadId"] = p.thread_id
        delivery["threadId"] = p.thread_id
        fields["lastThreadId"] = p.thread_id
    if route.chat_type != "direct":
        fields["channel"] = route.channel
        fields["groupId"] = p.group_id
    return fields


def touch_registry(st: SessionState, route: Route, p: IngestParams, now: int) -> None:
    entry = st.entry
    entry["updatedAt"] = now
    entry["lastInteractionAt"] = now
    entry["lastChannel"] = route.channel
    entry["lastAccountId"] = route.account_id
    entry["totalTokens"] = int(entry.get("totalTokens") or 0) + math.ceil(
        _content_chars(p.content) / 4
    )


def origin_of(route: Route, p: IngestParams) -> dict[str, Any]:
    """The entry-level `origin` object: where the message came from, and its adapter id."""
    origin: dict[str, Any] = {
        "channel": route.channel,
        "chatType": p.chat_type,
        "accountId": route.account_id,
    }
    if p.peer is not None:
        origin["peer"] = p.peer
    if p.group_id is not None:
        origin["groupId"] = p.group_id
    if p.thread_id is not None:
        origin["threadId"] = p.thread_id
    if p.message_id is not None:
        origin["messageId"] = p.message_id
    if p.sender_name is not None:
        origin["senderName"] = p.sender_name
    if p.metadata is not None:
        origin["metadata"] = p.metadata
    return origin

"""Group commit, knowing nothing of what the requests mean (that is the pipeline's `Handler`).

    queue (bounded) -> take what waits -> read the tails the requests need -> handler.prepare
    -> writer: one batch at a time, written and fdatasynced in a worker thread
    -> handler.committed (after-commit stages, answers) -> checkpoint between batches

Invariants:
  1. Batches are written in the order they were prepared; a batch is prepared while the one
     before it is synced, so the event loop's work and the disk's overlap (one batch ahead,
     no more). What arrives while the prepared batch waits for the writer joins it (prepared
     into the same batch), so a request waits for the batch being written and its own, not
     for one more.
  2. A failed write voids every batch prepared on top of it (the epoch advances): their
     positions were computed after lines that are not on disk. Their requests are answered
     with StorageUnavailable, and their sessions re-read their tails before the next write.
  3. Checkpoints (journal switch, then fsync of what the old journal covered, registries and
     id snapshots) fall between two batches: their markers travel in the writer's stream. The
     switch itself is a change of index (the checkpoint before made the next file ready), so
     the writer does not wait for a disk between two batches; the syncs run beside it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from daemon.core.histogram import BATCH_BOUNDS, LATENCY_BOUNDS, Histogram
from daemon.core.ids import now_ms
from daemon.errors import RequestError, os_reason, storage_unavailable
from daemon.failpoints import failpoint
from daemon.logs import Throttle
from daemon.store.fileio import SyncFailed
from daemon.store.registry import SessionState
from daemon.store.store import Batch, Store

log = structlog.get_logger("daemon.committer")

QUEUE_SIZE = 16_384  # requests waiting for the committer; beyond it adapters are pushed back
MAX_BATCH = 8_192

WRITE_FAILURE_LOG_SECONDS = 10.0
HAND_OVER_WAIT_SECONDS = 1.0  # a prepared batch looks again this often (it is woken sooner)

T = TypeVar("T")
W = TypeVar("W")  # a request
P = TypeVar("P")  # a prepared batch as its handler sees it


class WorkQueue(Generic[T]):
    """A bounded queue without a checkpoint per item: adapters wait only when it is full."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._has_work = anyio.Event()
        self._room = anyio.Event()
        self._room.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(
        self,
        work: T,
        check_open: Callable[[], None],
        abandoned: Callable[[T], None] | None = None,
    ) -> Awaitable[None] | None:
        """Queue `work`; when full, return an awaitable that queues it once there is room
        (`check_open` raises when the committer closed meanwhile; `abandoned(work)` is called
        when that wait is given up)."""
        if len(self._items) < QUEUE_SIZE:
            self._items.append(work)
            self._has_work.set()
            return None
        self._room = anyio.Event() if self._room.is_set() else self._room
        return self._put_later(work, check_open, abandoned)

    async def _put_later(
        self, work: T, check_open: Callable[[], None], abandoned: Callable[[T], None] | None
    ) -> None:
        try:
            while len(self._items) >= QUEUE_SIZE:
                await self._room.wait()
                check_open()
        except BaseException:
            if abandoned is not None:
                abandoned(work)
            raise
        self._items.append(work)
        self._has_work.set()

    async def wait(self, seconds: float) -> None:
        """Wait until work arrives, the queue closes, or `seconds` pass."""
        self._has_work = anyio.Event()
        with anyio.move_on_after(max(0.0, seconds)):
            await self._has_work.wait()

    def put_back(self, items: list[T]) -> None:
        """Return `items` (taken last, oldest first) to the front of the queue."""
        self._items.extendleft(reversed(items))
        if len(self._items) >= QUEUE_SIZE and self._room.is_set():
            self._room = anyio.Event()

    def take(self, limit: int = MAX_BATCH) -> list[T]:
        """Up to `limit` items, oldest first."""
        items = self._items
        taken = [items.popleft() for _ in range(min(len(items), limit))]
        if not self._room.is_set() and len(items) < QUEUE_SIZE:
            self._room.set()
        return taken

    def wake(self) -> None:
        """End a `wait` under way (or the next one's first check) without work."""
        self._has_work.set()

    def close(self) -> None:
        self.closed = True
        self._has_work.set()
        self._room.set()


@dataclass(frozen=True, slots=True)
class CheckpointMark:
    """Sent down the writer's stream: checkpoint between the batches before and after it."""

    final: bool


@dataclass(slots=True)
class Counters:
    ingested: int = 0
    appended: int = 0
    duplicates: int = 0
    resets: int = 0
    rejected: int = 0
    batches: int = 0
    checkpoints: int = 0
    last_checkpoint_ms: int = 0
    # For the metrics listener (daemon/metrics.py); written on the event loop only.
    resets_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_by_code: dict[int, int] = field(default_factory=dict)  # error answers, by code
    ingest_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    commit_latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_BOUNDS))

    def rejected_with(self, code: int) -> None:
        self.rejected_by_code[code] = self.rejected_by_code.get(code, 0) + 1

    def counts(self) -> dict[str, int]:
        return {
            "ingested": self.ingested,
            "appended": self.appended,
            "duplicates": self.duplicates,
            "resets": self.resets,
            "batches": self.batches,
        }


class Checkpoints:
    """One checkpoint at a time, in the writer's task group; a failure that may pass is retried
    by the next one before any journal switch."""

    def __init__(self, store: Store, counters: Counters) -> None:
        self.store = store
        self.counters = counters
        self.running = False
        self._done = anyio.Event()
        self._done.set()
        # A checkpoint that failed for a reason that may pass (ENOSPC, EMFILE; never a failed
        # sync): its transcripts and folders, synced again by the next checkpoint before any
        # journal switch (which would reuse the journal file that still covers them).
        self._unfinished: tuple[set[str], set[str]] | None = None

    @property
    def complete(self) -> bool:
        """No failed checkpoint waits for a retry."""
        return self._unfinished is None

    async def settled(self) -> None:
        await self._done.wait()

    async def start(self, tg: TaskGroup, unwritten: Iterable[Batch], *, final: bool) -> None:
        store = self.store
        if store.broken is not None:
            return
        registries = store.dirty_registries(unwritten, final=final)
        dedup = store.dedup.snapshots()
        if self._unfinished is not None:
            # No switch until the failed checkpoint is complete: retry it with today's registries.
            (paths, dirs), self._unfinished = self._unfinished, None
        elif not (store.written_since_switch or store.new_dirs or registries or dedup):
            return
        else:
            try:
                if store.journal.ready:
                    # No I/O (journal invariant 4): the writer does not wait for a thread.
                    paths, dirs = store.switch_journal()
                else:
                    paths, dirs = await anyio.to_thread.run_sync(store.switch_journal)
            except OSError as e:
                self._failed(e, "journal switch", registries, dedup)
                return
        self.running = True
        self._done = anyio.Event()
        tg.start_soon(self._run, paths, dirs, registries, dedup)

    async def _run(
        self, paths: set[str], dirs: set[str], registries: list[Any], dedup: list[Any]
    ) -> None:
        started = time.monotonic()
        try:
            await anyio.to_thread.run_sync(
                self.store.checkpoint_sync, paths, dirs, registries, dedup
            )
        except OSError as e:
            self._failed(e, "checkpoint", registries, dedup, (paths, dirs))
        else:
            self.store.write_error = None
            self.counters.checkpoints += 1
            self.counters.last_checkpoint_ms = now_ms()
            log.debug(
                "store.checkpoint",
                transcripts=len(paths),
                registries=len(registries),
                seconds=round(time.monotonic() - started, 4),
            )
        finally:
            self.running = False
            self._done.set()

    def _failed(
        self,
        e: OSError,
        step: str,
        registries: list[Any],
        dedup: list[Any],
        unfinished: tuple[set[str], set[str]] | None = None,
    ) -> None:
        """A failed sync stops the store (the kernel may have dropped pages: never retried).
        Anything else (ENOSPC or EMFILE writing sessions.json, say) is tried again at the
        next checkpoint: the registries and id snapshots are marked changed again, and the
        journal is not switched until the checkpoint is complete (invariant 2)."""
        store = self.store
        if isinstance(e, SyncFailed):
            store.broken = f"{step} sync failed: {os_reason(e)}"
            log.error("store.checkpoint_failed", error=store.broken)
            return
        for reg, _data in registries:
            reg.changed()
        for agent, _items in dedup:
            store.dedup.changed(agent)
        if unfinished is not None:
            self._unfinished = unfinished
        store.write_error = f"{os_reason(e)} ({step})"
        log.warning("store.checkpoint_deferred", step=step, error=os_reason(e))


class Handler(Protocol[W, P]):
    """What the requests mean (daemon/pipeline.py): the committer calls it on the event loop."""

    def sessions_of(self, item: W) -> Iterable[SessionState]:
        """The existing sessions a request may write to (their tails are read first)."""
        ...

    def held_back(self, items: list[W], begun: int = 0, others: bool = False) -> list[int]:
        """Which of the requests just taken wait for the next batch (indices, in order): those
        that would make the batch begin too many sessions. Each session's order is kept.
        `begun`, `others`: the prepared batch they join begins `begun` sessions already /
        answers requests that begin none."""
        ...

    def prepare(self, items: list[W], batch: Batch) -> P | None:
        """Add the requests' lines to `batch`; None when none of them writes anything."""
        ...

    def extend(self, prepared: P, items: list[W]) -> None:
        """Add more requests to a prepared batch that has not been written yet."""
        ...

    def requests(self, prepared: P) -> list[W]:
        """The requests a prepared batch answers."""
        ...

    async def committed(self, prepared: P, background: TaskGroup) -> None:
        """The batch is durable: run what follows and answer its requests."""
        ...

    def reject(self, items: Iterable[W], err: RequestError) -> None:
        """Answer every request with `err` (nothing of them was stored)."""
        ...


@dataclass(slots=True)
class _Prepared(Generic[P]):
    epoch: int  # the committer's epoch when it was prepared (invariant 2)
    batch: Batch
    prepared: P
    size: int  # requests taken into it (joined ones included)
    # Requests joining it were held back (it begins all the new sessions it may): it takes no
    # more, or each arrival would have the held requests at the queue's front looked at again.
    closed: bool = False
    # Failed already, when the write before it failed (invariant 2). Not failed again when the
    # writer reaches it: its sessions may have been reloaded and advanced by a newer batch since,
    # and unloading them then would have the batch after that read their tails from disk before
    # the newer batch's lines are there (an entry id used twice, a parent skipped).
    voided: bool = False


class Committer(Generic[W, P]):
    """The single task that writes: owns the queue's consumer, the writer and the checkpoints."""

    def __init__(
        self,
        store: Store,
        queue: WorkQueue[W],
        handler: Handler[W, P],
        counters: Counters,
        *,
        checkpoint_interval: float,
    ) -> None:
        self.store = store
        self.queue = queue
        self.handler = handler
        self.counters = counters
        self._checkpoint_interval = checkpoint_interval  # seconds
        self.checkpoints = Checkpoints(store, counters)
        self._epoch = 0  # advanced by a failed write: batches prepared before it are void
        # Batches prepared and not yet taken by the writer, oldest first. When a write fails,
        # their sessions are unloaded at once, not when the writer reaches them: a batch
        # prepared meanwhile under the new epoch must not build on their lines.
        self._unwritten: deque[_Prepared[P]] = deque()
        # A full disk fails every batch: one line per kind of failure per 10 s says so.
        self._failure_lines = Throttle(WRITE_FAILURE_LOG_SECONDS)
        self._failed_batches = 0  # since the last batch written
        self._writer_free = True  # the writer waits for the next batch (invariant 1)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Prepare batches and hand them to the writer, one batch ahead, until the queue is
        closed and empty; then checkpoint once more and return."""
        interval = self._checkpoint_interval
        next_checkpoint = time.monotonic() + interval
        # No buffer: the next batch is prepared while one is written, and waits for the writer
        # there. A batch more in a buffer would be prepared early (small) and add a write's
        # time to the wait of every message that arrives meanwhile.
        send, recv = anyio.create_memory_object_stream[_Prepared[P] | CheckpointMark](0)
        queue = self.queue
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer, recv, tg)
            async with send:
                while True:
                    if not queue:
                        if queue.closed:
                            break
                        await queue.wait(next_checkpoint - time.monotonic())
                    items = self._take()
                    if items:
                        prepared = await self._prepare(items)
                        if prepared is not None:
                            self._unwritten.append(prepared)
                            await self._hand_over(send, prepared)
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
        log.info("store.flushed", **self.counters.counts())

    def _take(self, limit: int = MAX_BATCH, joining: _Prepared[P] | None = None) -> list[W]:
        """The next batch's requests (`joining`: to join that prepared batch, within what it
        may still begin); those the handler holds back go back to the queue's front, ahead of
        what arrived since (no await between: nothing arrives meanwhile)."""
        items = self.queue.take(limit)
        if joining is None:
            held = self.handler.held_back(items)
        else:
            # Joiners are held to what the batch already begins: joining round after round, a
            # cold start's batch grew to 878 new sessions (325 ms of file creation) unbounded.
            begun = len(joining.batch.created)
            held = self.handler.held_back(items, begun, joining.size > begun)
            joining.closed = bool(held)
        if not held:
            return items
        later = set(held)
        self.queue.put_back([items[i] for i in held])
        return [item for i, item in enumerate(items) if i not in later]

    async def _hand_over(
        self, send: MemoryObjectSendStream[_Prepared[P] | CheckpointMark], prepared: _Prepared[P]
    ) -> None:
        """Give `prepared` to the writer once it is free; until then, requests that arrive
        join it (invariant 1), while it is still valid (invariant 2) and not full."""
        queue = self.queue
        while True:
            try:
                send.send_nowait(prepared)
                return
            except anyio.WouldBlock:
                pass
            if self._writer_free:  # done with its batch, on its way to take this one
                await send.send(prepared)
                return
            joins = prepared.epoch == self._epoch and prepared.size < MAX_BATCH
            if queue and joins and not prepared.closed:
                items = self._take(MAX_BATCH - prepared.size, prepared)
                if items and await self._load_tails(items):
                    if prepared.epoch != self._epoch:
                        # A write failed while the tails were read: this batch is void, and
                        # its sessions were unloaded. Joined now, these requests would move
                        # their sessions onto lines never written, and the next batch would
                        # build on them (invariant 2). They go in the next batch instead.
                        self.queue.put_back(items)
                        continue
                    self.handler.extend(prepared.prepared, items)
                    prepared.size += len(items)
                continue
            # Woken by a request or by the writer (`_writer`); no await since the check above.
            await queue.wait(HAND_OVER_WAIT_SECONDS)

    async def _load_tails(self, items: list[W]) -> bool:
        """Read the tails of the sessions `items` write to, where not known (worker thread);
        False when the store cannot take them (each request is then answered with the error)."""
        store = self.store
        handler = self.handler
        if store.broken is not None:
            handler.reject(items, storage_unavailable(store.broken, hint=None))
            return False
        while True:
            unloaded = [st for item in items for st in handler.sessions_of(item) if not st.loaded]
            if not unloaded:
                return True
            # A failed write may unload sessions meanwhile: check again after the read.
            try:
                await anyio.to_thread.run_sync(store.ensure_loaded, unloaded)
            except OSError as e:  # EMFILE, EIO: these requests fail, the committer goes on
                handler.reject(items, storage_unavailable(e, "reading a transcript"))
                return False

    async def _prepare(self, items: list[W]) -> _Prepared[P] | None:
        """Build one batch from queued requests (event loop, after any tail reads it needs)."""
        if not await self._load_tails(items):
            return None
        batch = Batch()
        prepared = self.handler.prepare(items, batch)
        if prepared is None:
            return None
        return _Prepared(self._epoch, batch, prepared, len(items))

    async def _writer(
        self, recv: MemoryObjectReceiveStream[_Prepared[P] | CheckpointMark], tg: TaskGroup
    ) -> None:
        async with recv:
            async for item in recv:
                self._writer_free = False
                try:
                    await self._handle(item, tg)
                finally:
                    # A batch prepared meanwhile stops taking requests in and comes here.
                    self._writer_free = True
                    self.queue.wake()

    async def _handle(self, item: _Prepared[P] | CheckpointMark, tg: TaskGroup) -> None:
        if not isinstance(item, CheckpointMark):
            await self._write(item, tg)
            return
        if item.final:
            await self.checkpoints.settled()
        if not self.checkpoints.running:
            await self.checkpoints.start(tg, (p.batch for p in self._unwritten), final=item.final)

    async def _write(self, item: _Prepared[P], tg: TaskGroup) -> None:
        store = self.store
        handler = self.handler
        batch = item.batch
        if self._unwritten and self._unwritten[0] is item:
            self._unwritten.popleft()
        if item.epoch != self._epoch or store.broken is not None:
            # Prepared on top of a batch that failed: its offsets are wrong; nothing written.
            if not item.voided:
                store.fail(batch)
            reason = store.broken or "an earlier write failed"
            handler.reject(handler.requests(item.prepared), storage_unavailable(reason))
            return
        started = time.monotonic()
        try:
            await anyio.to_thread.run_sync(store.write_batch, batch)
        except OSError as e:
            self._epoch += 1
            store.fail(batch)
            for later in self._unwritten:
                store.fail(later.batch)  # void already (old epoch); its sessions re-read tails
                later.voided = True
            reason = os_reason(e)
            store.write_error = f"{reason} (writing a batch)"  # `status` says so
            self._failed_batches += 1
            requests = handler.requests(item.prepared)
            left_out = self._failure_lines.allow((e.errno, store.broken is not None))
            if left_out is not None:
                log.error(
                    "store.write_failed",
                    error=reason,
                    errno=e.errno,
                    messages=len(requests),
                    broken=store.broken is not None,
                    failuresNotLogged=left_out,
                )
            handler.reject(requests, storage_unavailable(reason))
            return
        synced = time.monotonic()
        if self._failed_batches:
            log.warning("store.write_resumed", failedBatches=self._failed_batches)
            self._failed_batches = 0
        store.write_error = None
        store.apply(batch)
        counters = self.counters
        counters.commit_latency.observe(synced - started)
        counters.batch_sizes.observe(len(handler.requests(item.prepared)))
        counters.batches += 1
        await handler.committed(item.prepared, tg)
        failpoint("append.after_ack")

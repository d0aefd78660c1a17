"""The committer's bookkeeping that knows nothing of sessions' meaning: its counters and the
periodic checkpoint (journal switch, then fsync of what the old journal covered, registries and
id snapshots). The pipeline's writer calls `Checkpoints.start` between two batches.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup

from daemon.core.histogram import BATCH_BOUNDS, LATENCY_BOUNDS, Histogram
from daemon.core.ids import now_ms
from daemon.errors import os_reason
from daemon.store.fileio import SyncFailed
from daemon.store.store import Batch, Store

log = structlog.get_logger("daemon.committer")

QUEUE_SIZE = 16_384  # requests waiting for the committer; beyond it adapters are pushed back
MAX_BATCH = 8_192

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """A bounded queue without a checkpoint per item: adapters wait only when it is full."""

    def __init__(self, abandoned: Callable[[T], None]) -> None:
        self._items: deque[T] = deque()
        self._has_work = anyio.Event()
        self._room = anyio.Event()
        self._room.set()
        self._abandoned = abandoned  # called for an item given up while it waited for room
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, work: T, check_open: Callable[[], None]) -> Awaitable[None] | None:
        """Queue `work`; when full, return an awaitable that queues it once there is room
        (`check_open` raises when the committer closed meanwhile)."""
        if len(self._items) < QUEUE_SIZE:
            self._items.append(work)
            self._has_work.set()
            return None
        self._room = anyio.Event() if self._room.is_set() else self._room
        return self._put_later(work, check_open)

    async def _put_later(self, work: T, check_open: Callable[[], None]) -> None:
        try:
            while len(self._items) >= QUEUE_SIZE:
                await self._room.wait()
                check_open()
        except BaseException:
            self._abandoned(work)
            raise
        self._items.append(work)
        self._has_work.set()

    async def wait(self, seconds: float) -> None:
        """Wait until work arrives, the queue closes, or `seconds` pass."""
        self._has_work = anyio.Event()
        with anyio.move_on_after(max(0.0, seconds)):
            await self._has_work.wait()

    def take(self) -> list[T]:
        """Up to MAX_BATCH items, oldest first."""
        items = self._items
        taken = [items.popleft() for _ in range(min(len(items), MAX_BATCH))]
        if not self._room.is_set() and len(items) < QUEUE_SIZE:
            self._room.set()
        return taken

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

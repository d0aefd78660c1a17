"""The daemon's search task: keeps the index about a second behind the appends and answers
`memory.search`.

It owns one task in the daemon's task group (`run`) and the index's threads: a pass runs on a
thread of its own at lower CPU priority (acknowledging messages goes first when the machine is
busy), one pass at a time; searches run in up to `READERS` worker threads.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.core.protocol import parse_search
from daemon.errors import RequestError
from daemon.search.index import Halted, IndexUnavailable, SearchIndex, index_path, lower_priority
from daemon.search.sources import DEFAULT_AGENTS

log = structlog.get_logger("daemon.search")


def run_in_thread(fn: Callable[[], Any], nice: int) -> Any:
    """Run `fn` on a new thread of lower priority and wait for it (from a worker thread), so that
    the priority of anyio's pooled threads, which also fsync acknowledgements, never changes."""
    box: list[Any] = []

    def main() -> None:
        lower_priority(nice)
        try:
            box.append((True, fn()))
        except BaseException as e:  # handed to the waiting thread, which re-raises it
            box.append((False, e))

    t = threading.Thread(target=main, name="search-pass", daemon=True)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


class Counting(Protocol):
    """What the service needs to know of the pipeline: a number that grows with every batch
    written (Pipeline.counters.batches)."""

    batches: int


POLL_SECONDS = 0.1  # how often the batch counter is looked at
NICE = 10  # passes run this much below the daemon's priority
WRITE_GAP_SECONDS = 0.25  # passes for new writes at most this often (a search does not wait)
SWEEP_SECONDS = 1.0  # a pass at least this often (memory files, moves into archive/)
FRESH_WAIT_SECONDS = 2.0  # a search waits at most this long for the writes before it


class SearchService:
    """Keeps the index about a second behind the appends and answers `memory.search`.

    Owns one task (`run`, in the daemon's task group) and the index's threads: passes run one at
    a time, each on a thread of its own below the daemon's priority; searches in up to
    `READERS` worker threads.
    """

    READERS = 4

    def __init__(
        self,
        state_dir: Path,
        counters: Counting,
        workspace_of: Callable[[str], Path],
        agents: Callable[[], Iterable[str]] = lambda: DEFAULT_AGENTS,
    ) -> None:
        self.index = SearchIndex(index_path(state_dir), state_dir, workspace_of, agents, nice=NICE)
        self.counters = counters
        self.broken: str | None = None
        self._halt = threading.Event()
        self._scope = anyio.CancelScope()
        self._writer = anyio.CapacityLimiter(1)
        self._readers = anyio.CapacityLimiter(self.READERS)
        self._wake = anyio.Event()
        self._pass_done = anyio.Event()
        self._started = 0
        self._done = 0
        self._indexed_batches = -1
        self._ready = anyio.Event()  # the index is open (or known to be unavailable)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the index, then run passes until `stop`. Closes the index when it ends."""
        try:
            with self._scope:
                try:
                    await anyio.to_thread.run_sync(self.index.open, limiter=self._writer)
                except (IndexUnavailable, sqlite3.Error, OSError) as e:
                    self.broken = str(e)
                    log.error("search.unavailable", error=self.broken)
                    task_status.started()
                    return
                self._ready.set()
                task_status.started()
                await self._loop()
        finally:
            if not self._ready.is_set():
                self.broken = self.broken or "the daemon is stopping"
                self._ready.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.index.close, limiter=self._writer)

    async def _loop(self) -> None:
        first = True
        failures = 0
        last = time.monotonic()
        while True:
            if not first:
                await self._wait_for_work(last)
            batches = self.counters.batches
            self._started += 1
            number = self._started
            last = time.monotonic()
            try:
                stats = await anyio.to_thread.run_sync(
                    run_in_thread,
                    functools.partial(self.index.sync, self._halt),
                    NICE,
                    limiter=self._writer,
                )
            except Halted:
                return
            except (sqlite3.Error, OSError) as e:
                failures += 1
                log.error("search.sync_failed", error=str(e), failures=failures)
                await anyio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            failures = 0
            self._indexed_batches = batches
            self._done = number
            self._pass_done.set()
            self._pass_done = anyio.Event()
            if first or stats.seconds > 1.0:
                log.info("search.synced", **stats.to_json())
            elif stats.docs or stats.removed or stats.moved:
                log.debug("search.synced", **stats.to_json())
            first = False

    async def _wait_for_work(self, last: float) -> None:
        """Until there is something to index: new batches (a pass at most every
        WRITE_GAP_SECONDS, so a busy stream of writes is indexed in a few large passes rather
        than many small ones), a search waiting for them, or the periodic sweep."""
        while True:
            since = time.monotonic() - last
            if self.counters.batches != self._indexed_batches and since >= WRITE_GAP_SECONDS:
                return
            if since >= SWEEP_SECONDS:
                return
            with anyio.move_on_after(POLL_SECONDS):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()
                return

    def stop(self) -> None:
        """Stop at the next safe point (a pass in progress commits what it did)."""
        self._halt.set()
        self._scope.cancel()

    async def rpc(self, params: dict[str, Any]) -> dict[str, Any]:
        """`memory.search`: waits (briefly) until what was acknowledged before it is indexed."""
        q = parse_search(params)
        with anyio.move_on_after(FRESH_WAIT_SECONDS):
            await self._ready.wait()  # the socket serves a moment before the index is open
        if self.broken is not None or not self._ready.is_set():
            raise RequestError(f"search is unavailable: {self.broken or 'still opening'}")
        await self._fresh()
        hits = await anyio.to_thread.run_sync(self.index.search, q, limiter=self._readers)
        return {"hits": hits}

    async def _fresh(self) -> None:
        if self.counters.batches == self._indexed_batches:
            return
        target = self._started + 1
        self._wake.set()
        with anyio.move_on_after(FRESH_WAIT_SECONDS):
            while self._done < target:
                await self._pass_done.wait()

"""The daemon's search task: keeps the index about a second behind the appends and answers
`memory.search`.

Passes run in the index worker, a child process of its own (daemon/search/worker.py) at lower
CPU priority: a pass is mostly Python and would otherwise take the GIL from the event loop. This
task (`run`, in the daemon's task group) starts the worker, asks it for one pass at a time, and
starts it again when it dies (`search.worker_exited`) after a pause that grows with each
failure; meanwhile searches answer from the index as it is. Searches run here, in up to
`READERS` worker threads, on read-only connections (daemon/search/query.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.core.keys import normalize_agent_id
from daemon.core.protocol import SearchParams
from daemon.errors import RequestError
from daemon.search.child import (
    Identity,
    IndexWorker,
    PassFailed,
    WorkerExited,
    WorkerUnavailable,
    spawn,
)
from daemon.search.db import index_path
from daemon.search.query import Readers
from daemon.search.sources import DEFAULT_AGENTS

log = structlog.get_logger("daemon.search")


class Counting(Protocol):
    """What the service needs to know of the pipeline: a number that grows with every batch
    written (Pipeline.counters.batches)."""

    batches: int


POLL_SECONDS = 0.1  # how often the batch counter is looked at
NICE = 10  # the index worker runs this much below the daemon's priority
WRITE_GAP_SECONDS = 0.25  # passes for new writes at most this often (a search does not wait)
MAX_TOUCHED = 20_000  # transcripts written since the last pass beyond which it lists the folders
SWEEP_SECONDS = 1.0  # a pass at least this often (memory files, moves into archive/)
FRESH_WAIT_SECONDS = 2.0  # a search waits at most this long for the writes before it
# ... and this long for the index to open at start-up: a worker process starting on a loaded
# machine can take several seconds, and a search right after start-up should be answered, not
# refused; a worker that cannot open the index says so at once (`broken`), so only a slow start
# waits this long. Below the CLI's and the harness's 60 s answer timeout.
OPEN_WAIT_SECONDS = 30.0


def backoff(failures: int) -> float:
    """The pause after the n-th failure in a row (a failed pass, a worker that died)."""
    return min(30.0, 0.5 * 2.0 ** min(failures, 16))


class SearchService:
    """Keeps the index about a second behind the appends and answers `memory.search`.

    Owns one task (`run`, in the daemon's task group) and, through it, the index worker process:
    passes run there one at a time; searches run here in up to `READERS` worker threads.
    """

    READERS = 4

    def __init__(
        self,
        state_dir: Path,
        counters: Counting,
        workspace_of: Callable[[str], Path],
        agents: Callable[[], Iterable[str]] = lambda: DEFAULT_AGENTS,
        touched: Callable[[], set[str]] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.readers = Readers(index_path(state_dir))
        self.workspace_of = workspace_of
        self.agents = agents
        # Takes the transcripts written since it was last called (the store's); None: unknown.
        self.touched = touched
        self.counters = counters
        self.broken: str | None = None
        self.worker_pid: int | None = None
        self.worker_starts = 0
        self._failures = 0  # in a row: failed passes and workers that died
        self._db: Identity | None = None  # the index file the readers read
        self._scope = anyio.CancelScope()
        self._readers = anyio.CapacityLimiter(self.READERS)
        self._wake = anyio.Event()
        self._pass_done = anyio.Event()
        self._started = 0
        self._done = 0
        self._indexed_batches = -1
        self._ready = anyio.Event()  # the index is open (or known to be unavailable)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the worker and have it run passes until `stop` (or cancellation); start it
        again when it dies. The worker is always stopped and reaped, and the readers closed,
        when this ends."""
        # Started at once: searches wait for `_ready` while the worker starts and opens the index.
        task_status.started()
        try:
            with self._scope:
                await self._supervise()
        finally:
            if not self._ready.is_set():
                self.broken = self.broken or "the daemon is stopping"
                self._ready.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.readers.close, limiter=self._readers)

    async def _supervise(self) -> None:
        while True:
            try:
                async with spawn(self.state_dir, NICE) as worker:
                    self.worker_pid = worker.pid
                    self.worker_starts += 1
                    log.info("search.worker_started", pid=worker.pid, starts=self.worker_starts)
                    await self._serve(worker)
            except WorkerUnavailable as e:
                if not self._ready.is_set() and _lack_of_space(str(e)):
                    # A full disk (start-up after a crash: SQLite cannot recover its WAL, and
                    # read-only readers fail on it too): unavailable, saying why, until there
                    # is space; the worker is started again, unlike for a missing FTS5.
                    self.broken = str(e)
                    self._ready.set()
                    self._failures += 1
                    log.error("search.unavailable", error=str(e), failures=self._failures)
                elif not self._ready.is_set():
                    # The index never opened (no FTS5, a folder we cannot write): search is off.
                    self.broken = str(e)
                    log.error("search.unavailable", error=self.broken)
                    self._ready.set()
                    return
                self._failures += 1
                log.error("search.unavailable", error=str(e), failures=self._failures)
            except WorkerExited as e:
                self._failures += 1
                log.error(
                    "search.worker_exited",
                    pid=self.worker_pid,
                    code=e.code,
                    error=str(e),
                    failures=self._failures,
                )
            except OSError as e:  # it could not be started (EMFILE, ENOMEM, ...)
                self._failures += 1
                log.error("search.worker_failed", error=str(e), failures=self._failures)
            finally:
                self.worker_pid = None
            await anyio.sleep(backoff(self._failures))

    async def _serve(self, worker: IndexWorker) -> None:
        """Wait for the worker to open the index, then run passes (returns only by raising)."""
        await self._follow(await worker.opened())
        self.broken = None  # set only while the index could not be opened for lack of space
        self._ready.set()
        first = True
        last = time.monotonic()
        known = False  # whether the worker has seen every write before the paths taken next
        while True:
            if not first:
                await self._wait_for_work(last)
            batches = self.counters.batches
            self._started += 1
            number = self._started
            last = time.monotonic()
            listed = [normalize_agent_id(a) for a in self.agents()]
            workspaces = {a: str(self.workspace_of(a)) for a in listed}
            paths = None if self.touched is None else self.touched()
            # Passes list every folder until one has succeeded with this worker, and when too
            # much was written for a list to be cheaper.
            touched = (
                sorted(paths) if known and paths is not None and len(paths) <= MAX_TOUCHED else None
            )
            known = False
            try:
                done = await worker.run_pass(listed, workspaces, touched)
            except PassFailed as e:
                await self._follow(e.db)
                self._failures += 1
                log.error("search.sync_failed", error=str(e), failures=self._failures)
                await anyio.sleep(backoff(self._failures))
                continue
            await self._follow(done.db)
            known = self.touched is not None
            self._failures = 0
            self._indexed_batches = batches
            self._done = number
            self._pass_done.set()
            self._pass_done = anyio.Event()
            stats = done.stats
            if first or stats.get("seconds", 0) > 1.0:
                log.info("search.synced", **stats)
            elif stats.get("docs") or stats.get("removed") or stats.get("moved"):
                log.debug("search.synced", **stats)
            first = False

    async def _follow(self, db: Identity | None) -> None:
        """The worker reports which file it has open: when that is another file than before
        (the index was deleted, or found unusable and built anew), the readers' connections to
        the old one are retired."""
        if db is None or db == self._db:
            return
        if self._db is not None:
            await anyio.to_thread.run_sync(self.readers.close, limiter=self._readers)
        self._db = db

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
        """Stop at the next safe point: the worker is asked to stop (a pass in progress commits
        what it did, then the worker exits; killed if it takes longer than STOP_SECONDS)."""
        self._scope.cancel()

    def lag_batches(self) -> int:
        """Batches written that the last finished pass may not have seen (all before the first)."""
        return self.counters.batches - max(self._indexed_batches, 0)

    def status(self) -> dict[str, Any]:
        """The `search` section of `status`."""
        if self.broken is not None:
            state = "unavailable"
        elif not self._ready.is_set():
            state = "opening"
        else:
            state = "ok" if self.worker_pid is not None else "restarting"
        return {
            "state": state,
            "workerPid": self.worker_pid,
            "workerStarts": self.worker_starts,
            "passes": self._done,
            "error": self.broken,
        }

    async def rpc(self, q: SearchParams) -> dict[str, Any]:
        """`memory.search`: waits (briefly) until what was acknowledged before it is indexed."""
        with anyio.move_on_after(OPEN_WAIT_SECONDS):
            await self._ready.wait()  # the socket serves a moment before the index is open
        if self.broken is not None or not self._ready.is_set():
            raise RequestError(f"search is unavailable: {self.broken or 'still opening'}")
        await self._fresh()
        hits = await anyio.to_thread.run_sync(self.readers.search, q, limiter=self._readers)
        return {"hits": hits}

    async def _fresh(self) -> None:
        if self.counters.batches == self._indexed_batches:
            return
        target = self._started + 1
        self._wake.set()
        with anyio.move_on_after(FRESH_WAIT_SECONDS):
            while self._done < target:
                await self._pass_done.wait()


def _lack_of_space(error: str) -> bool:
    """Whether the worker could not open the index because the disk is full (SQLITE_FULL or
    ENOSPC): that passes, unlike a missing FTS5 or a folder we may not write."""
    return "disk is full" in error or "No space left" in error

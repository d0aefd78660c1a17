"""The daemon's search task: keeps the index about a second behind the appends and answers
`memory.search`.

Passes run in the index worker, a worker process of the daemon's one mechanism for them
(daemon/workers.py `Pool`, a pool of one, below the daemon's CPU priority): a pass is mostly
Python and would otherwise take the GIL from the event loop. This task (`run`, in the daemon's
task group) hands the worker one pass at a time (daemon/search/worker.py) and, after a failed
pass or a worker that died (`search.worker_exited`), tries again after a pause that grows with
each failure; meanwhile searches answer from the index as it is. Searches run here, in up to
`READERS` threads, on read-only connections (daemon/search/query.py).

The service is also an after-commit stage of the pipeline (`after_commit`): it keeps the lines
each durable batch appended, per transcript (of those one batch wrote since the last pass), and
hands them to the next pass, which indexes them without reading the transcripts again. They are
only a shortcut: the pass reads from the file whatever they do not cover (a transcript written
by several batches, after a worker died, a pass failed, or more than MAX_HANDED_BYTES waited),
from the offset the index recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon.core.keys import normalize_agent_id
from daemon.core.protocol import SearchParams
from daemon.errors import RequestError
from daemon.search.db import index_path
from daemon.search.query import Readers
from daemon.search.sources import DEFAULT_AGENTS
from daemon.search.worker import (
    Identity,
    OpenFailed,
    PassRequest,
    PassResult,
    index_pass,
    open_index,
)
from daemon.workers import Pool, WorkerDied

if TYPE_CHECKING:
    from daemon.store.store import Batch
    from daemon.work import Commit

log = structlog.get_logger("daemon.search")


class Counting(Protocol):
    """What the service needs to know of the pipeline: a number that grows with every batch
    written (Pipeline.counters.batches)."""

    batches: int


class Moving(Protocol):
    """What the service needs to know of the archive moves (daemon/archiving.py `Archiver`): a
    number that grows with every group of moves finished, and a wait for those under way."""

    moved: int

    @property
    def busy(self) -> bool:
        """Whether moves are under way (or queued)."""
        ...

    async def settled(self) -> None:
        """Wait (a bounded while) until the moves under way are done."""
        ...


POLL_SECONDS = 0.1  # how often the batch counter is looked at
NICE = 10  # the index worker runs this much below the daemon's priority
WRITE_GAP_SECONDS = 0.25  # passes for new writes at most this often (a search does not wait)
MAX_TOUCHED = 20_000  # transcripts written since the last pass beyond which it lists the folders
# Appended bytes kept for the next pass; beyond, it reads the files. A burst of new sessions
# (100,000 in a minute) makes passes long: a pass that reads them from the files opens each
# one, which makes the next pass longer still.
MAX_HANDED_BYTES = 32 << 20
SWEEP_SECONDS = 1.0  # a pass at least this often (memory files, moves into archive/)
# While sessions are being moved into archive/ (a reset job's thousands), passes for new writes
# and the sweep wait until the moves are done, up to this long after the last pass: a pass then
# indexed a few hundred moves and closing entries at a time, in a worker that took a third of
# the CPU the job's own workers (the moves, the memory flushes) needed to end the job, and one
# pass after the job does the same work once. A search is served as before: it waits for the
# moves itself (`_fresh`), then wakes the task for the pass that sees them.
HOLD_FOR_MOVES_SECONDS = 10.0
HALT_SECONDS = 5.0  # a pass asked to halt (the daemon stops) is cancelled after this long
FRESH_WAIT_SECONDS = 2.0  # a search waits at most this long for the writes before it
# ... and this long for the index to open at start-up: a worker process starting on a loaded
# machine can take several seconds, and a search right after start-up should be answered, not
# refused; a worker that cannot open the index says so at once (`broken`), so only a slow start
# waits this long. Below the CLI's and the harness's 60 s answer timeout.
OPEN_WAIT_SECONDS = 30.0


def pass_due(since: float, indexed: bool, moving: bool) -> bool:
    """Whether the next pass is due `since` seconds after the last one began, given whether
    every write is `indexed` and whether moves into archive/ are under way (`moving`)."""
    if moving and since < HOLD_FOR_MOVES_SECONDS:
        return False
    return (not indexed and since >= WRITE_GAP_SECONDS) or since >= SWEEP_SECONDS


def backoff(failures: int) -> float:
    """The pause after the n-th failure in a row (a failed pass, a worker that died)."""
    return min(30.0, 0.5 * 2.0 ** min(failures, 16))


@dataclass(slots=True)
class _Run:
    """Lines appended to one transcript in a row since the last pass: file offsets `start` to
    `end`, held in these (start, end) pieces of the service's buffer."""

    start: int
    end: int
    pieces: list[tuple[int, int]] = field(default_factory=list)


class SearchService:
    """Keeps the index about a second behind the appends and answers `memory.search`.

    Owns one task (`run`, in the daemon's task group) and, through it, the index worker's pool:
    passes run there one at a time; searches run here in up to `READERS` threads.
    """

    READERS = 4

    def __init__(
        self,
        state_dir: Path,
        counters: Counting,
        workspace_of: Callable[[str], Path],
        agents: Callable[[], Iterable[str]] = lambda: DEFAULT_AGENTS,
        touched: Callable[[], set[str]] | None = None,
        moves: Moving | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.readers = Readers(index_path(state_dir))
        self.workspace_of = workspace_of
        self.agents = agents
        # Takes the transcripts written since it was last called (the store's); None: unknown.
        self.touched = touched
        self.counters = counters
        # A reset's answer comes before its session's move into archive/: a search waits for
        # the moves under way and for the pass that sees them (None: no moves to wait for).
        self.moves = moves
        self.pool = Pool("search", 1, NICE, on_idle_exit=self._idle_exit)
        self.broken: str | None = None
        self._failures = 0  # in a row: failed passes and workers that died
        self._db: Identity | None = None  # the index file the readers read
        self._scope = anyio.CancelScope()
        self._readers = anyio.CapacityLimiter(self.READERS)
        self._wake = anyio.Event()
        self._pass_done = anyio.Event()
        self._started = 0
        self._done = 0
        self._indexed_batches = -1
        self._indexed_moves = -1
        self._ready = anyio.Event()  # the index is open (or known to be unavailable)
        self._starts_seen = 0
        # What the batches appended since the last pass was asked for (`after_commit`): their
        # bytes in one buffer (copied: holding on to thousands of line objects until the pass
        # scatters them over the heap, which then does not shrink), per transcript in runs.
        self._handed = bytearray()
        self._runs: dict[str, _Run] = {}
        self._reread: set[str] = set()  # transcripts the next pass reads from their files
        self._overflow = False  # more than MAX_HANDED_BYTES waited: the next pass reads files

    @property
    def worker_pid(self) -> int | None:
        pids = self.pool.pids
        return pids[0] if pids else None

    @property
    def worker_starts(self) -> int:
        return self.pool.started

    # --- the after-commit stage (event loop) ------------------------------------------------

    async def after_commit(self, commit: Commit, background: TaskGroup) -> None:
        """Keep what a durable batch appended, for the next pass (an after-commit stage)."""
        self.note(commit.batch)

    def note(self, batch: Batch) -> None:
        """Keep the lines `batch` appended, per transcript, for the next pass.

        Only for transcripts written by one batch since the last pass: one written again
        before the pass is read from its file instead (from the offset the index recorded),
        and nothing more of it is kept. The copy is worth its cost on the event loop where it
        saves a file read per line or two (100,000 sessions, each written now and then); a
        session written in batch after batch (1,000 busy ones) gives its file several lines
        per read, and copying them cost the loop about 3 us per message."""
        if self._overflow:
            return
        buf, runs, reread = self._handed, self._runs, self._reread
        for st, before, lines in batch.touched.values():
            path = st.rel_path
            if path in reread:
                continue
            if path in runs:  # a second batch before the pass: the pass reads the file
                del runs[path]
                reread.add(path)
                continue
            at = len(buf)
            buf += b"\n".join(lines)
            buf += b"\n"
            size = len(buf) - at
            runs[path] = _Run(before, before + size, [(at, at + size)])
        if len(buf) > MAX_HANDED_BYTES:
            self._drop_handed(overflow=True)

    def _drop_handed(self, *, overflow: bool = False) -> None:
        self._handed = bytearray()
        self._runs = {}
        self._reread = set()
        self._overflow = overflow

    def _take_handed(self) -> tuple[bytes, dict[str, tuple[int, tuple[tuple[int, int], ...]]]]:
        buf, runs = self._handed, self._runs
        self._drop_handed()
        return bytes(buf), {k: (r.start, tuple(r.pieces)) for k, r in runs.items()}

    # --- the task --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Open the index in the worker and have it run passes until `stop` (or cancellation);
        start it again when it dies. The worker is always stopped and reaped, and the readers
        closed, when this ends."""
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
                await self.pool.aclose()
                await anyio.to_thread.run_sync(self.readers.close, limiter=self._readers)

    async def _job(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the worker, halted at a safe point if the daemon stops meanwhile."""
        try:
            return await self.pool.run(fn, *args, halt_seconds=HALT_SECONDS)
        finally:
            if self.pool.started != self._starts_seen:
                self._starts_seen = self.pool.started
                log.info("search.worker_started", pid=self.worker_pid, starts=self.pool.started)

    def _idle_exit(self, pid: int, code: int) -> None:
        """A worker died between passes (its last pass was committed: nothing is lost)."""
        log.error(
            "search.worker_exited",
            pid=pid,
            code=code,
            error=f"the index worker ended while idle (exit code {code})",
            failures=self._failures,
        )

    async def _supervise(self) -> None:
        """Open the index, then run passes; returns only when search cannot work at all."""
        while (opened := await self._open()) != "open":
            if opened == "never":
                return
            await anyio.sleep(backoff(self._failures))
        first = True
        last = time.monotonic()
        known = False  # whether the worker has seen every write before the paths taken next
        while True:
            if not first:
                await self._wait_for_work(last)
            batches, moved = self.counters.batches, self._moved()
            self._started += 1
            number = self._started
            last = time.monotonic()
            listed = [normalize_agent_id(a) for a in self.agents()]
            workspaces = {a: str(self.workspace_of(a)) for a in listed}
            paths = None if self.touched is None else self.touched()
            handed, runs = self._take_handed()
            # Passes list every folder (and read every file they look at from the file) until
            # one has succeeded with this worker, and when too much was written for a list to
            # be cheaper.
            if not (known and paths is not None and len(paths) <= MAX_TOUCHED):
                paths, handed, runs = None, b"", {}
            req = PassRequest(
                str(self.state_dir),
                tuple(listed),
                workspaces,
                None if paths is None else tuple(sorted(paths)),
                handed,
                runs,
            )
            known = False
            done = await self._pass(req)
            if done is None or done.stats is None:
                await anyio.sleep(backoff(self._failures))
                continue
            known = self.touched is not None
            self._failures = 0
            self._indexed_batches = batches
            self._indexed_moves = moved
            self._done = number
            self._pass_done.set()
            self._pass_done = anyio.Event()
            stats = done.stats
            if first or stats.get("seconds", 0) > 1.0:
                log.info("search.synced", **stats)
            elif stats.get("docs") or stats.get("removed") or stats.get("moved"):
                log.debug("search.synced", **stats)
            first = False

    async def _open(self) -> str:
        """Have the worker open the index: "open", "retry" (after a pause), or "never" (no
        FTS5, a folder we cannot write: search is unavailable while the daemon runs)."""
        try:
            db = await self._job(open_index, str(self.state_dir))
        except OpenFailed as e:
            self._failures += 1
            self.broken = str(e)
            log.error("search.unavailable", error=self.broken, failures=self._failures)
            first = not self._ready.is_set()
            self._ready.set()
            # A full disk (start-up after a crash: SQLite cannot recover its WAL, and read-only
            # readers fail on it too) passes: unavailable, saying why, until there is space.
            return "never" if first and not _lack_of_space(str(e)) else "retry"
        except WorkerDied as e:
            self._died(e)
            return "retry"
        except OSError as e:  # it could not be started (EMFILE, ENOMEM, ...)
            self._failures += 1
            log.error("search.worker_failed", error=str(e), failures=self._failures)
            return "retry"
        await self._follow(db)
        self.broken = None  # set only while the index could not be opened for lack of space
        self._ready.set()
        return "open"

    async def _pass(self, req: PassRequest) -> PassResult | None:
        """One pass in the worker; None (or a result without stats) when it failed."""
        try:
            done: PassResult = await self._job(index_pass, req)
        except OpenFailed as e:  # a new worker could not open the index
            self._failures += 1
            log.error("search.unavailable", error=str(e), failures=self._failures)
            return None
        except WorkerDied as e:
            self._died(e)
            return None
        except OSError as e:
            self._failures += 1
            log.error("search.worker_failed", error=str(e), failures=self._failures)
            return None
        await self._follow(done.db)
        if done.error is not None:
            self._failures += 1
            log.error("search.sync_failed", error=done.error, failures=self._failures)
        return done

    def _died(self, e: WorkerDied) -> None:
        self._failures += 1
        log.error(
            "search.worker_exited", pid=e.pid, code=e.code, error=str(e), failures=self._failures
        )

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
            moving = self.moves is not None and self.moves.busy
            if pass_due(time.monotonic() - last, self._indexed(), moving):
                return
            with anyio.move_on_after(POLL_SECONDS):
                await self._wake.wait()
            if self._wake.is_set():
                self._wake = anyio.Event()
                return

    def stop(self) -> None:
        """Stop at the next safe point: a pass in progress is asked to halt (it commits what it
        did; cancelled after HALT_SECONDS), then the worker exits."""
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
            "workerStarts": self.pool.started,
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
        """Wait (a bounded while) until the batches acknowledged before, and the moves into
        archive/ of the sessions they closed, are indexed."""
        if self.moves is not None:
            # As `sessions.archived` does (bounded there): a reset job's moves take seconds.
            await self.moves.settled()
        if self._indexed():
            return
        target = self._started + 1
        self._wake.set()
        with anyio.move_on_after(FRESH_WAIT_SECONDS):
            while self._done < target:
                await self._pass_done.wait()

    def _moved(self) -> int:
        return 0 if self.moves is None else self.moves.moved

    def _indexed(self) -> bool:
        """Whether the last finished pass saw every batch written and every move finished."""
        return (
            self.counters.batches == self._indexed_batches and self._moved() == self._indexed_moves
        )


def _lack_of_space(error: str) -> bool:
    """Whether the worker could not open the index because the disk is full (SQLITE_FULL or
    ENOSPC): that passes, unlike a missing FTS5 or a folder we may not write."""
    return "disk is full" in error or "No space left" in error

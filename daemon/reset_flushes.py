"""The memory flushes of sessions a reset closed (SPEC 4.7, `memoryFlush.onReset`), in groups.

The daily reset closes thousands of sessions at once. Each one's flush reads its archived
transcript and asks the summarizer for notes: Python work on data, so it runs in a worker process
(daemon/compaction_job.py `flush_closed`), RESET_FLUSH_GROUP sessions per call, and the notes of
a group share one append and one sync per memory file (locked meanwhile: store/memoryfile.py).
Up to RESET_FLUSH_WORKERS groups at a time, in a pool of their own below the daemon's priority
and above the other workers': the flushes use what CPU ingest leaves before the background
indexing does, and neither ingest nor threshold compactions queue behind them.
A failed flush (summarizer, I/O, a worker that died) is retried on its own backoff, at most
RESET_FLUSH_ATTEMPTS times; nothing is written for it meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import structlog
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint

from daemon import compaction_job
from daemon.compaction_job import Closed, ClosedDone
from daemon.compaction_state import MAX_BACKOFF_SECONDS, RESET_FLUSH_ATTEMPTS, ResetFlush, why
from daemon.core import tokens
from daemon.core.summarizer_settings import SummarizerSettings
from daemon.memoryflush import MemoryFlusher
from daemon.store.store import Store
from daemon.workers import Pool, WorkerDied

log = structlog.get_logger("daemon.compaction")

# Sessions per group, at most: a group's append and sync of the memory file, and its round trip
# to the worker, are its fixed cost (groups of 250 spent a tenth of a reset job's flush worker
# in the syncs). The first group of a job takes what the first batches closed, so the first
# notes do not wait for a thousand.
RESET_FLUSH_GROUP = 1000
# Transcript bytes a group reads at most (each session counted as what its flush reads: its
# size, at most a context window's worth): a big session goes in a group of its own, and the
# small ones closed with it get their notes without waiting for its summary.
RESET_FLUSH_GROUP_BYTES = 512 * 1024  # less than one context window (800 KB by default)
RESULTS_PER_TURN = 200  # a group's results taken in between two turns of the event loop
RESET_FLUSH_WORKERS = 2  # groups in flight at once, each in a worker process of its own
# Below the daemon (ingest keeps its share of the CPU) but above the other workers (the search
# index, the mirror, compactions): a reset job is done when its notes are written, and at the
# workers' nice 10 they waited for the search index's pass over the sessions the job closed.
RESET_FLUSH_NICE = 5


class ResetFlushes:
    """Queued flushes of closed sessions; the compaction worker starts their groups."""

    def __init__(self, store: Store, flusher: MemoryFlusher, wake: Callable[[], None]) -> None:
        self.store = store
        self.flusher = flusher
        self.wake = wake
        # A process per group in flight, whatever the cores: with one, a big session's group
        # (a context window's worth to summarize) held up every group of small ones behind it.
        self.pool = Pool("memory-flush", RESET_FLUSH_WORKERS, RESET_FLUSH_NICE, idle=True)
        self.queued: dict[str, ResetFlush] = {}  # by session id, oldest first
        self._running = 0  # groups in flight

    def __bool__(self) -> bool:
        return bool(self.queued)

    def add(self, rf: ResetFlush) -> None:
        self.queued[rf.session_id] = rf

    def start_due(self, tg: TaskGroup, now: float, busy: Callable[[str], bool]) -> float | None:
        """Start groups while fewer than RESET_FLUSH_WORKERS run; return the seconds until a
        retry is due. A session whose threshold job is running (`busy`) waits for it: its
        flush first."""
        groups, wait = due_groups(
            self.queued.values(), now, busy, RESET_FLUSH_WORKERS - self._running
        )
        for group in groups:
            self._start(tg, group)
        return wait

    def _start(self, tg: TaskGroup, group: list[ResetFlush]) -> None:
        self._running += 1
        for rf in group:
            rf.running = True
        tg.start_soon(self._run_group, group)

    async def _run_group(self, group: list[ResetFlush]) -> None:
        try:
            folders: dict[str, str] = {}
            # One settings object per summarizer config, shared by the group's items: pickled
            # once (pickle's memo), where a copy per item cost the event loop 27 us a session
            # to send (27 ms a group of a thousand, a stall every message waited for).
            summarizers: dict[SummarizerSettings, SummarizerSettings] = {}
            for rf in group:
                if rf.agent_id not in folders:
                    folders[rf.agent_id] = str(self.flusher.memory_folder(rf.agent_id))
            state_dir = str(self.store.state_dir)
            items = [
                Closed(
                    rf.session_id,
                    rf.session_key,
                    rf.agent_id,
                    f"{state_dir}/{rf.rel_path}",
                    folders[rf.agent_id],
                    self.flusher.covered.get(rf.session_id),
                    _max_read(rf),
                    _shared(summarizers, rf.settings.summarizer.settings()),
                    rf.settings.memoryFlush.prompt,
                )
                for rf in group
            ]
            try:
                results = await self.pool.run(
                    compaction_job.flush_closed, items, self.flusher.local_now()
                )
            except (WorkerDied, OSError) as e:
                reason = why(e)
                results = [ClosedDone(rf.session_id, error=reason) for rf in group]
            for i, (rf, res) in enumerate(zip(group, results, strict=True)):
                if i and i % RESULTS_PER_TURN == 0:
                    await checkpoint()  # other sessions' messages are answered meanwhile
                self._done(rf, res)
            _log_group(results)
        finally:
            for rf in group:
                rf.running = False
            self._running -= 1
            self.wake()

    def _done(self, rf: ResetFlush, res: ClosedDone) -> None:
        if res.error is None:
            self.flusher.covered.pop(rf.session_id, None)
            self.queued.pop(rf.session_id, None)
            if not res.entries:
                log.debug("memory.flush_skipped", sessionId=rf.session_id, reason="nothing new")
                return
            data = {
                "file": res.file,
                "bytes": res.bytes,
                "noReply": res.no_reply,
                "entries": res.entries,
            }
            self.flusher.publish(
                rf.agent_id, rf.session_key, rf.session_id, "reset", data, grouped=True
            )
            return
        rf.attempts += 1
        gave_up = rf.attempts >= RESET_FLUSH_ATTEMPTS
        delay = min(MAX_BACKOFF_SECONDS, rf.settings.retryBaseSeconds * 2.0**rf.attempts)
        log.warning(
            "memory.flush_failed",
            agentId=rf.agent_id,
            sessionKey=rf.session_key,
            sessionId=rf.session_id,
            reason=res.error,
            trigger="reset",
            attempt=rf.attempts,
            gaveUp=gave_up,
            retryInSeconds=None if gave_up else delay,
        )
        if gave_up:
            self.flusher.covered.pop(rf.session_id, None)
            self.queued.pop(rf.session_id, None)
        else:
            rf.retry_at = anyio.current_time() + delay


def _log_group(results: list[ClosedDone]) -> None:
    """One info line for a group's flushes that wrote notes or found nothing to note (each
    one's `memory.flushed` is at debug level: see archiving.py `log_group`). Failures have
    their own warning lines."""
    done = [r for r in results if r.error is None and r.entries]
    if not done:
        return
    log.info(
        "memory.group_flushed",
        reason="reset",
        sessions=len(done),
        noReply=sum(1 for r in done if r.no_reply),
        entries=sum(r.entries for r in done),
        bytes=sum(r.bytes for r in done),
        files=sorted({r.file for r in done if r.file is not None}),
        sessionIds=[r.session_id for r in done],
    )


def _shared(
    seen: dict[SummarizerSettings, SummarizerSettings], s: SummarizerSettings
) -> SummarizerSettings:
    """The equal settings object seen before, else `s` (kept)."""
    return seen.setdefault(s, s)


def _max_read(rf: ResetFlush) -> int:
    """What a flush may read at most: the newest context window's worth (what a model reads)."""
    return rf.settings.contextWindow * tokens.CHARS_PER_TOKEN


def _reads(rf: ResetFlush) -> int:
    """What the flush of `rf` reads: its transcript, at most `_max_read`."""
    return min(rf.size, _max_read(rf))


def due_groups(
    queued: Iterable[ResetFlush], now: float, busy: Callable[[str], bool], slots: int
) -> tuple[list[list[ResetFlush]], float | None]:
    """The groups to start now, at most `slots` of them, in the order the flushes were queued:
    up to RESET_FLUSH_GROUP sessions and RESET_FLUSH_GROUP_BYTES of transcript to read each.
    Also the seconds until a retry is due (None when none waits, or when the slots ran out: a
    group's end wakes the caller). Flushes running, `busy` or waiting for a retry are left."""
    groups: list[list[ResetFlush]] = []
    next_at: float | None = None
    group: list[ResetFlush] = []
    group_bytes = 0
    for rf in queued:
        if len(groups) >= slots:
            return groups, None
        if rf.running or busy(rf.session_id):
            continue  # the job's end wakes the caller
        if rf.retry_at > now:
            next_at = rf.retry_at if next_at is None else min(next_at, rf.retry_at)
            continue
        cost = _reads(rf)
        if group and group_bytes + cost > RESET_FLUSH_GROUP_BYTES:
            groups.append(group)
            group, group_bytes = [], 0
            if len(groups) >= slots:
                return groups, None
        group.append(rf)
        group_bytes += cost
        if len(group) >= RESET_FLUSH_GROUP:
            groups.append(group)
            group, group_bytes = [], 0
    if group and len(groups) < slots:
        groups.append(group)
    return groups, None if next_at is None else max(0.0, next_at - now)

"""Closed sessions move into archive/ after the batch that closed them is durable (SPEC 4.5):
the pipeline's writer hands them here, and the moves run in its task group. Readers find a
session where it is until its move is done; `settled` waits for the moves in flight.

The moves run in calls of up to ARCHIVE_GROUP of the sessions closed so far, at most
ARCHIVE_WORKERS at once: a reset job closes thousands of sessions in many small batches, and a
call over many of them shares its syncs among more sessions; two at once keep moving while the
event loop takes one's results in and sends the next (in one worker process on a machine of
two cores, `workers.half_the_cores`). The calls run in worker processes
(daemon/workers.py): hashing, describing and renaming ten thousand transcripts in a thread of the
daemon held the GIL the event loop needs for a second and a half of a reset job, and every
message waited for it. A worker that dies mid-group leaves each file in one place
(store/archive.py), and start-up indexes what it moved; those sessions are logged as
`archive.failed` meanwhile. Two groups at once never touch the same file: their index lines are
appended with O_APPEND, one write per group.
"""

from __future__ import annotations

from collections import deque

import anyio
import structlog
from anyio.abc import TaskGroup

from daemon.errors import os_reason
from daemon.store import archive
from daemon.store.archive import ArchiveRecord
from daemon.store.store import Archived, Closing, Store
from daemon.workers import Pool, WorkerDied, half_the_cores

log = structlog.get_logger("daemon.pipeline")

ARCHIVE_WAIT_SECONDS = 10.0
# Closed sessions archived per worker call, at most. A group takes what queued while the one
# before it was moved: its syncs (a syncfs, the folders', the index's) are its fixed cost, and
# groups of 256 spent a third of the archive worker's time of a reset job in them.
ARCHIVE_GROUP = 1024
# The moves gate the end of a reset job, so their workers run closer to the daemon's priority
# than the others (daemon/workers.py WORKER_NICE); the daemon keeps the larger share.
ARCHIVE_NICE = 5
ARCHIVE_WORKERS = 2  # groups in flight at once: one moved while the next is sent or taken in


class Archiver:
    def __init__(self, store: Store, *, in_workers: bool = True) -> None:
        """`in_workers=False` moves the groups in a thread of this process instead: for the
        power-loss simulation (tests/test_power_loss.py), whose simulated disk sees only this
        process's system calls."""
        self.store = store
        self.in_workers = in_workers
        # Closed by `aclose`, at the pipeline's end.
        # As many processes as the cores allow, up to one per group in flight: a group that
        # finds its worker busy waits with its request ready, and is sent when the other's
        # answer is in.
        self.pool = Pool("archive", half_the_cores(ARCHIVE_WORKERS), ARCHIVE_NICE, idle=True)
        self._archiving = 0
        # Groups of moves finished (moved or failed), as the pipeline counts batches: the
        # search index's next pass after a change of it sees those moves (search/service.py).
        self.moved = 0
        self._moving: dict[str, anyio.Event] = {}  # session id -> set once its archiving ended
        self._archived = anyio.Event()
        self._archived.set()
        self._queue: deque[tuple[Closing, int]] = deque()  # closed, with its batch's time
        self._draining = 0  # tasks moving what the queue holds

    @property
    def busy(self) -> bool:
        """Whether moves or successor links are under way or queued (the search index holds
        its passes meanwhile: search/service.py HOLD_FOR_MOVES_SECONDS)."""
        return self._archiving > 0

    def archive(self, tg: TaskGroup, closing: list[Closing], now: int) -> None:
        """Queue the sessions a durable batch closed (`now`: the batch's time) for their move,
        and start a task that moves them unless ARCHIVE_WORKERS run already."""
        for c in closing:
            self.store.release_fd(c.state)
            self._moving[c.state.session_id] = anyio.Event()
            self._queue.append((c, now))
        if self._draining < ARCHIVE_WORKERS:
            self._draining += 1
            self._begin()
            tg.start_soon(self._drain)

    def link(self, tg: TaskGroup, linked: list[tuple[Archived, str]]) -> None:
        """Start naming the successors of sessions that ended without one."""
        for a, successor in linked:
            a.successor = successor
        self._begin()
        tg.start_soon(self._link, linked)

    def _begin(self) -> None:
        if self._archiving == 0:
            self._archived = anyio.Event()
        self._archiving += 1

    async def aclose(self) -> None:
        """Stop the archive workers (after the committer's task group, so no move is under way)."""
        await self.pool.aclose()

    async def settled(self) -> None:
        """Wait (a bounded while) until closed sessions are in archive/ with their index lines."""
        with anyio.move_on_after(ARCHIVE_WAIT_SECONDS):
            await self._archived.wait()

    async def _drain(self) -> None:
        """Move what the queue holds, ARCHIVE_GROUP at a time, until it is empty."""
        try:
            while self._queue:
                n = min(len(self._queue), ARCHIVE_GROUP)
                await self._archive_group([self._queue.popleft() for _ in range(n)])
        finally:
            self._draining -= 1
            self._end()

    def _end(self) -> None:
        self._archiving -= 1
        if self._archiving == 0:
            self._archived.set()

    async def _link(self, linked: list[tuple[Archived, str]]) -> None:
        """Name the successor in the index of sessions that ended without one, after their own
        archiving (an index line is appended; the later line for a session wins)."""
        try:
            for a, successor in linked:
                moving = self._moving.get(a.session_id)
                if moving is not None:
                    await moving.wait()
                try:
                    rec = await anyio.to_thread.run_sync(self.store.record_successor, a, successor)
                except OSError as e:
                    log.error(
                        "archive.successor_failed",
                        sessionId=a.session_id,
                        successor=successor,
                        error=os_reason(e),
                    )
                    continue
                if rec is None:
                    log.warning(
                        "archive.successor_not_indexed", sessionId=a.session_id, successor=successor
                    )
                    continue
                self.store.archived_done(rec)
        finally:
            self._end()

    async def _archive_group(self, group: list[tuple[Closing, int]]) -> None:
        """Move one group into archive/ (one worker call: the syncs of its folders and index
        are shared, store/archive.py)."""
        items = [
            archive.ToArchive(
                self.store.state_dir / c.state.rel_path,
                c.state.agent_id,
                c.reason,
                c.state.session_id,
                c.state.session_key,
                c.predecessor,
                c.successor,
                now,
            )
            for c, now in group
        ]
        results: list[ArchiveRecord | OSError] | list[WorkerDied | OSError]
        try:
            # Not cancellable, as the thread call it replaced: a stopping daemon waits for the
            # group instead of leaving moved files without their index lines to start-up.
            if self.in_workers:
                results = await self.pool.run(archive.archive_transcripts, items, cancellable=False)
            else:
                results = await anyio.to_thread.run_sync(
                    archive.archive_transcripts, items, abandon_on_cancel=False
                )
        except (WorkerDied, OSError) as e:
            results = [e] * len(group)
        finally:
            self.moved += 1
            for c, _now in group:
                moved = self._moving.pop(c.state.session_id, None)
                if moved is not None:
                    moved.set()
        archived: list[ArchiveRecord] = []
        # In one go, as the moves' events were set (a successor's link waits on them): a few
        # microseconds a session.
        for (c, _now), rec in zip(group, results, strict=True):
            if not isinstance(rec, ArchiveRecord):
                # The transcript stays where it is with its closing entry (or is in
                # archive/ without its index line): start-up finishes it.
                log.error(
                    "archive.failed",
                    sessionId=c.state.session_id,
                    error=os_reason(rec) if isinstance(rec, OSError) else str(rec),
                )
                continue
            self.store.archived_done(rec)
            archived.append(rec)
            log.debug(
                "session.archived",
                agentId=rec.agentId,
                sessionKey=rec.sessionKey,
                sessionId=rec.sessionId,
                reason=rec.reason,
                messages=rec.messages,
                bytes=rec.bytes,
            )
        if archived:
            log_group(archived)


def log_group(archived: list[ArchiveRecord]) -> None:
    """One info line for a group of moves (each session's own line is at debug level): a reset
    job moves thousands, and the event loop rendered a line for each (three lines a session,
    with the reset's and the flush's, took 0.4 s of it per ten thousand). Their
    `session.reset` lines say which session ended and why."""
    reasons: dict[str, int] = {}
    for rec in archived:
        reasons[rec.reason] = reasons.get(rec.reason, 0) + 1
    log.info(
        "archive.group_moved",
        sessions=len(archived),
        reasons=reasons,
        messages=sum(rec.messages for rec in archived),
        bytes=sum(rec.bytes for rec in archived),
        sessionIds=[rec.sessionId for rec in archived],
    )

"""The backup mirror stage (SPEC 4.5, 6): every transcript line copied, in the background, to
`<path>/<sessionId>/history.jsonl` (the files and their format: daemon/store/backup.py).

The contract (docs/backup.md): an acknowledgement waits for the primary transcript only; the
mirror follows and is synced within about a second (`sync: "ack"` makes the acknowledgement wait
for it too, while the mirror is healthy). The mirror keeps no copy of a batch in memory: it
remembers, per session, how far the transcript is durable and how far it is mirrored, and reads
the bytes in between from the transcript itself (still in the page cache). Its position survives
a crash because it is the last entry id in the mirror file: at start-up every session is located
again (the mirror's last entry id, found in the transcript) and whatever follows is mirrored, so
nothing is missing and nothing doubled. When that entry cannot be found (the transcript was
rebuilt), every line already mirrored is recognised and skipped.

If the mirror's folder is gone (its marker file is missing: an unmounted disk) or a write or sync
fails (ENOSPC, EIO), ingest is not affected: `status` shows the mirror degraded with its lag, the
round is retried with a growing pause, and once the disk is back the mirror catches up.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from daemon import heap
from daemon.core.bucket import parse_target
from daemon.core.exclusions import excluded
from daemon.core.ids import now_ms
from daemon.errors import os_reason
from daemon.remote import RemoteMirror
from daemon.store.archive import MISSING_TRANSCRIPT
from daemon.store.backup import (
    MAX_JOBS_PER_ROUND,
    Job,
    MirrorWriter,
    Outcome,
    ensure_root,
    state_record,
    write_states,
)
from daemon.workers import Pool, WorkerDied

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.store.store import Batch, Store
    from daemon.work import Commit

log = structlog.get_logger("daemon.backup")

ROUND_INTERVAL = 0.9  # async mode: a round gathers what arrived in this long; synced within ~1 s
# While messages arrive, a round mirrors at most MAX_JOBS_PER_ROUND sessions (a burst of new
# sessions is mirrored about 280 a second, the rest waits: the mirror's CPU stays off the
# acknowledgements' way). Once no batch came for a round's interval, rounds of IDLE_JOBS follow
# one another without a pause until the backlog is gone: 100,000 sessions a burst created were
# mirrored in 397 s at the busy pace, in what their writes cost (about 20 s) at this one.
IDLE_JOBS = 4096
IDLE_BYTES = 64 << 20  # ... and of at most about this many transcript bytes (a message that
# arrives meanwhile waits for the round to end)
ACK_WAIT_SECONDS = 5.0  # sync "ack": the longest an answer waits for the mirror
BACKOFF_MAX = 30.0
CLOSE_GRACE = 0.5  # after close(): the committer's last batches arrive within this
CLOSE_MAX = 10.0


def backup_root(config: Config, state_dir: Path) -> Path:
    """`sessions.backup.path`, else `<stateDir>/backup`; relative paths are in the state folder."""
    p = config.sessions.backup.path
    if not p:
        return state_dir / "backup"
    path = Path(p).expanduser()
    return path if path.is_absolute() else state_dir / path


# ---------------------------------------------------------------------------------------------
# The mirror stage of the daemon


@dataclass(slots=True)
class Track:
    """One session the mirror follows: how far its transcript is durable, how far mirrored."""

    agent_id: str
    session_key: str | None
    session_id: str
    channel: str | None
    end: int | None  # durable transcript bytes; None: the whole file (nothing writes to it)
    done: int | None = None  # mirrored and synced up to; None until located
    behind_since: float | None = None  # monotonic time since it has been behind
    closed: bool = False  # archived: once caught up, it is dropped

    def caught_up(self) -> bool:
        return self.done is not None and self.end is not None and self.done >= self.end


@dataclass(slots=True)
class MirrorCounters:
    rounds: int = 0
    records: int = 0
    failures: int = 0
    last_sync_ms: int = 0
    worker_deaths: int = 0  # each one means a new worker process for the next round


# ---------------------------------------------------------------------------------------------
# The worker process that writes rounds


def run_round(writer: MirrorWriter, jobs: list[Job]) -> list[Outcome]:
    """One round, in the mirror's worker process (daemon/workers.py): turning each transcript
    line into a record is Python work, which in the daemon would hold the GIL its event loop
    needs to acknowledge messages. MirrorWriter keeps no state between rounds. The worker's log
    events come back with the outcomes and are logged by the daemon."""
    try:
        return writer.run(jobs)
    finally:
        heap.between_jobs()


class Mirror:
    """The mirror stage: the committer calls `committed` after each durable batch; `run` (a task
    in the daemon's task group) writes and syncs the mirror in a worker process (`run_round`).

    State is read and changed on the event loop only; the worker gets immutable jobs and
    returns outcomes. `lock` is held for each round, so the retention sweep can compress a
    finished mirror without racing a write to it.
    """

    def __init__(self, store: Store, config: Config, state_dir: Path) -> None:
        bc = config.sessions.backup
        self.store = store
        self.enabled = bc.enabled
        self.ack = bc.sync == "ack"
        self.patterns = bc.exclude_patterns
        self.root = backup_root(config, state_dir)
        self.writer = MirrorWriter(self.root)
        self.tracks: dict[str, Track] = {}
        # The tracks that are behind, so a round costs what it mirrors, not one look at every
        # session there is: those with new batches in the order they fell behind (a dict keeps
        # insertion order, and `behind_since` only grows), then the start-up catch-up.
        # `_settle` keeps them true after every change to a track.
        self._fresh: dict[str, Track] = {}
        self._catchup: dict[str, Track] = {}
        self.error: str | None = None
        self.counters = MirrorCounters()
        self.lock = anyio.Lock()
        # One worker process, the same mechanism as every other (daemon/workers.py).
        self.pool = Pool("mirror", 1)
        self._wake = anyio.Event()
        self._round_done = anyio.Event()
        self._closing = False
        self._closed = anyio.Event()
        self._closing_at = 0.0
        self._last_commit = 0.0
        self._stopped = False
        self._excluded: dict[str, bool] = {}
        # Archived sessions whose state record (`<backup>/<id>/state.json`) may still differ:
        # all of them at start-up, then each session a batch closes. Those whose mirror is
        # still behind wait in `_unstated_busy` until it has caught up (`_settle`, `_drop`),
        # so a round looks at what changed, not at every archived session still behind.
        self._unstated: set[str] = set()
        self._unstated_busy: set[str] = set()
        # The object-storage copy (daemon/remote.py): it follows the local mirror.
        self.remote = RemoteMirror(self.root, parse_target(bc.target)) if bc.target else None
        self._remote_stop = anyio.Event()

    # --- the committer's side (event loop) ----------------------------------------------------

    async def after_commit(self, commit: Commit, background: TaskGroup) -> None:
        """Stage 5 (SPEC 4.5, an after-commit stage of the pipeline)."""
        await self.committed(commit.batch)

    async def committed(self, batch: Batch) -> None:
        """Note what a durable batch added; with sync "ack", wait (bounded) until it is mirrored."""
        if not self.enabled:
            return
        now = time.monotonic()
        self._last_commit = now
        targets: list[tuple[Track, int]] = []
        created = {id(st) for st in batch.created}
        for st, before, lines in batch.touched.values():
            if self._is_excluded(st.session_key):
                continue
            end = before + sum(map(len, lines)) + len(lines)  # each line and its newline
            t = self.tracks.get(st.session_id)
            if t is None:
                t = self.tracks[st.session_id] = Track(
                    st.agent_id,
                    st.session_key,
                    st.session_id,
                    _channel(st.entry),
                    end,
                    # A new session's mirror starts with its header; others are located first.
                    done=0 if before == 0 and id(st) in created else None,
                )
            elif t.end is None or end > t.end:
                t.end = end
            if t.behind_since is None:
                # Newly behind (a track behind since earlier is in `_fresh` already).
                t.behind_since = now
                self._settle(t)
            targets.append((t, end))
        for c in batch.closing:
            if not self._is_excluded(c.state.session_key):
                self._unstated.add(c.state.session_id)
            t = self.tracks.get(c.state.session_id)
            if t is not None:
                t.closed = True
        if not targets:
            return
        self._wake.set()
        if not self.ack:
            return
        with anyio.move_on_after(ACK_WAIT_SECONDS):
            while self.error is None and not self._stopped:
                if all(t.done is not None and t.done >= end for t, end in targets):
                    return
                await self._round_done.wait()

    def _is_excluded(self, key: str) -> bool:
        if not self.patterns:
            return False  # no cache to fill (and clear) with 100,000 keys
        hit = self._excluded.get(key)
        if hit is None:
            if len(self._excluded) > 65_536:
                self._excluded.clear()
            hit = self._excluded[key] = excluded(key, self.patterns)
        return hit

    def close(self) -> None:
        """Stop once what the committer hands over in its last moments is mirrored (bounded)."""
        self._closing = True
        self._closed.set()
        self._closing_at = time.monotonic()
        self._wake.set()

    # --- the task -----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Prime the tracks (before the committer starts, so file sizes are durable sizes), then
        mirror rounds until closed. Never raises for disk trouble: it reports and retries."""
        if not self.enabled:
            task_status.started()
            return
        try:
            await anyio.to_thread.run_sync(ensure_root, self.root)
        except OSError as e:
            self._fail(e)
        await self._prime()
        task_status.started()
        log.info(
            "backup.started",
            path=str(self.root),
            sync="ack" if self.ack else "async",
            sessions=len(self.tracks),
        )
        async with anyio.create_task_group() as tg:
            if self.remote is not None:
                tg.start_soon(self.remote.run, self._remote_stop)
            try:
                await self._loop()
            finally:
                # After the local mirror's last round, so the bucket gets that too.
                self._remote_stop.set()

    async def _loop(self) -> None:
        backoff = 0.0
        try:
            while True:
                jobs = self._jobs()
                if self._closing and (
                    time.monotonic() - self._closing_at > CLOSE_MAX
                    or (
                        (not jobs or self.error is not None)
                        and time.monotonic() - self._last_commit > CLOSE_GRACE
                    )
                ):
                    await self._write_states()
                    break
                if not jobs:
                    await self._write_states()
                    self._wake = anyio.Event()
                    # An archive still being moved gets its state record a moment later.
                    wait = ROUND_INTERVAL if self._unstated else None
                    with anyio.move_on_after(CLOSE_GRACE if self._closing else wait):
                        await self._wake.wait()
                    continue
                if backoff:
                    with anyio.move_on_after(backoff):
                        while not self._closing:
                            self._wake = anyio.Event()
                            await self._wake.wait()
                ok = await self._round(jobs)
                if ok:
                    await self._write_states()
                backoff = 0.0 if ok else min(BACKOFF_MAX, max(1.0, backoff * 2))
                if ok and not self.ack and not self._closing and not self._idle():
                    with anyio.move_on_after(ROUND_INTERVAL):
                        await self._closed.wait()
        finally:
            self._stopped = True
            self._signal_round()
            await self.pool.aclose()
        log.info("backup.stopped", behind=len(self._fresh) + len(self._catchup))

    async def _prime(self) -> None:
        """Follow every session: active ones up to their size now, archived ones to their end."""
        store = self.store
        active = [
            (st.session_id, st.agent_id, st.session_key, _channel(st.entry), st.rel_path)
            for st in store.by_id.values()
            if not self._is_excluded(st.session_key)
        ]
        state_dir = store.state_dir

        def sizes() -> list[int]:
            out = []
            for _sid, _a, _k, _c, rel in active:
                try:
                    out.append(os.stat(state_dir / rel).st_size)
                except OSError:
                    out.append(0)
            return out

        for (sid, agent, key, channel, _rel), size in zip(
            active, await anyio.to_thread.run_sync(sizes), strict=True
        ):
            t = self.tracks[sid] = Track(agent, key, sid, channel, size)
            self._settle(t)
        for sid, a in store.archived_by_id.items():
            if sid in self.tracks or (a.session_key and self._is_excluded(a.session_key)):
                continue
            if a.reason == MISSING_TRANSCRIPT:
                continue  # no transcript to mirror
            t = self.tracks[sid] = Track(a.agent_id, a.session_key, sid, None, None, closed=True)
            self._settle(t)
        self._unstated.update(
            sid
            for sid, a in store.archived_by_id.items()
            if not (a.session_key and self._is_excluded(a.session_key))
        )

    async def _write_states(self) -> None:
        """Record the state of archived sessions whose mirror is complete (the mirror holds
        their history, then their state). One whose archiving is still under way waits."""
        if not self._unstated or self.error is not None:
            return
        ready: dict[str, dict[str, Any]] = {}
        for sid in list(self._unstated):
            a = self.store.archived_by_id.get(sid)
            if a is None:
                if sid in self.store.by_id:  # the closing batch failed: active again
                    self._unstated.discard(sid)
                continue
            if self.busy(sid):
                self._unstated.discard(sid)
                self._unstated_busy.add(sid)  # looked at again once caught up
            elif a.record is not None:  # else its archiving is still under way
                ready[sid] = state_record(a.record.to_json())
        if not ready:
            return
        try:
            async with self.lock:
                await anyio.to_thread.run_sync(write_states, self.root, ready)
        except OSError as e:
            self._fail(e)
            return
        self._unstated.difference_update(ready)

    def _paths(self, sid: str) -> tuple[Path, ...]:
        store = self.store
        out = []
        st = store.by_id.get(sid)
        if st is not None:
            out.append(store.state_dir / st.rel_path)
        a = store.archived_by_id.get(sid)
        if a is not None:
            out.append(store.state_dir / a.rel_path)
        return tuple(out)

    def _settle(self, t: Track) -> None:
        """File a track under the backlog it belongs to after a change (O(1))."""
        sid = t.session_id
        if t.caught_up():
            self._fresh.pop(sid, None)
            self._catchup.pop(sid, None)
            self._stated_later(sid)
        elif t.behind_since is not None:
            self._catchup.pop(sid, None)
            self._fresh.setdefault(sid, t)
        else:
            self._fresh.pop(sid, None)
            self._catchup.setdefault(sid, t)

    def _drop(self, sid: str) -> None:
        self.tracks.pop(sid, None)
        self._fresh.pop(sid, None)
        self._catchup.pop(sid, None)
        self._stated_later(sid)

    def _stated_later(self, sid: str) -> None:
        """A session's mirror caught up: its state record is written at the next chance."""
        if sid in self._unstated_busy:
            self._unstated_busy.discard(sid)
            self._unstated.add(sid)

    def _idle(self) -> bool:
        """No batch for a round's interval: the backlog is caught up at full pace."""
        return time.monotonic() - self._last_commit > ROUND_INTERVAL

    def _jobs(self) -> list[Job]:
        """The next round's jobs: sessions with new batches first, oldest first, then the
        start-up catch-up; costs the jobs it returns, whatever the number of sessions."""
        behind = itertools.chain(self._fresh.values(), self._catchup.values())
        idle = self._idle()
        budget = IDLE_BYTES
        out: list[Job] = []
        for t in itertools.islice(behind, IDLE_JOBS if idle else MAX_JOBS_PER_ROUND):
            if idle and out and budget <= 0:
                break
            paths = self._paths(t.session_id)
            if paths:
                out.append(
                    Job(t.session_id, t.agent_id, t.session_key, t.channel, paths, t.done, t.end)
                )
                if t.end is not None and t.done is not None:
                    budget -= t.end - t.done
                else:
                    budget -= 1 << 20  # to be located, or up to the end of the file: a guess
        return out

    async def _round(self, jobs: list[Job]) -> bool:
        try:
            async with self.lock:
                # Not cancellable: a round always completes (or fails) as a whole.
                outcomes = await self.pool.run(run_round, self.writer, jobs, cancellable=False)
        except WorkerDied as e:
            # The worker died mid-round (killed): as for a failed write, the sessions are
            # located again; the next round starts a new worker.
            self.counters.worker_deaths += 1
            self._round_failed(jobs, OSError(errno.EIO, f"the mirror's worker process died: {e}"))
            return False
        except OSError as e:
            self._round_failed(jobs, e)
            return False
        if self.error is not None:
            log.warning("backup.recovered", path=str(self.root), was=self.error)
            self.error = None
        c = self.counters
        c.rounds += 1
        c.last_sync_ms = now_ms()
        for o in outcomes:
            c.records += o.records
            if o.kept is not None:
                # A hole a power cut left in the mirror, refilled from the transcript; the
                # damaged file is kept beside it (daemon/store/backup.py, refill_holes).
                log.warning(
                    "backup.hole_refilled", sessionId=o.session_id, records=o.refilled, kept=o.kept
                )
            t = self.tracks.get(o.session_id)
            if t is None:
                continue
            if o.missing:
                if t.closed or not t.end:
                    # An archive whose file is gone, or a registry entry whose transcript is
                    # (its header is written again with the next message): nothing to follow.
                    log.warning("backup.transcript_missing", sessionId=o.session_id)
                    t.done = t.end = t.end or 0
                    t.behind_since = None
                    if t.closed:
                        self._drop(o.session_id)
                    self._settle(t)
                continue
            t.done = o.done
            if t.end is None and o.done is not None and o.done >= o.end:
                t.end = o.end  # a finished transcript: caught up to its whole length
            if t.caught_up():
                t.behind_since = None
                if t.closed:
                    self._drop(o.session_id)
            self._settle(t)
        self._signal_round()
        return True

    def _signal_round(self) -> None:
        self._round_done.set()
        self._round_done = anyio.Event()

    def _round_failed(self, jobs: list[Job], e: OSError) -> None:
        # A failed round may have left a record half-written: locate those sessions again.
        for j in jobs:
            t = self.tracks.get(j.session_id)
            if t is not None:
                t.done = None
                self._settle(t)
        self._fail(e)
        self._signal_round()

    def _fail(self, e: Exception) -> None:
        reason = os_reason(e)
        self.counters.failures += 1
        if self.error != reason:
            log.error("backup.degraded", path=str(self.root), error=reason)
        self.error = reason

    # --- status -------------------------------------------------------------------------------

    def busy(self, session_id: str) -> bool:
        """Whether the mirror still has work for this session (the sweep leaves it alone)."""
        t = self.tracks.get(session_id)
        return t is not None and not t.caught_up()

    def status(self) -> dict[str, Any]:
        """For `status`: state ok | catching-up | degraded, with the lag."""
        if not self.enabled:
            return {"enabled": False, "state": "disabled"}
        now = time.monotonic()
        behind = [*self._fresh.values(), *self._catchup.values()]
        since = [t.behind_since for t in behind if t.behind_since is not None]
        lag_s = now - min(since) if since else 0.0
        lag_bytes = sum(t.end - (t.done or 0) for t in behind if t.end is not None)
        if self.error is not None:
            state = "degraded"
        elif behind and (lag_s > 2.0 or any(t.behind_since is None for t in behind)):
            state = "catching-up"
        else:
            state = "ok"
        c = self.counters
        return {
            "enabled": True,
            "path": str(self.root),
            "sync": "ack" if self.ack else "async",
            "state": state,
            "error": self.error,
            "lagSessions": len(behind),
            "lagBytes": lag_bytes,
            "lagSeconds": round(lag_s, 3),
            "records": c.records,
            "lastSyncAt": c.last_sync_ms or None,
            **({"remote": self.remote.status()} if self.remote is not None else {}),
        }


def _channel(entry: Mapping[str, Any]) -> str | None:
    for k in ("lastChannel", "channel"):
        v = entry.get(k)
        if isinstance(v, str):
            return v
    return None

"""Scheduled jobs: the daily reset at each configured atHour, and expiry every minute.

apscheduler 3.x (AsyncIOScheduler) runs inside our event loop and only decides *when*: each job
is a coroutine that hands its name to our task (a memory stream), so the work itself runs inside
the daemon's task group, under structured concurrency, one job at a time.

Both jobs apply the same pure policy (`daemon.core.policy`) to every active session: the daily
job archives sessions whose day has ended at atHour; the minute job catches idle expiry and the
daily resets that were deferred while a conversation was in progress. A session that is not
stale is never touched, so a job that fires twice (or a DST quirk of the trigger) cannot reset
anything twice. The time of each job's last run is kept in `<stateDir>/scheduler.json`; a daily
run missed while the daemon was down runs once at start-up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.adoption import adopt, record
from daemon.core.ids import now_ms
from daemon.core.policy import all_at_hours, daily_boundary
from daemon.errors import NotFound, RequestError, os_reason
from daemon.pipeline import Pipeline
from daemon.retention import Retention
from daemon.store.fsutil import atomic_write
from daemon.workers import Pool

log = structlog.get_logger("daemon.scheduler")

EXPIRY = "expiry"
RETENTION = "retention"  # hourly; the sweep itself (daemon/retention.py) is bounded per run


RESET_GROUP = 100  # resets a job queues at once (see `Scheduler._reset_all`) ...
RESET_GROUP_MAX = 1000  # ... up to this many while batches are slow anyway
RESET_GROUP_SECONDS = 0.1  # a group answered within this keeps RESET_GROUP
RESET_GROUPS_IN_FLIGHT = 2  # groups queued and not yet answered
STALE_CHUNK = 500  # sessions judged between two turns of the event loop
WARM_FROM = RESET_GROUP  # resets in a job from which their worker pools are started up front


def daily_job(hour: int) -> str:
    return f"daily@{hour:02d}"


class _Tally:
    """What a job's resets came to: archived sessions by reason, and failures."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.reasons: dict[str, int] = {}
        self.failed = 0

    def count(self, key: str, reason: str, res: dict[str, Any] | RequestError) -> None:
        if isinstance(res, NotFound):
            return  # reset by a message meanwhile: nothing left to expire
        if isinstance(res, RequestError):
            self.failed += 1
            log.warning("job.reset_failed", job=self.job, sessionKey=key, error=res.message)
        elif not res.get("skipped"):
            r = str(res.get("reason") or reason)
            self.reasons[r] = self.reasons.get(r, 0) + 1


def group_size(took: float) -> int:
    """How many resets the job queues next, given the seconds its latest group took to be
    answered: RESET_GROUP while groups are answered within RESET_GROUP_SECONDS; more, in
    proportion, while they take longer, up to RESET_GROUP_MAX. Slow groups mean batches wait
    for a loaded disk's sync or a busy CPU, which every message waits for as well: a bigger
    group then adds little to a batch's time, and the job, which holds the disk and the CPU
    too, ends sooner."""
    if took <= RESET_GROUP_SECONDS:
        return RESET_GROUP
    return min(RESET_GROUP_MAX, round(RESET_GROUP * took / RESET_GROUP_SECONDS))


class Scheduler:
    """Owns the apscheduler instance and the task that runs its jobs."""

    def __init__(
        self,
        pipeline: Pipeline,
        state_dir: Path,
        retention: Retention | None = None,
        warm: Sequence[tuple[Pool, str]] = (),
    ) -> None:
        """`warm`: the worker pools a reset job's archiving and memory flushes run in, with the
        module of their jobs; started when a job begins that resets WARM_FROM sessions or more."""
        self.pipeline = pipeline
        self.warm = warm
        self.path = state_dir / "scheduler.json"
        self.last_runs: dict[str, int] = {}
        self.retention = retention  # the hourly retention sweep (None: not scheduled)
        self.adopted_at = 0  # no scheduled reset for a cause before this (daemon/adoption.py)

    def _load(self) -> None:
        try:
            doc = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        runs = doc.get("lastRuns") if isinstance(doc, dict) else None
        if isinstance(runs, dict):
            self.last_runs = {k: v for k, v in runs.items() if isinstance(v, int)}

    def _save(self) -> None:
        atomic_write(self.path, orjson.dumps({"lastRuns": self.last_runs}))

    def missed(self, now: int) -> list[str]:
        """Daily jobs whose latest boundary passed while the daemon was down."""
        tz = self.pipeline.policies.tz
        out = []
        for hour in sorted(all_at_hours(self.pipeline.config.session.reset_rules())):
            name = daily_job(hour)
            last = self.last_runs.get(name)
            if last is not None and last < daily_boundary(now, hour, tz) <= now:
                out.append(name)
        return out

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await anyio.to_thread.run_sync(self._load)
        self.adopted_at, marker = adopt(self.pipeline.store, self.pipeline.policies, now_ms())
        if marker is not None:
            await anyio.to_thread.run_sync(record, self.path.parent, marker)
        send, recv = anyio.create_memory_object_stream[str](64)
        tz = self.pipeline.policies.tz

        async def fire(name: str) -> None:
            # Runs as apscheduler's own task: it only hands the job over, and never blocks.
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                send.send_nowait(name)

        sched = AsyncIOScheduler(timezone=tz)
        for hour in sorted(all_at_hours(self.pipeline.config.session.reset_rules())):
            sched.add_job(
                fire,
                CronTrigger(hour=hour, minute=0, timezone=tz),
                args=[daily_job(hour)],
                id=daily_job(hour),
                coalesce=True,
                misfire_grace_time=3600,
            )
        sched.add_job(
            fire, IntervalTrigger(minutes=1, timezone=tz), args=[EXPIRY], id=EXPIRY, coalesce=True
        )
        if self.retention is not None:
            hourly = IntervalTrigger(hours=1, timezone=tz)
            sched.add_job(fire, hourly, args=[RETENTION], id=RETENTION, coalesce=True)
        sched.start()
        try:
            # The retention sweep also runs once at start-up when its last run is over an hour ago.
            due = (
                self.retention is not None
                and self.last_runs.get(RETENTION, 0) < now_ms() - 3_600_000
            )
            for name in [*self.missed(now_ms()), EXPIRY, *([RETENTION] if due else [])]:
                send.send_nowait(name)
            task_status.started()
            async with recv:
                async for name in recv:
                    await self.run_job(name)
        finally:
            sched.shutdown(wait=False)
            send.close()

    async def _run_retention(self, name: str) -> dict[str, Any]:
        assert self.retention is not None
        info = await self.retention.run_job(name)
        self.last_runs[name] = now_ms()
        try:
            await anyio.to_thread.run_sync(self._save)
        except OSError as e:
            log.error("job.state_not_saved", job=name, error=os_reason(e))
        self.pipeline.events.publish("job.run", info)
        return info

    async def _stale(self, now: int) -> tuple[int, list[tuple[str, str, str]]]:
        """(sessions checked, (agentId, key, reason) of each stale one), judged STALE_CHUNK at a
        time with a turn of the event loop between: the minute job judges every session, and
        ten thousand judged at once held the loop a quarter of a second, every minute."""
        policies = self.pipeline.policies
        checked = 0
        stale: list[tuple[str, str, str]] = []
        for agent_id, reg in list(self.pipeline.store.agents.items()):
            states = list(reg.sessions.values())
            for start in range(0, len(states), STALE_CHUNK):
                if checked:
                    await checkpoint()
                for st in states[start : start + STALE_CHUNK]:
                    checked += 1
                    verdict = policies.staleness(st, now, self.adopted_at)
                    if verdict.stale and verdict.reason is not None:
                        stale.append((agent_id, st.session_key, verdict.reason))
        return checked, stale

    async def _reset_all(self, stale: list[tuple[str, str, str]], now: int, tally: _Tally) -> None:
        """Queue the resets in groups (`group_size`: RESET_GROUP on a machine that keeps up),
        at most RESET_GROUPS_IN_FLIGHT groups queued and not yet answered: the committer always
        finds the next group waiting, and none of its batches holds more than a few groups, so
        a batch of the job takes milliseconds and the messages of other sessions prepared with
        it are answered as soon as usual. (Groups of a thousand made batches of a thousand
        resets, and every message that arrived meanwhile waited a third of a second for one.)
        Each group's transcript tails are read in a worker thread before it is queued, while
        the groups before it are committed."""
        in_flight = anyio.Semaphore(RESET_GROUPS_IN_FLIGHT)
        all_done = anyio.Event()
        outstanding = len(stale)
        took = 0.0  # seconds the latest group took from its queueing to its last answer

        def answered(key: str, reason: str, group: list[float]) -> Callable[[Any], None]:
            def reply(res: dict[str, Any] | RequestError) -> None:
                nonlocal outstanding, took
                tally.count(key, reason, res)
                group[0] -= 1
                if group[0] == 0:
                    took = time.monotonic() - group[1]
                    in_flight.release()
                outstanding -= 1
                if outstanding == 0:
                    all_done.set()

            return reply

        start = 0
        while start < len(stale):
            group = stale[start : start + group_size(took)]
            start += len(group)
            await self._load_tails(group)
            await in_flight.acquire()
            left = [float(len(group)), time.monotonic()]
            for agent_id, key, reason in group:
                reply = answered(key, reason, left)
                try:
                    waiter = self.pipeline.reset(
                        agent_id, key, reason, reply, only_if_stale=True, start_new=False, at=now
                    )
                    if waiter is not None:
                        await waiter
                except RequestError as e:
                    reply(e)
        await all_done.wait()

    async def _load_tails(self, group: list[tuple[str, str, str]]) -> None:
        """Read the tails of the group's sessions not yet read since start-up (a worker thread),
        so that the committer does not wait for them with the group in hand."""
        store = self.pipeline.store
        states = []
        for agent_id, key, _reason in group:
            reg = store.agents.get(agent_id)
            st = None if reg is None else reg.sessions.get(key)
            if st is not None and not st.loaded:
                states.append(st)
        if not states:
            return
        try:
            tails = await anyio.to_thread.run_sync(store.read_tails, states)
        except OSError:
            return  # the committer reads them itself, and answers for what fails then
        store.set_tails(states, tails)

    async def run_job(self, name: str, at: int | None = None) -> dict[str, Any]:
        """Archive every session that is stale at `at` (default now); log and persist the run."""
        if name == RETENTION and self.retention is not None:
            return await self._run_retention(name)
        started = time.monotonic()
        now = at if at is not None else now_ms()
        checked, stale = await self._stale(now)
        tally = _Tally(name)
        if stale:
            async with anyio.create_task_group() as tg:
                if len(stale) >= WARM_FROM:
                    # Their workers start (and import) while the first groups are committed,
                    # not after: the first notes came a second after the job's start.
                    for pool, module in self.warm:
                        tg.start_soon(pool.warm, module)
                await self._reset_all(stale, now, tally)
            await self.pipeline.archives_settled()
        reasons, failed = tally.reasons, tally.failed
        self.last_runs[name] = now
        try:
            await anyio.to_thread.run_sync(self._save)
        except OSError as e:
            log.error("job.state_not_saved", job=name, error=os_reason(e))
        info = {
            "job": name,
            "checked": checked,
            "archived": sum(reasons.values()),
            "reasons": reasons,
            "failed": failed,
            "seconds": round(time.monotonic() - started, 4),
        }
        # The minute job says nothing when it did nothing: the log stays readable.
        if name != EXPIRY or info["archived"] or failed:
            log.info("job.run", **info)
        else:
            log.debug("job.run", **info)
        self.pipeline.events.publish("job.run", info)
        return info

"""Worker processes (daemon/workers.py): the one mechanism for Python work off the daemon's GIL.
A job runs in a process of its own and its answer (or exception) comes back; a worker killed
mid-job fails that job only; a cancelled job ends its worker at once; idle workers are reused.

Jobs are standard-library functions, which a worker can import by name like any of ours."""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import time

import anyio
import pytest

from daemon.workers import Pool, WorkerDied

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_for_pid(pool: Pool) -> int:
    # The pool has no event for "a worker started" (nothing in the daemon needs one).
    while not pool.pids:  # noqa: ASYNC110
        await anyio.sleep(0.01)
    return pool.pids[0]


async def test_a_job_runs_in_another_process_and_its_worker_is_reused() -> None:
    pool = Pool("test", 1)
    try:
        with anyio.fail_after(60):
            first = await pool.run(os.getpid)
            second = await pool.run(os.getpid)
        assert first == second != os.getpid()
        assert pool.started == 1
    finally:
        await pool.aclose()
    assert gone(first)


async def test_an_exception_in_the_job_is_raised_in_the_daemon() -> None:
    pool = Pool("test", 1)
    try:
        with anyio.fail_after(60), pytest.raises(ZeroDivisionError):
            await pool.run(operator.truediv, 1, 0)
        with anyio.fail_after(60):
            assert await pool.run(operator.add, 2, 3) == 5  # the worker lives on
        assert pool.started == 1
    finally:
        await pool.aclose()


async def test_a_worker_killed_mid_job_fails_that_job_only() -> None:
    pool = Pool("test", 1)
    died: list[WorkerDied] = []

    async def job() -> None:
        try:
            await pool.run(time.sleep, 120)
        except WorkerDied as e:
            died.append(e)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(job)
                pid = await wait_for_pid(pool)
                os.kill(pid, signal.SIGKILL)
            assert died and "killed by signal 9" in str(died[0])
            assert pool.deaths == 1
            assert gone(pid)
            # The next job gets a new worker.
            again = await pool.run(os.getpid)
        assert again != pid and pool.started == 2
    finally:
        await pool.aclose()


async def test_a_cancelled_job_ends_its_worker_at_once() -> None:
    """A job that would run for two minutes: cancelling its caller ends the worker (SIGUSR1
    unwinds the job there) before the cancelled call returns."""
    pool = Pool("test", 1)
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.run, time.sleep, 120)
                pid = await wait_for_pid(pool)
                tg.cancel_scope.cancel()
        assert gone(pid)
        assert pool.pids == [] and pool.deaths == 0
    finally:
        await pool.aclose()


async def test_a_job_that_may_not_be_cancelled_runs_to_its_end() -> None:
    """A mirror round always completes: cancelling its caller once it has started waits for
    its end, and the worker stays for the next job."""
    pool = Pool("test", 1)

    async def job() -> None:
        await pool.run(time.sleep, 1.0, cancellable=False)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(job)
                pid = await wait_for_pid(pool)
                tg.cancel_scope.cancel()
        assert pool.pids == [pid] and not gone(pid)  # kept for the next job
        with anyio.fail_after(60):
            assert await pool.run(os.getpid) == pid
    finally:
        await pool.aclose()


async def test_warming_starts_the_missing_workers_with_the_module_imported() -> None:
    pool = Pool("test", 2)
    try:
        with anyio.fail_after(60):
            await pool.warm("tabnanny")
            assert pool.started == 2 and len(pool.pids) == 2
            loaded = await pool.run(eval, "'tabnanny' in __import__('sys').modules")
            # Warm already: no worker is started again, for a job or a second warming.
            await pool.warm("tabnanny")
        assert loaded and pool.started == 2
    finally:
        await pool.aclose()


@pytest.mark.parametrize("job_module", ["daemon.compaction_job", "daemon.store.archive"])
def test_a_worker_imports_neither_the_config_models_nor_rich(job_module: str) -> None:
    # A worker's start is paid while a reset job's first groups wait: what its jobs' module and
    # the worker program import is all it should load (pydantic and rich were half of it).
    code = (
        f"import sys, daemon.worker_entry, {job_module}\n"
        "loaded = {m.split('.')[0] for m, mod in sys.modules.items() if mod is not None}\n"
        "print(' '.join(sorted(loaded & {'pydantic', 'pydantic_core', 'rich'})))\n"
        "print('daemon.config' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split("\n")
    assert out[:2] == ["", "False"], out


async def test_an_idle_pool_runs_its_jobs_in_sched_idle_and_a_default_one_does_not() -> None:
    # SCHED_IDLE: the reset job's and the index's workers use only CPU the event loop does
    # not want (a waking loop preempts them at once).
    idle, normal = Pool("test-idle", 1, idle=True), Pool("test", 1)
    try:
        with anyio.fail_after(60):
            assert await idle.run(os.sched_getscheduler, 0) == os.SCHED_IDLE
            assert await normal.run(os.sched_getscheduler, 0) == os.SCHED_OTHER
            # The nice level still applies (it orders them if they ever leave the class).
            assert await idle.run(os.getpriority, os.PRIO_PROCESS, 0) >= os.getpriority(
                os.PRIO_PROCESS, 0
            )
    finally:
        await idle.aclose()
        await normal.aclose()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the daemon itself stays where it was

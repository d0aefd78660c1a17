"""The collector in the daemon's worker processes (daemon/heap.py): after its first job a worker
makes no full collection on the collector's own schedule (its long-lived rows are not walked
again and again), and a job run in the daemon's own process changes nothing there."""

from __future__ import annotations

import gc

import anyio
import pytest

from daemon import heap
from daemon.workers import Pool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_worker_leaves_full_collections_to_the_clock_after_its_first_job() -> None:
    # Jobs are functions a worker imports by name: the module's own, and the collector's.
    pool = Pool("test", 1)
    try:
        with anyio.fail_after(60):
            untouched = await pool.run(gc.get_threshold)
            await pool.run(heap.between_jobs)
            after = await pool.run(gc.get_threshold)
            await pool.run(heap.between_jobs)
            again = await pool.run(gc.get_threshold)
    finally:
        await pool.aclose()
    assert untouched[2] != heap.NEVER
    assert after == again == (*heap.YOUNG_THRESHOLDS, heap.NEVER)


def test_the_daemons_own_process_keeps_its_collector_as_it_is() -> None:
    before = gc.get_threshold()
    heap.between_jobs()
    assert gc.get_threshold() == before

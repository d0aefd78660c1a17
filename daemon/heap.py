"""The cyclic garbage collector in the daemon's long-lived worker processes (the index and the
mirror workers, daemon/workers.py).

The collector's default makes a full collection each time the objects that survived grew by a
quarter. The index worker keeps a row per file it indexes: a burst of 100,000 new sessions grew
that heap from nothing to a hundred thousand rows, and the full collections this set off (14 of
them, 160 ms each by the end) took a third of the worker's CPU, walking rows that live as long
as the worker. Here full collections run on a clock instead, at most every FULL_COLLECT_SECONDS,
between jobs; young collections stay as they are, and are made rarer as in the daemon itself
(daemon/app.py): most objects a job makes die with it.
"""

from __future__ import annotations

import gc
import time

from daemon import workers

YOUNG_THRESHOLDS = (50_000, 20)  # the daemon's own (daemon/app.py GC_THRESHOLDS) are 200,000 now
NEVER = 1 << 30  # a threshold the collector's counters never reach
FULL_COLLECT_SECONDS = 600.0

_tuned = False
_last_full = 0.0


def between_jobs() -> None:
    """Call after each job; it acts only in a worker process. The first call takes full
    collections off the collector's own schedule; later ones run one when FULL_COLLECT_SECONDS
    have passed (cyclic garbage among old objects is collected then, not never)."""
    global _tuned, _last_full
    if not workers.in_worker():
        return  # a job run in the daemon's own process (tests, maintenance) leaves it alone
    now = time.monotonic()
    if not _tuned:
        gc.set_threshold(*YOUNG_THRESHOLDS, NEVER)
        _tuned = True
        _last_full = now
    elif now - _last_full >= FULL_COLLECT_SECONDS:
        gc.collect()
        _last_full = time.monotonic()

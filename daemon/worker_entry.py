"""The program a worker process runs: `python -m daemon.worker_entry <nice> <pool name> [idle]`
(daemon/workers.py `Pool` starts it; the pool's name is for ps and bench/isolation.py; `idle`:
the worker puts itself in the SCHED_IDLE class, `workers.idle_class`).

A worker's start is paid while jobs wait (a reset job's first groups, a respawn after a
death), and most of it is imports: this module sees to it that a worker imports what its jobs
need and no more. The daemon's own modules load when the first request names its function.
"""

from __future__ import annotations

import sys

# structlog renders tracebacks with rich when it can import it: 60-70 ms of CPU at each
# worker's start for output a worker never writes (its events go back to the daemon as data,
# daemon/worker_log.py). Without it structlog formats exceptions as plain text.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from daemon import workers  # noqa: E402 (after the line above, which is what this module is for)

if __name__ == "__main__":
    workers.main()

"""Log lines of a worker process (daemon/workers.py: the compaction, memory-flush, mirror and
search index workers), handed back to the daemon with each call's result and logged there.

A worker's stdout is its reply pipe, and a line its stderr got would interleave with the daemon's
own output mid-line. So the worker keeps its events in memory (`capture`), returns them with its
result (`take`), and the daemon logs them through its own logger (`relay`), in its format, on its
stream (stdout, or the journal with priorities), each marked with the worker's `process` name.
The worker's fd 2 is pointed at /dev/null, so that nothing else (a C library) writes there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from daemon.logs import LEVELS

# Events of one call are few (at most one per session of a round); this bounds the memory a
# worker that logs in a loop could take: the rest are counted, and the count is relayed.
MAX_EVENTS = 1000

_events: list[dict[str, Any]] = []
_left_out = 0


def _plain(value: Any) -> Any:
    """A value that pickles and renders as in the daemon (a Path becomes its text)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _keep(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    global _left_out
    if len(_events) < MAX_EVENTS:
        _events.append({str(k): _plain(v) for k, v in event_dict.items()})
    else:
        _left_out += 1
    raise structlog.DropEvent


def capture(level: str) -> None:
    """In the worker, once: keep every event at `level` or above for `take`; fd 2 to /dev/null."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            _keep,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, LEVELS["info"])),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def take() -> tuple[list[dict[str, Any]], int]:
    """In the worker: the events kept since the last call, and how many were left out."""
    global _events, _left_out
    out, left_out = _events, _left_out
    _events, _left_out = [], 0
    return out, left_out


log = structlog.get_logger("daemon.worker")


def relay(events: list[dict[str, Any]], left_out: int, process: str) -> None:
    """In the daemon: log a worker's events as they were logged there, each with `process`
    naming the worker (`"process": "search-worker"` for the index worker's)."""
    for e in events:
        fields = dict(e)
        level = str(fields.pop("level", "info"))
        name = str(fields.pop("event", "worker.event"))
        emit = getattr(log, level if level in LEVELS or level == "critical" else "info")
        emit(name, **{**fields, "process": process})
    if left_out:
        log.warning("worker.lines_left_out", process=process, count=left_out)

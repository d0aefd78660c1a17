"""Structured logs: JSON lines on stdout for journald and log shippers, a console format on a tty.

Event names are dotted and stable (`daemon.started`, `message.appended`, `request.rejected`);
levels map onto journald priorities. Message bodies never go into logs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once for the process (the daemon, or a CLI command)."""
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    if console:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    else:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_orjson_dumps),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def settings() -> tuple[str, str]:
    """The level and format configured now (command line, config and reloads included), for a
    worker process whose lines must look like the daemon's."""
    cfg = structlog.get_config()
    console = any(isinstance(p, structlog.dev.ConsoleRenderer) for p in cfg["processors"])
    effective = getattr(structlog.get_logger().bind(), "get_effective_level", None)
    number = effective() if callable(effective) else None
    level = next((k for k, v in LEVELS.items() if v == number), "info")
    return level, "console" if console else "json"


class Throttle:
    """At most one line per `every` seconds for each kind of an event that can repeat at full
    speed (on a full disk every batch fails; a line each would fill the journal that is on the
    same disk). `allow(kind)` returns None to leave a line out, else how many were left out
    since the last one, for the line to say so."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._next: dict[object, float] = {}
        self._left_out: dict[object, int] = {}

    def allow(self, kind: object) -> int | None:
        now = self.clock()
        if now < self._next.get(kind, now):
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return None
        self._next[kind] = now + self.every
        return self._left_out.pop(kind, 0)

"""Structured logs: JSON lines for journald and log shippers, a console format on a tty.

Lines go to stdout, or to stderr when stderr is the journal (`$JOURNAL_STREAM` names it, as
systemd sets it for a service): there each line starts with the sd-daemon priority prefix of its
level (`<6>` info, `<4>` warning, ...), which journald turns into the entry's priority and strips,
so `journalctl -p warning` finds warnings. Anywhere else lines carry no prefix.

Event names are dotted and stable (`daemon.started`, `message.appended`, `request.rejected`);
every one is listed in docs/events.md (tests/test_events_doc.py keeps the two in step). Message
bodies never go into logs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import orjson
import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# sd-daemon(3) priorities of our levels; journald reads the prefix and strips it.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
DEFAULT_PRIORITY = 6


def journal_stream(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """The (device, inode) that `$JOURNAL_STREAM` names, or None when unset or malformed."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return None
    return int(dev), int(ino)


def is_journal(fd: int, environ: Mapping[str, str] = os.environ) -> bool:
    """True when `fd` is the journal's stream socket: `$JOURNAL_STREAM` names its device and
    inode. Checking the variable alone is not enough: a child whose output was redirected
    inherits it."""
    named = journal_stream(environ)
    if named is None:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == named


def with_priority(line: str, level: object) -> str:
    """`line` with the sd-daemon prefix of `level` on each of its lines (a console-format
    traceback spans several; journald reads each line as an entry of its own)."""
    prefix = f"<{PRIORITIES.get(str(level), DEFAULT_PRIORITY)}>"
    return "\n".join(prefix + part for part in line.split("\n"))


class JournalPrefixed:
    """Wraps the final renderer: the rendered line gets its level's priority prefix."""

    def __init__(self, render: Callable[..., str]) -> None:
        self.render = render

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> str:
        level = event_dict.get("level", method)
        return with_priority(self.render(logger, method, event_dict), level)


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):  # io.StringIO in tests, a closed stream
        return None


def default_stream() -> TextIO:
    """Where the daemon writes its lines: stderr when that is the journal (the stream systemd
    names in `$JOURNAL_STREAM` and reads logs from), else stdout."""
    return sys.stderr if is_journal(2) else sys.stdout


_fd: int | None = None


def output_fd() -> int | None:
    """The fd the configured logger writes to, for a worker process to log to a copy of it."""
    return _fd


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once for the process (the daemon, or a CLI command); lines get priority
    prefixes when `stream` (default: see `default_stream`) is the journal."""
    global _fd
    out = stream if stream is not None else default_stream()
    _fd = _fileno(out)
    journal = _fd is not None and is_journal(_fd)
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    render: Any
    if console:
        render = structlog.dev.ConsoleRenderer(colors=False)
    else:
        processors.append(structlog.processors.format_exc_info)
        render = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    processors.append(JournalPrefixed(render) if journal else render)
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
    console = any(
        isinstance(p.render if isinstance(p, JournalPrefixed) else p, structlog.dev.ConsoleRenderer)
        for p in cfg["processors"]
    )
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

"""The index worker: the process that runs every index pass for the daemon.

    python -m daemon.search.worker --state-dir DIR [--log-fd N] [--log-level L]
                                   [--log-format json|console] [--nice N]

A pass is mostly Python (reading appended lines, parsing them, building rows); run in the daemon
it would compete with the event loop for the GIL. Here it has a GIL of its own, and the whole
process runs below the daemon's CPU priority. Every write to the index happens in this process:
creating the schema, replacing an unusable file, the passes. The daemon only reads it (SQLite in
WAL mode lets another process read while this one writes; daemon/search/query.py).

The daemon (daemon/search/child.py) starts it and talks to it over its stdin and stdout, one
JSON object per line:

    worker -> daemon   {"open": [dev, ino]}            the index is open (the file's identity)
                       {"unavailable": "why"}          it cannot be opened; the worker exits 1
    daemon -> worker   {"op": "pass", "n": 7, "agents": ["main", ...],
                        "workspaces": {"main": "/path/workspace"}, "log": ["info", "json"]}
    worker -> daemon   {"n": 7, "stats": {SyncStats.to_json()}, "db": [dev, ino]}
                       {"n": 7, "error": "why", "db": [dev, ino]}   (sqlite3.Error or OSError;
                                                                     the next pass tries again)
    daemon -> worker   {"op": "stop"}, or its stdin closes (the daemon is gone): a pass in
                       progress commits what it did, the worker closes the index and exits 0.

`db` lets the daemon retire its read connections when the file was replaced (deleted, or found
unusable and built anew). The agents and their workspaces come with each request because they
are the daemon's reloadable config; an agent that only exists on disk gets OpenClaw's default
workspace, `<stateDir>/workspace-<id>` (as daemon/config_load.py `workspace_of` gives it).

Logs go, in the daemon's format, to `--log-fd` (the daemon's stdout), else to stderr; fd 1 is
pointed there too, so nothing stray can corrupt the pipe. SIGINT, SIGTERM and SIGHUP sent to the
whole group (Ctrl-C on a terminal, systemd's stop) are ignored: the daemon stops the worker in
order, and kills it if it does not exit in time. An error that is not the index's (a bug) ends
the process with a traceback on stderr; the daemon logs `search.worker_exited` and starts it
again.
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import signal
import sqlite3
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog

from daemon import guard, logs
from daemon.search.index import Halted, IndexUnavailable, SearchIndex, index_path, lower_priority
from daemon.search.sources import DEFAULT_AGENTS

log = structlog.get_logger("daemon.search")

MAX_REQUEST = 16 << 20  # bytes in one request line (the agent list is far smaller)
FORMATS = ("json", "console")
PROCESS = "search-worker"  # in each log line, told apart from the daemon's own


@dataclass(frozen=True, slots=True)
class PassRequest:
    """One `pass` request: its number and what the pass needs from the daemon's config."""

    n: int
    agents: tuple[str, ...]
    workspaces: dict[str, str]
    log: tuple[str, str] | None = None


def parse_request(obj: Any) -> PassRequest | None:
    """A request line's object: a PassRequest, or None for `stop`. Raises ValueError."""
    if not isinstance(obj, dict):
        raise ValueError("a request must be a JSON object")
    op = obj.get("op")
    if op == "stop":
        return None
    if op != "pass":
        raise ValueError(f"unknown op {op!r}")
    n, agents, workspaces = obj.get("n"), obj.get("agents"), obj.get("workspaces")
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError("n must be an integer")
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        raise ValueError("agents must be a list of strings")
    if not isinstance(workspaces, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in workspaces.items()
    ):
        raise ValueError("workspaces must map agent ids to paths")
    settings = obj.get("log")
    level_format: tuple[str, str] | None = None
    if settings is not None:
        if (
            not isinstance(settings, list)
            or len(settings) != 2
            or settings[0] not in logs.LEVELS
            or settings[1] not in FORMATS
        ):
            raise ValueError(f"log must be [level, format], got {settings!r}")
        level_format = (settings[0], settings[1])
    return PassRequest(n, tuple(agents), dict(workspaces), level_format)


class Agents:
    """The daemon's agents and their workspaces as of the latest request."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.listed: tuple[str, ...] = DEFAULT_AGENTS
        self.workspaces: dict[str, str] = {}

    def update(self, req: PassRequest) -> None:
        self.listed, self.workspaces = req.agents, req.workspaces

    def __call__(self) -> tuple[str, ...]:
        return self.listed

    def workspace_of(self, agent: str) -> Path:
        ws = self.workspaces.get(agent)
        return Path(ws) if ws else self.state_dir / f"workspace-{agent}"


def read_requests(fd: int) -> Iterator[Any]:
    """Parsed request lines from `fd` until it ends. A raw read: a buffered stdin would hold a
    lock that the interpreter's exit could not take while this thread waits in it."""
    buf = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        buf += chunk
        while (cut := buf.find(b"\n")) >= 0:
            line, buf = buf[:cut], buf[cut + 1 :]
            if line.strip():
                yield orjson.loads(line)
        if len(buf) > MAX_REQUEST:
            raise ValueError(f"a request line longer than {MAX_REQUEST} bytes")


Requests = queue.SimpleQueue[PassRequest | None]


def _listen(fd: int, requests: Requests, halt: threading.Event) -> None:
    """The request thread: hands passes on; `stop`, the end of stdin or a bad line halts the
    pass in progress (it commits first) and ends the worker."""
    structlog.contextvars.bind_contextvars(process=PROCESS)  # a thread starts without context
    try:
        for obj in read_requests(fd):
            req = parse_request(obj)
            if req is None:
                return
            requests.put(req)
    except (ValueError, OSError) as e:
        log.error("search.worker_bad_request", error=str(e))
    finally:
        halt.set()
        requests.put(None)


class Replies:
    """The pipe to the daemon: one JSON object per line."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out

    def send(self, obj: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(obj) + b"\n")
        self.out.flush()


def serve(index: SearchIndex, agents: Agents, replies: Replies, fd_in: int) -> int:
    """Open the index, then run the passes asked for until `stop` or the end of `fd_in`; the
    exit code. Closes the index when it ends. BrokenPipeError: the daemon is gone."""
    try:
        index.open()
    except (IndexUnavailable, sqlite3.Error, OSError) as e:
        replies.send({"unavailable": str(e)})  # the daemon logs it (search.unavailable)
        return 1
    try:
        replies.send({"open": index.identity})
        requests: Requests = queue.SimpleQueue()
        halt = threading.Event()
        listener = threading.Thread(
            target=_listen, args=(fd_in, requests, halt), name="search-requests", daemon=True
        )
        listener.start()
        settings: tuple[str, str] | None = None
        while (req := requests.get()) is not None:
            agents.update(req)
            if req.log is not None and req.log != settings:
                settings = req.log
                logs.configure(*settings, stream=sys.stdout)
            try:
                stats = index.sync(halt)
            except Halted:
                return 0
            except (sqlite3.Error, OSError) as e:
                replies.send({"n": req.n, "error": str(e), "db": index.identity})
                continue
            replies.send({"n": req.n, "stats": stats.to_json(), "db": index.identity})
        return 0
    finally:
        index.close()


def _redirect_stdout(log_fd: int | None) -> BinaryIO:
    """Keep fd 1 (the pipe to the daemon) for replies only, under another number, and point fd 1
    at the log stream (`log_fd`, else stderr); sys.stdout writes each line with one write."""
    replies = os.dup(1)
    os.dup2(2 if log_fd is None else log_fd, 1)
    if log_fd is not None:
        os.close(log_fd)
    # The daemon writes to the same file: a line written in two parts (as print does, unbuffered)
    # could take one of the daemon's between them.
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False), buffer_size=1 << 20),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    return open(replies, "wb")  # open for the life of the process


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m daemon.search.worker", description=__doc__)
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--log-fd", type=int, help="write logs to this inherited fd (else stderr)")
    p.add_argument("--log-level", default="info", choices=list(logs.LEVELS))
    p.add_argument("--log-format", default="json", choices=FORMATS)
    p.add_argument("--nice", type=int, default=0, help="lower the CPU priority by this much")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before any thread exists: Linux keeps a priority per thread, and new ones inherit it.
    lower_priority(args.nice)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    guard.install_from_env()  # tests: the never-delete guard watches the worker as well
    replies = Replies(_redirect_stdout(args.log_fd))
    logs.configure(args.log_level, args.log_format, stream=sys.stdout)
    structlog.contextvars.bind_contextvars(process=PROCESS)
    state_dir: Path = args.state_dir
    agents = Agents(state_dir)
    index = SearchIndex(index_path(state_dir), state_dir, agents.workspace_of, agents)
    try:
        return serve(index, agents, replies, sys.stdin.fileno())
    except BrokenPipeError:
        return 0  # the daemon is gone: nobody to answer


if __name__ == "__main__":
    sys.exit(main())

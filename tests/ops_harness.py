"""Helpers for the operations tests (systemd, reload, spool, shutdown), on top of e2e.harness.

They run the real daemon (`python -m daemon run`) and look only at what an operator sees: its
socket, its log lines, the datagrams it sends to $NOTIFY_SOCKET and the files it leaves.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from e2e import harness
from e2e.harness import Daemon, short_workdir

Launch = Callable[..., Daemon]


@contextlib.contextmanager
def daemons(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Launch]:
    """`launch(config=..., start=True)` starts daemons; all are killed when the block ends.

    `env` is added to the daemon's environment (e2e.harness strips NOTIFY_* from it).
    """
    made: list[Daemon] = []
    workdir = short_workdir(tmp_path)
    base_env = harness.daemon_env

    def launch(config: str | dict[str, Any] | None = None, *, start: bool = True) -> Daemon:
        folder = workdir / f"d{len(made) + 1}"
        folder.mkdir(exist_ok=True)
        d = Daemon(folder, config=config)
        made.append(d)
        if start:
            d.start()
        return d

    if env:
        harness.daemon_env = lambda: {**base_env(), **env}
    try:
        yield launch
    finally:
        harness.daemon_env = base_env
        for d in made:
            d.cleanup()
        for d in made:
            out = d.output()
            if out:
                print(f"\n===== daemon in {d.workdir} =====\n{out}")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def log_lines(d: Daemon, event: str) -> list[dict[str, Any]]:
    """The latest run's log lines of one event (lines still being written are skipped)."""
    path = d.workdir / f"daemon-{d.runs}.out"
    out = []
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            obj = orjson.loads(line)
            if isinstance(obj, dict) and obj.get("event") == event:
                out.append(obj)
    return out


def wait_log(d: Daemon, event: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until the daemon has logged `event` at least `count` times; return those lines."""
    return wait_for(  # type: ignore[no-any-return]
        f"{count} x {event} in the log",
        lambda: (lines := log_lines(d, event)) and len(lines) >= count and lines,
        timeout,
    )


def replace_file(path: Path, text: str) -> None:
    """Write `text` the way editors and config managers do: a new file renamed over the old."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


class NotifyListener:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[dict[str, str]] = []

    def close(self) -> None:
        self.sock.close()

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        """The next datagram as {KEY: value}; raises TimeoutError."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append(fields)
        return fields

    def until(self, key: str, timeout: float = 60.0) -> tuple[dict[str, str], float]:
        """Read datagrams until one carries `key`; return it and when it arrived (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {key} within {timeout}s; got {self.received}")
            fields = self.next(left)
            if key in fields:
                return fields, time.monotonic()

"""sd_notify spoken by ourselves: READY, STATUS, STOPPING, RELOADING and the watchdog ping.

The protocol is one datagram of `KEY=value` lines sent to the AF_UNIX socket named by
$NOTIFY_SOCKET (a path, or an abstract name written with a leading `@`). It is small enough that a
dependency (and a C library) is not worth it. Without $NOTIFY_SOCKET, as when the daemon runs
in a terminal, every method is a no-op.

The watchdog ping is sent by a task on the event loop itself, not by a thread: when the loop
stalls (a blocking call, a runaway computation) the pings stop and systemd restarts the service,
which is the whole point of WatchdogSec=.

Sending never raises: systemd going away must not take the daemon down, so failures are logged
once and otherwise ignored.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.errors import os_reason

log = structlog.get_logger("daemon.systemd")

# Variables systemd sets for the main process only; a child (a `command` summarizer, say) that
# inherited them could ping or report READY on our behalf.
_OWN_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(value: str) -> str | bytes | None:
    """The socket address of a $NOTIFY_SOCKET value: a path, or `@name` for the abstract
    namespace (a leading NUL byte on the wire). None for a value we cannot use."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC), or None when the watchdog is not ours.

    systemd sets WATCHDOG_PID to the process it expects pings from; when it names another
    process (we were started by a wrapper that exported its environment) we stay silent.
    """
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends sd_notify datagrams; owns one datagram socket for the life of the daemon."""

    def __init__(self, address: str | bytes | None, interval: float | None) -> None:
        self.address = address
        self.interval = interval if address is not None else None
        self._sock: socket.socket | None = None
        self._warned = False
        self._stopping = False
        self._serving = "serving"  # the STATUS of the last READY, repeated after a reload
        self.sent = 0

    @classmethod
    def from_environ(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """Read $NOTIFY_SOCKET and the watchdog variables, then remove them from `env` (the
        process environment by default) so that programs we start do not inherit them."""
        env = os.environ if env is None else env
        address = notify_address(env.get("NOTIFY_SOCKET", ""))
        interval = watchdog_interval(env, os.getpid())
        for name in _OWN_VARIABLES:
            env.pop(name, None)
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of `KEY=value` fields; True when it left. Never raises."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue must cost us a dropped status line, not a stalled loop.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("systemd.notify_failed", error=os_reason(e), fields=fields)
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """The daemon accepts connections (or has finished a reload: then the status of the
        first READY is repeated). Not sent once stopping: a reload cut short by shutdown must
        not tell systemd we are back."""
        if self._stopping:
            return False
        if status is not None:
            self._serving = status
        return self.notify("READY=1", *_status(self._serving))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={_one_line(status)}")

    def stopping(self, status: str | None = None) -> bool:
        self._stopping = True
        return self.notify("STOPPING=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload begins; READY=1 must follow when it is over, whatever its outcome."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *_status(status))

    async def watchdog(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Ping WATCHDOG=1 at half the watchdog interval until cancelled; returns at once when
        systemd did not ask for pings."""
        task_status.started()
        if self.interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(self.interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value field: a status must not smuggle one in.
    return " ".join(text.split())


def _status(status: str | None) -> tuple[str, ...]:
    return () if status is None else (f"STATUS={_one_line(status)}",)

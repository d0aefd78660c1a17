"""One client connection of the JSON-RPC server (daemon/server.py): its reader, its writer and
what it may hold of the daemon.

The reader splits lines, enforces the line limit and dispatches; the writer sends whatever
answers are ready in one write. Answers may leave in a different order than requests came in:
they carry the request's id. A client over its budget (answers it has not read, requests
waiting for their answers; `daemon.limits`) is no longer read until it reads, and one whose
answers have not moved for `stallTimeoutSeconds` is closed. A connection that needs a token
must send `auth.hello` within `helloTimeoutSeconds`.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog
from anyio.abc import ByteStream, SocketAttribute, TaskGroup, UNIXSocketStream

from daemon.config import LimitsConfig
from daemon.core import protocol
from daemon.core.protocol import RequestId, encode_error, encode_result
from daemon.core.roles import ADMIN, Principal
from daemon.errors import RequestError, StorageUnavailable, TooLarge, Unauthenticated
from daemon.listeners import drain

if TYPE_CHECKING:
    from daemon.clients import Clients
    from daemon.pipeline import Pipeline

# The server's events (connection.*, request.*) keep the logger they were always logged with.
log = structlog.get_logger("daemon.server")

READ_CHUNK = 256 * 1024
# Answers leave in slices of this size, so that a stall is a slice that makes no progress, not a
# large answer that takes a while to a client that is reading.
SEND_SLICE = 256 * 1024
LINGER_SECONDS = 2.0


class Host(Protocol):
    """What a connection uses of the server that accepted it (daemon/server.py `Server`): its
    settings, where requests go, and the counts `status` reports. A Protocol, so that this
    module does not import the server that imports it."""

    pipeline: Pipeline
    clients: Clients
    max_line: int
    idle_timeout: float
    frame_timeout: float
    limits: LimitsConfig

    def dispatch(
        self, req: protocol.Request, reply: Reply, tg: TaskGroup, conn: Connection
    ) -> Awaitable[None] | None: ...


class Connection:
    """One client connection; owned by the server's connection task group."""

    def __init__(self, server: Host, stream: ByteStream, number: int) -> None:
        self.server = server
        self.stream = stream
        self.number = number
        self.out: list[bytes] = []
        self.unsent = 0  # bytes of answers delivered and not yet sent (counted by the budget)
        self.wake = anyio.Event()
        self.pending = 0
        self.paused = False  # the reader waits for the client to read (over its budget)
        self.idle = anyio.Event()
        self.idle.set()
        self.room = anyio.Event()
        self.room.set()
        self.read_scope = anyio.CancelScope()
        self.closed = False
        self.too_large = False
        self.draining = False
        self.writer_done = anyio.Event()
        self.principal: Principal | None = ADMIN  # who is calling (daemon/auth.py)
        self.hello_deadline: float | None = None  # set for connections that need a token
        self._line_deadline: float | None = None  # a begun request line must end by then
        # The Unix socket under the stream, which answers are sent on directly when it takes
        # them at once (`_send_now`), as the stream itself would send them. None for TCP (whose
        # stream may hold bytes in its transport's buffer) and TLS: only their stream writes.
        self._raw: socket.socket | None = None
        if isinstance(stream, UNIXSocketStream):
            self._raw = stream.extra(SocketAttribute.raw_socket, None)
        self._waited = False  # the last read waited for the socket (it yielded to the loop)

    def deliver(self, data: bytes) -> None:
        out = self.out
        out.append(data)
        self.unsent += len(data)
        if len(out) == 1:  # the writer empties `out` before it waits again
            self.wake.set()

    def notify(self, line: bytes) -> bool:
        """Deliver an event notification; False (unsubscribe me) once the client stops reading."""
        if self.closed or self.unsent > self.server.limits.maxUnsentBytes:
            return False
        self.deliver(line)
        return True

    def over_budget(self, limits: LimitsConfig) -> bool:
        return self.pending >= limits.maxInFlight or self.unsent > limits.maxUnsentBytes

    async def wait_for_room(self) -> None:
        """Stop reading until the client has read enough of its answers (or they are sent).
        A client that never reads is closed by the writer's stall timeout, which ends this."""
        self.paused = True
        try:
            while self.over_budget(self.server.limits):
                self.room = anyio.Event()
                await self.room.wait()
        finally:
            self.paused = False

    def answer(self, rid: RequestId, notification: bool) -> Callable[[Any], None]:
        """A reply callback for one request; decrements the pending count when called.

        Called once per message: the pending count is kept inline rather than in helpers."""
        pending = self.pending = self.pending + 1
        if pending == 1:
            self.idle = anyio.Event()
        done = False

        def reply(outcome: dict[str, Any] | RequestError) -> None:
            nonlocal done
            if done:
                return
            done = True
            if isinstance(outcome, RequestError):
                self.server.pipeline.counters.rejected_with(outcome.code)
                if not notification and not self.closed:
                    self.deliver(encode_error(rid, outcome))
            elif not notification and not self.closed:
                self.deliver(encode_result(rid, outcome))
            left = self.pending = self.pending - 1
            if self.paused:
                self.room.set()
            if left == 0:
                self.idle.set()

        return reply

    async def writer(self) -> None:
        """The only task that sends on this connection (two senders would interleave bytes)."""
        try:
            while True:
                await self.wake.wait()
                self.wake = anyio.Event()
                while self.out:
                    data = b"".join(self.out)
                    self.out.clear()
                    sent = self._send_now(data)
                    if sent < len(data) and not await self._send(memoryview(data)[sent:]):
                        return
                    self.unsent -= len(data)
                    if self.paused:
                        self.room.set()
                if self.draining:
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.closed = True
        finally:
            self.writer_done.set()

    def _send_now(self, data: bytes) -> int:
        """Send what the socket takes without waiting; how many bytes that was. Answers are
        small and the socket's buffer mostly has room: then no timeout scope is entered and no
        turn of the event loop is taken (TLS connections always go through `_send`). Raises
        OSError when the client has gone."""
        raw = self._raw
        if raw is None:
            return 0
        try:
            return raw.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    async def _receive(self) -> bytes:
        """The next chunk the client sent; raises EndOfStream once it has closed its side.

        On a Unix socket the chunk is read from the socket itself, as the stream would read it,
        but without the turn of the event loop the stream takes before every read: a read that
        finds the socket empty waits until it is readable, which is such a turn already. Only
        after a read that did not wait does the next one take a turn first, so that other tasks
        run while a client keeps sending. TCP and TLS connections read through their stream."""
        raw = self._raw
        if raw is None:
            return await self.stream.receive(READ_CHUNK)
        if not self._waited:
            await anyio.lowlevel.checkpoint()
        self._waited = False
        while True:
            try:
                data = raw.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                await anyio.wait_readable(raw)
                self._waited = True
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def _send(self, data: bytes | memoryview) -> bool:
        """Send `data`; False (and the connection closed) when a slice of it cannot leave
        within the stall timeout: the client has stopped reading."""
        stall = self.server.limits.stallTimeoutSeconds
        view = memoryview(data) if len(data) > SEND_SLICE else None
        for start in range(0, len(data), SEND_SLICE):
            piece = data if view is None else view[start : start + SEND_SLICE]
            with anyio.move_on_after(stall) as scope:
                await self.stream.send(piece)  # type: ignore[arg-type]
            if scope.cancelled_caught:
                log.warning(
                    "connection.stalled",
                    connection=self.number,
                    unsentBytes=self.unsent,
                    seconds=stall,
                )
                self.server.clients.closed_for_stalling(self)
                self.closed = True
                self.read_scope.cancel()
                return False
        return True

    async def flush(self) -> None:
        """Wait until every accepted request is answered and the answers are sent."""
        await self.idle.wait()
        self.draining = True
        self.wake.set()
        await self.writer_done.wait()

    async def reader(self, tg: TaskGroup) -> None:
        """Read lines and dispatch them until the client leaves or a limit or `stop` ends it.

        The timeouts (idle, frame, hello) are one cancel scope for a run of reads, not one per
        read: entering and leaving a scope costs more than a small read, and most clients send
        one line at a time. Only a line that must wait (for room in the committer's queue or
        in the client's budget) leaves that scope, so a timeout only ever interrupts a read."""
        max_line = self.server.max_line
        idle_timeout = self.server.idle_timeout
        buf = bytearray()
        lines: list[bytes] = []
        at = 0  # lines[at:] are left to the slow path, which may wait
        unfinished = False  # the slow path finishes the chunk of `lines`
        waiter: Awaitable[None] | None = None
        last_read = anyio.current_time()
        with self.read_scope:
            while True:
                if waiter is not None:
                    await waiter
                    waiter = None
                if unfinished:
                    unfinished = False
                    limits = self.server.limits
                    for line in lines[at:]:
                        if len(line) > max_line:
                            self._too_large(len(line))
                            return
                        if self.over_budget(limits):
                            await self.wait_for_room()
                        w = self.handle_line(line, tg)
                        if w is not None:
                            await w
                    at = len(lines)
                    if self._after_chunk(buf, bool(lines), max_line):
                        return
                deadline = self._read_deadline(last_read, idle_timeout)
                with anyio.CancelScope(deadline=deadline) as timeouts:
                    while True:
                        try:
                            data = await self._receive()
                        except (
                            anyio.EndOfStream,
                            anyio.BrokenResourceError,
                            anyio.ClosedResourceError,
                            OSError,
                        ):
                            return
                        last_read = anyio.current_time()
                        lines = _split(buf, data)
                        at = 0
                        limits = self.server.limits  # a reload may change them
                        for line in lines:
                            if len(line) > max_line:
                                self._too_large(len(line))
                                return
                            if self.over_budget(limits):
                                break
                            at += 1
                            waiter = self.handle_line(line, tg)
                            if waiter is not None:
                                break
                        if waiter is not None or at < len(lines):
                            unfinished = True
                            break  # the rest is handled (and waited for) outside the scope
                        if self._after_chunk(buf, bool(lines), max_line):
                            return
                        # Later deadlines wait for this scope to end; an earlier one (a line
                        # has begun) moves it.
                        deadline = self._read_deadline(last_read, idle_timeout)
                        if deadline < timeouts.deadline:
                            timeouts.deadline = deadline
                if timeouts.cancelled_caught:
                    now = anyio.current_time()
                    if self._line_deadline is not None and now >= self._line_deadline:
                        log.info(
                            "connection.frame_timeout",
                            connection=self.number,
                            bytes=len(buf),
                            seconds=self.server.frame_timeout,
                        )
                        return
                    if self._hello_overdue():
                        return
                    if now >= last_read + idle_timeout:
                        if not self.pending:
                            log.info("connection.idle_timeout", connection=self.number)
                            return
                        last_read = now  # answers are still owed: another idle period

    def _read_deadline(self, last_read: float, idle_timeout: float) -> float:
        """When the read that follows `last_read` times out: idle, frame or hello."""
        deadline = last_read + idle_timeout
        if self._line_deadline is not None:
            deadline = min(deadline, self._line_deadline)
        if self.hello_deadline is not None:
            if self.principal is not None:
                self.hello_deadline = None
            else:
                deadline = min(deadline, self.hello_deadline)
        return deadline

    def _after_chunk(self, buf: bytearray, ended_lines: bool, max_line: int) -> bool:
        """After a chunk's whole lines are handled: start or end the frame deadline of the
        partial line in `buf` (a new one when the chunk ended lines); True (close) when that
        line is too long already or the hello is overdue."""
        if not buf:
            self._line_deadline = None
        elif ended_lines or self._line_deadline is None:
            self._line_deadline = anyio.current_time() + self.server.frame_timeout
        if len(buf) > max_line:
            # The rest of the line is not read: answer now and close.
            self._too_large(len(buf))
            return True
        return self.hello_deadline is not None and self._hello_overdue()

    def _hello_overdue(self) -> bool:
        """True (and the client told why) when a connection that needs a token has not sent a
        valid auth.hello in time: an idle or chatty connection without one would hold a slot."""
        deadline = self.hello_deadline
        if deadline is None or self.principal is not None:
            self.hello_deadline = None
            return False
        if anyio.current_time() < deadline:
            return False
        seconds = self.server.limits.helloTimeoutSeconds
        log.info("connection.hello_timeout", connection=self.number, seconds=seconds)
        self.server.clients.closed_for_hello(self)
        err = Unauthenticated(f"no valid auth.hello within {seconds} s; connection closed")
        self.deliver(encode_error(None, err))
        return True

    async def linger(self) -> None:
        """After a too-large line: say we are done writing, then read and discard (never buffer)
        what the client is still sending, for a moment, so it can read our answer; closing
        with unread data would make the kernel reset the connection and lose the answer."""
        await drain(self.stream, LINGER_SECONDS)

    def _too_large(self, seen: int) -> None:
        self.too_large = True
        limit = self.server.max_line
        log.warning("request.rejected", reason="too_large", connection=self.number, bytes=seen)
        err = TooLarge(
            f"request line exceeds the limit of {limit} bytes; connection closed",
            data={"limit": limit},
        )
        self.server.pipeline.counters.rejected_with(err.code)
        self.deliver(encode_error(None, err))

    def handle_line(self, line: bytes, tg: TaskGroup) -> Awaitable[None] | None:
        """Parse and dispatch one line. Returns an awaitable only when the request must wait
        (the committer's queue is full); everything else completes synchronously."""
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            return None
        try:
            req = protocol.parse_request(line)
        except RequestError as e:
            log.info("request.rejected", reason="malformed", code=e.code, connection=self.number)
            self.server.pipeline.counters.rejected_with(e.code)
            self.deliver(encode_error(protocol.request_id_of(e), e))
            return None
        reply = self.answer(req.id, req.notification)
        try:
            if req.method == "message.ingest" and self.principal is ADMIN:
                # The hot path, as `dispatch` takes it through the method table's row for a
                # caller with every right (no aliases apply to message.ingest).
                params = protocol.parse_ingest(req.params)
                waiter = self.server.pipeline.ingest(params, reply)
            else:
                waiter = self.server.dispatch(req, reply, tg, self)
        except Exception as e:
            self._failed(req, reply, e)
            return None
        return None if waiter is None else self._wait(req, reply, waiter)

    async def _wait(self, req: protocol.Request, reply: Reply, waiter: Awaitable[None]) -> None:
        try:
            await waiter
        except anyio.get_cancelled_exc_class():
            # Shutting down while waiting for room in the committer's queue: nothing was stored.
            reply(StorageUnavailable("the daemon is shutting down; nothing was stored, retry"))
            raise
        except Exception as e:
            self._failed(req, reply, e)

    def _failed(self, req: protocol.Request, reply: Reply, e: Exception) -> None:
        if isinstance(e, RequestError):
            if e.code == -32602:
                log.info(
                    "request.rejected",
                    reason="invalid_params",
                    method=req.method,
                    field=(e.data or {}).get("field"),
                    connection=self.number,
                )
            reply(e)
            return
        log.error(
            "request.failed",
            method=req.method,
            connection=self.number,
            error=f"{type(e).__name__}: {e}",
            exc_info=e,
        )
        reply(RequestError("internal error; the daemon logged the details"))


Reply = Callable[[Any], None]


def _split(buf: bytearray, data: bytes) -> list[bytes]:
    """The whole lines `data` ends (after what `buf` holds); the partial rest stays in `buf`.
    Split in one call; only the partial line before this chunk is copied."""
    if b"\n" not in data:
        buf += data  # a line in pieces: appended, never copied again
        return []
    if buf:
        data = bytes(buf) + data
        buf.clear()
    *lines, rest = data.split(b"\n")
    buf += rest
    return lines

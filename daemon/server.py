"""The Unix-socket JSON-RPC server: listeners, connections, limits, dispatch.

Each connection has a reader (splits lines, enforces the line limit, dispatches) and a writer
(sends whatever answers are ready in one write). Answers may leave in a different order than
requests came in: they carry the request's id. A connection holds at most MAX_PENDING requests
unanswered, so a client that never reads its answers cannot grow our memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus

from daemon.api import Api
from daemon.auth import Auth, Bound, close_bound
from daemon.core import aliases, protocol
from daemon.core.protocol import RequestId, encode_error, encode_result
from daemon.core.roles import ADMIN, Principal
from daemon.errors import (
    MethodNotFound,
    RequestError,
    ServerBusy,
    StorageUnavailable,
    TooLarge,
)
from daemon.events import EVENTS
from daemon.pipeline import Pipeline

log = structlog.get_logger("daemon.server")

MAX_PENDING = 4096
READ_CHUNK = 256 * 1024
LINGER_SECONDS = 2.0
SHUTDOWN_GRACE_SECONDS = 1.0
# accept() failing for want of descriptors or memory: wait, then try again (never give up).
ACCEPT_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_MAX = 1.0


class Connection:
    """One client connection; owned by the server's connection task group."""

    def __init__(self, server: Server, stream: SocketStream, number: int) -> None:
        self.server = server
        self.stream = stream
        self.number = number
        self.out: list[bytes] = []
        self.wake = anyio.Event()
        self.pending = 0
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

    def deliver(self, data: bytes) -> None:
        out = self.out
        out.append(data)
        if len(out) == 1:  # the writer empties `out` before it waits again
            self.wake.set()

    def notify(self, line: bytes) -> bool:
        """Deliver an event notification; False (unsubscribe me) once the client stops reading."""
        if self.closed or len(self.out) > MAX_PENDING:
            return False
        self.deliver(line)
        return True

    def answer(self, rid: RequestId, notification: bool) -> Callable[[Any], None]:
        """A reply callback for one request; decrements the pending count when called.

        Called once per message: the pending count is kept inline rather than in helpers."""
        pending = self.pending = self.pending + 1
        if pending == 1:
            self.idle = anyio.Event()
        if pending >= MAX_PENDING:
            self.room = anyio.Event()
        done = False

        def reply(outcome: dict[str, Any] | RequestError) -> None:
            nonlocal done
            if done:
                return
            done = True
            if not notification and not self.closed:
                if isinstance(outcome, RequestError):
                    self.deliver(encode_error(rid, outcome))
                else:
                    self.deliver(encode_result(rid, outcome))
            left = self.pending = self.pending - 1
            if left == MAX_PENDING - 1:
                self.room.set()
            elif left == 0:
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
                    await self.stream.send(data)
                if self.draining:
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.closed = True
        finally:
            self.writer_done.set()

    async def flush(self) -> None:
        """Wait until every accepted request is answered and the answers are sent."""
        await self.idle.wait()
        self.draining = True
        self.wake.set()
        await self.writer_done.wait()

    async def reader(self, tg: TaskGroup) -> None:
        max_line = self.server.max_line
        idle_timeout = self.server.idle_timeout
        buf = bytearray()
        # A line that has begun must end within the frame deadline: a client trickling bytes
        # (one a second keeps the idle timeout away forever) would hold its buffer and task.
        line_deadline: float | None = None
        with self.read_scope:
            while True:
                data = b""
                wait = idle_timeout
                if line_deadline is not None:
                    wait = min(wait, max(0.0, line_deadline - anyio.current_time()))
                with anyio.move_on_after(wait) as timeout:
                    try:
                        data = await self.stream.receive(READ_CHUNK)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        return
                if timeout.cancelled_caught:
                    if line_deadline is not None and anyio.current_time() >= line_deadline:
                        log.info(
                            "connection.frame_timeout",
                            connection=self.number,
                            bytes=len(buf),
                            seconds=self.server.frame_timeout,
                        )
                        return
                    if self.pending:
                        continue
                    log.info("connection.idle_timeout", connection=self.number)
                    return
                lines: list[bytes] = []
                if b"\n" in data:
                    # Split in one call; only the partial line before this chunk is copied.
                    if buf:
                        data = bytes(buf) + data
                        buf.clear()
                    *lines, rest = data.split(b"\n")
                    buf += rest
                else:
                    buf += data  # a line in pieces: appended, never copied again
                for line in lines:
                    if len(line) > max_line:
                        self._too_large(len(line))
                        return
                    if not self.room.is_set():
                        await self.room.wait()
                    waiter = self.handle_line(line, tg)
                    if waiter is not None:
                        await waiter
                if not buf:
                    line_deadline = None
                elif lines or line_deadline is None:
                    line_deadline = anyio.current_time() + self.server.frame_timeout
                if len(buf) > max_line:
                    # The rest of the line is not read: answer now and close.
                    self._too_large(len(buf))
                    return

    async def linger(self) -> None:
        """After a too-large line: say we are done writing, then read and discard (never buffer)
        what the client is still sending, for a moment, so it can read our answer; closing
        with unread data would make the kernel reset the connection and lose the answer."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self.stream.send_eof()
        with anyio.move_on_after(LINGER_SECONDS):
            with contextlib.suppress(
                anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
            ):
                while await self.stream.receive(READ_CHUNK):
                    pass

    def _too_large(self, seen: int) -> None:
        self.too_large = True
        limit = self.server.max_line
        log.warning("request.rejected", reason="too_large", connection=self.number, bytes=seen)
        err = TooLarge(
            f"request line exceeds the limit of {limit} bytes; connection closed",
            data={"limit": limit},
        )
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
            self.deliver(encode_error(protocol.request_id_of(e), e))
            return None
        reply = self.answer(req.id, req.notification)
        try:
            if req.method == "message.ingest" and self.principal is ADMIN:
                # The hot path, as `dispatch` would take it for a caller with every right.
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
Handler = Callable[[dict[str, Any]], Awaitable[Any] | Any]


class Server:
    """Listens on the Unix socket and serves connections until `stop` is called."""

    def __init__(
        self,
        pipeline: Pipeline,
        api: Api,
        socket_path: Path,
        socket_mode: int,
        *,
        max_line: int,
        max_connections: int,
        idle_timeout: float,
        frame_timeout: float = 30.0,
    ) -> None:
        self.pipeline = pipeline
        self.api = api
        self.socket_path = socket_path
        self.socket_mode = socket_mode
        self.max_line = max_line
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.connections: set[Connection] = set()
        self.accept_scope = anyio.CancelScope()
        self._counter = 0
        self.sync_methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "status": lambda p: api.status(protocol.parse_empty(p)),
            "sessions.list": lambda p: api.sessions_list(protocol.parse_list(p)),
            "sessions.get": lambda p: api.sessions_get(protocol.parse_get(p)),
        }
        # Methods answered by a coroutine, registered by the component that owns them (app.py
        # wires `config.reload` to daemon/reload.py).
        self.async_methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {}
        # Roles (daemon/auth.py), checked before every dispatch; app.py gives it the tokens and
        # opens `daemon.listeners` into `listeners` before serving.
        self.auth = Auth(api.store)
        self.listeners: list[Bound] = []

    def dispatch(
        self,
        req: protocol.Request,
        reply: Callable[[Any], None],
        tg: TaskGroup,
        conn: Connection | None = None,
    ) -> Awaitable[None] | None:
        """Route a request to its method. Raises RequestError for a request refused at once."""
        m = req.method
        if m == "auth.hello":
            reply(self.auth.hello(conn, req.params))
            return None
        if m.startswith("sessions.") or m == "memory.search":  # OpenClaw's spellings too
            params = aliases.canonical(m, req.params, self.pipeline.policies.tz)
            if params is not req.params:
                req = replace(req, params=params)
        req = self.auth.admit(req, conn)
        if m == "message.ingest":
            return self.pipeline.ingest(protocol.parse_ingest(req.params), reply)
        if m == "message.append":
            return self.pipeline.append(protocol.parse_append(req.params), reply)
        if m in self.sync_methods:
            reply(self.sync_methods[m](req.params))
            return None
        if m == "sessions.history":
            hp = protocol.parse_history(req.params)
            caps = self.auth.read_caps(conn)
            tg.start_soon(self._run_async, self.api.sessions_history(hp, caps), reply)
            return None
        if m == "sessions.archived":
            ap = protocol.parse_archived(req.params)
            caps = self.auth.read_caps(conn)
            tg.start_soon(self._run_async, self.api.sessions_archived(ap, caps), reply)
            return None
        if m == "sessions.reset":
            rp = protocol.parse_reset(req.params)
            tg.start_soon(self._run_async, self.api.sessions_reset(rp), reply)
            return None
        if m == "events.subscribe" and conn is not None:
            events = protocol.parse_subscribe(req.params, EVENTS)
            self.pipeline.events.subscribe(conn.number, conn.notify, events)
            reply({"subscribed": sorted(events)})
            return None
        if m in self.async_methods:
            tg.start_soon(self._run_async, self.async_methods[m](req.params), reply)
            return None
        raise MethodNotFound(f"unknown method {m!r}")

    async def _run_async(self, coro: Awaitable[Any], reply: Callable[[Any], None]) -> None:
        try:
            reply(await coro)
        except RequestError as e:
            reply(e)
        except Exception:
            log.exception("request.failed")
            reply(RequestError("internal error; the daemon logged the details"))

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket (mode from config), serve until stopped, then wait for connections."""
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                # A socket left by a daemon that died; we hold the state lock, so it is stale.
                os.unlink(path)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, self.socket_mode)
        async with anyio.create_task_group() as conns:
            async with listener:
                task_status.started()
                with self.accept_scope:
                    async with anyio.create_task_group() as accepting:
                        for b in self.listeners:
                            role = b.spec.principal.role if b.spec.principal else None
                            log.info("server.listening", address=b.address, role=role)
                            for sock in b.sockets:
                                accepting.start_soon(self._accept, sock, conns, b.spec.principal)
                        await self._accept(listener, conns, ADMIN)
            # The socket file is ours (not user data): take it away so clients fail fast.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            for b in self.listeners:
                await close_bound(b)
            log.info("server.stopped_accepting", connections=len(self.connections))

    async def _accept(
        self, listener: SocketListener, conns: TaskGroup, principal: Principal | None
    ) -> None:
        """Accept on one listener; its connections start with `principal` (None: must send
        auth.hello first)."""
        backoff = 0.0
        while True:
            try:
                stream = await listener.accept()
            except anyio.BrokenResourceError as e:
                # Out of descriptors (EMFILE): the waiting clients stay in the backlog; those
                # already connected go on being served, and accepting resumes once fds free up.
                cause = e.__cause__
                if not isinstance(cause, OSError) or cause.errno not in ACCEPT_TRANSIENT:
                    raise
                if backoff == 0.0:
                    log.warning(
                        "server.accept_failed",
                        error=cause.strerror,
                        connections=len(self.connections),
                    )
                backoff = min(ACCEPT_BACKOFF_MAX, max(0.05, backoff * 2))
                await anyio.sleep(backoff)
                continue
            backoff = 0.0
            conns.start_soon(self._serve_one, stream, principal)

    async def _serve_one(self, stream: SocketStream, principal: Principal | None = ADMIN) -> None:
        self._counter += 1
        async with stream:
            if len(self.connections) >= self.max_connections:
                log.warning("connection.refused", reason="too_many", limit=self.max_connections)
                err = ServerBusy(
                    f"too many connections (limit {self.max_connections}); retry later"
                )
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stream.send(encode_error(None, err))
                return
            conn = Connection(self, stream, self._counter)
            conn.principal = principal
            self.connections.add(conn)
            self.api.connections = len(self.connections)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conn.writer)
                    await conn.reader(tg)
                    await conn.flush()
                    tg.cancel_scope.cancel()
                if conn.too_large:
                    await conn.linger()
            finally:
                self.pipeline.events.unsubscribe(conn.number)
                self.connections.discard(conn)
                self.api.connections = len(self.connections)

    def stop(self) -> None:
        """Stop accepting; keep reading for a short grace so that requests still arriving are
        answered (1004, nothing stored: the pipeline is closed) instead of vanishing with the
        connection; every request accepted before is answered with its real outcome."""
        self.accept_scope.cancel()
        deadline = anyio.current_time() + SHUTDOWN_GRACE_SECONDS
        for conn in list(self.connections):
            conn.read_scope.deadline = min(conn.read_scope.deadline, deadline)

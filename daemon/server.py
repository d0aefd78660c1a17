"""The Unix-socket JSON-RPC server: listeners, connections, limits, dispatch.

Each connection (daemon/connection.py) has a reader (splits lines, enforces the line limit,
dispatches) and a writer (sends whatever answers are ready in one write). Answers may leave in a
different order than requests came in: they carry the request's id.

What a client may hold of the daemon (`daemon.limits`):
- Its budget: answers it has not read (bytes) and requests waiting for their answers. Over
  either, its requests are no longer read until it reads (the kernel's buffers fill and its sends
  block: backpressure), so a client that never reads cannot grow our memory. One whose answers
  have not moved for `stallTimeoutSeconds` is closed.
- A slot on its listener: each listener has its own limit, so connections to `daemon.listeners`
  never take the admin socket's slots. Over the limit, a connection gets an error line and is
  closed; one log line per streak of refusals.
- A connection that needs a token must send `auth.hello` within `helloTimeoutSeconds`.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import (
    ByteStream,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)

from daemon.auth import Auth
from daemon.config import LimitsConfig
from daemon.connection import Connection, Reply
from daemon.core import aliases, protocol
from daemon.core.protocol import encode_error
from daemon.core.roles import ADMIN, ADMIN_ONLY, Principal
from daemon.errors import (
    MethodNotFound,
    RequestError,
    ServerBusy,
)
from daemon.listeners import (
    Bound,
    Listener,
    Tls,
    bind_listeners,
    cheap_repr,
    claim_unix,
    close_bound,
    listen_on,
    remove_socket_file,
    secure,
)
from daemon.methods import METHODS, Call, Services

log = structlog.get_logger("daemon.server")

# Descriptors the daemon needs besides connections (store, journal, index, logs, listeners).
FD_RESERVE = 256
SHUTDOWN_GRACE_SECONDS = 1.0
# accept() failing for want of descriptors or memory: wait, then try again (never give up).
ACCEPT_TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_MAX = 1.0


@dataclass(slots=True)
class Gate:
    """One listener's door: who its connections start as, its limit, and its refusal streak."""

    name: str
    principal: Principal | None
    limit: Callable[[], int]  # read at each accept: a reload may change it
    open: int = 0
    refusing: int = 0  # refusals since the last connection it let in
    tls: Tls | None = None  # connections are TLS: handshake first (daemon/listeners.py)


@dataclass(frozen=True, slots=True)
class Sockets:
    """What the server serves, bound before it is built: daemon.socket and daemon.listeners."""

    path: Path
    main: socket.socket  # daemon.socket, bound; listening once served
    listeners: list[Bound]


async def bind_sockets(path: Path, mode: int, listeners: Sequence[Listener] = ()) -> Sockets:
    """Open daemon.socket (`mode`) and `listeners` (daemon.listeners) before serving. Raises
    ListenFailed naming the path or address (and closes what it opened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    main = claim_unix(path, mode)
    try:
        bound = await bind_listeners(list(listeners))
    except BaseException:
        main.close()
        remove_socket_file(path)
        raise
    return Sockets(path, main, bound)


class Server:
    """Listens on the Unix socket and serves connections until `stop` is called."""

    def __init__(
        self,
        services: Services,
        sockets: Sockets,
        auth: Auth,
        *,
        max_line: int,
        max_connections: int,
        idle_timeout: float,
        frame_timeout: float = 30.0,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.services = services
        self.pipeline = services.pipeline
        self.api = api = services.api
        self.sockets = sockets
        self.socket_path = sockets.path
        self.max_line = max_line
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.limits = limits if limits is not None else LimitsConfig()
        self.clients = api.clients  # what `status` and /metrics report of the connections
        self.connections: set[Connection] = set()
        self.handshakes: set[anyio.CancelScope] = set()  # TLS handshakes under way
        self.accept_scope = anyio.CancelScope()
        self._counter = 0
        self.auth = auth  # roles (daemon/auth.py), checked before every dispatch
        self.listeners = sockets.listeners  # daemon.listeners

    def _listener_limit(self, b: Bound) -> Callable[[], int]:
        own = b.spec.max_connections
        if own is not None:
            return lambda: own
        return lambda: self.limits.listenerConnections

    def dispatch(
        self, req: protocol.Request, reply: Reply, tg: TaskGroup, conn: Connection
    ) -> Awaitable[None] | None:
        """Route a request through its row of the method table (daemon/methods.py, whose
        invariants say the order). Raises RequestError for a request refused at once."""
        m = req.method
        params = aliases.canonical(m, req.params, self.pipeline.policies.tz)
        if params is not req.params:
            req = replace(req, params=params)
        method = METHODS.get(m)
        req = self.auth.admit(req, conn, ADMIN_ONLY if method is None else method.rule)
        if method is None:
            raise MethodNotFound(f"unknown method {m!r}")
        parsed = method.parse(req.params)
        call = Call(self.services, self.auth, conn, reply)
        if method.kind == "commit":
            waiter: Awaitable[None] | None = method.handler(call, parsed)
            return waiter
        if method.kind == "sync":
            reply(method.handler(call, parsed))
        else:
            tg.start_soon(self._run_async, method.handler(call, parsed), reply)
        return None

    async def _run_async(self, coro: Awaitable[Any], reply: Reply) -> None:
        try:
            reply(await coro)
        except RequestError as e:
            reply(e)
        except Exception:
            log.exception("request.failed")
            reply(RequestError("internal error; the daemon logged the details"))

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the bound sockets until stopped, then wait for connections."""
        listener = await listen_on(self.sockets.main)
        path = self.socket_path
        admin = Gate(f"unix:{path}", ADMIN, lambda: self.max_connections)
        gates = [
            (b, Gate(b.spec.name, b.spec.principal, self._listener_limit(b), tls=b.spec.tls))
            for b in self.listeners
        ]
        self._check_fd_limit([admin.limit(), *(g.limit() for _, g in gates)])
        async with anyio.create_task_group() as conns:
            async with listener:
                task_status.started()
                with self.accept_scope:
                    async with anyio.create_task_group() as accepting:
                        for b, gate in gates:
                            role = b.spec.principal.role if b.spec.principal else None
                            log.info(
                                "server.listening",
                                address=b.address,
                                role=role,
                                maxConnections=gate.limit(),
                                tls=gate.tls is not None,
                            )
                            for sock in b.sockets:
                                accepting.start_soon(self._accept, sock, conns, gate)
                        await self._accept(listener, conns, admin)
            remove_socket_file(path)
            for b in self.listeners:
                await close_bound(b)
            log.info("server.stopped_accepting", connections=len(self.connections))

    @staticmethod
    def _check_fd_limit(limits: list[int]) -> None:
        """Say so at start-up when the connection limits do not fit in the descriptors we may
        open (the store raised the soft limit to the hard one): accept would then fail with
        EMFILE before a listener is full, on the admin socket too."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        needed = sum(limits) + FD_RESERVE
        if soft != resource.RLIM_INFINITY and soft < needed:
            log.warning("server.fd_limit_low", limit=soft, needed=needed, connections=sum(limits))

    async def _accept(self, listener: SocketListener, conns: TaskGroup, gate: Gate) -> None:
        """Accept on one listener; its connections start with `gate.principal` (None: must
        send auth.hello first)."""
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
            conns.start_soon(self._serve_one, stream, gate)

    async def _serve_one(self, raw: SocketStream, gate: Gate) -> None:
        self._counter += 1
        hello_deadline = anyio.current_time() + self.limits.helloTimeoutSeconds
        cheap_repr(raw)
        async with raw:
            stream: ByteStream = raw
            if gate.tls is not None:
                # In this connection's task, not the accept loop: a stalled handshake holds
                # only itself, and only until the hello deadline (which it counts against).
                secured = None
                with anyio.move_on_after(self.limits.helloTimeoutSeconds) as handshaking:
                    self.handshakes.add(handshaking)  # `stop` ends them
                    try:
                        secured = await secure(raw, gate.name, gate.tls)
                    finally:
                        self.handshakes.discard(handshaking)
                if secured is None:
                    return
                stream = secured
            limit = gate.limit()
            if gate.open >= limit:
                if gate.refusing == 0:
                    log.warning(
                        "connection.refused", reason="too_many", listener=gate.name, limit=limit
                    )
                gate.refusing += 1
                err = ServerBusy(
                    f"too many connections on {gate.name} (limit {limit}); retry later"
                )
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await stream.send(encode_error(None, err))
                self.clients.refused += 1
                return
            if gate.refusing:
                log.info("connection.refusals_ended", listener=gate.name, refused=gate.refusing)
                gate.refusing = 0
            conn = Connection(self, stream, self._counter)
            conn.principal = gate.principal
            if gate.principal is None:
                conn.hello_deadline = hello_deadline
            gate.open += 1
            self.connections.add(conn)
            self.clients.open.add(conn)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conn.writer)
                    await conn.reader(tg)
                    await conn.flush()
                    tg.cancel_scope.cancel()
                if conn.too_large:
                    await conn.linger()
            finally:
                gate.open -= 1
                self.pipeline.events.unsubscribe(conn.number)
                self.connections.discard(conn)
                self.clients.open.discard(conn)

    def stop(self) -> None:
        """Stop accepting; keep reading for a short grace so that requests still arriving are
        answered (1004, nothing stored: the pipeline is closed) instead of vanishing with the
        connection; every request accepted before is answered with its real outcome."""
        self.accept_scope.cancel()
        deadline = anyio.current_time() + SHUTDOWN_GRACE_SECONDS
        for scope in self.handshakes:
            scope.cancel()  # nothing was asked yet: nothing to answer
        for conn in list(self.connections):
            conn.read_scope.deadline = min(conn.read_scope.deadline, deadline)

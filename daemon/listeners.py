"""Every socket the daemon serves JSON-RPC on: `daemon.socket` and `daemon.listeners`.

One set of rules for all of them, so the admin socket and the extra ones cannot drift apart:
- A Unix socket is created under umask 0177 (never a moment with looser permissions), then
  given its mode. A socket file already at the path is taken away only when nobody answers on
  it (left by a daemon that died); one that answers belongs to another process, and anything
  that is not a socket is never touched: both stop start-up with ListenFailed (exit 1).
- A TCP listener opens one socket per address family its host gives. Beyond loopback it needs
  `tls` (config.parse_tcp_address); its connections always start without a role (auth.hello).
- Everything is bound before the daemon serves: a taken port or path stops start-up with a
  message naming it, and what was already opened is closed again.

TLS (`tls: {cert, key, clientCa?}`): the certificate files are read into an `ssl.SSLContext`
at start-up (a bad path or file is a ConfigError naming the key) and again on every reload, so
that a renewed certificate is taken by new connections after SIGHUP without a restart; the
handshake itself runs in each connection's own task (daemon/server.py), never in the accept
loop, so a client that stalls it holds only its own connection, for the hello timeout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog
from anyio.abc import ByteStream, SocketAttribute, SocketListener, SocketStream
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from daemon.config import Config, TlsConfig
from daemon.config_fields import parse_tcp_address
from daemon.core.keys import normalize_agent_id
from daemon.core.protocol import encode_error
from daemon.core.roles import Principal
from daemon.errors import ConfigError, InvalidRequest, ListenFailed, os_reason

log = structlog.get_logger("daemon.listeners")

# The first byte of every TLS record that opens a handshake; anything else on a TLS port is a
# client speaking plain JSON-RPC, which is told so in plain text before the connection closes.
TLS_HANDSHAKE_RECORD = 0x16
BACKLOG = 65536  # as anyio's create_unix_listener (the kernel caps it at somaxconn)
LINGER_SECONDS = 2.0  # how long a refused plain-text client may take to read why
DRAIN_CHUNK = 256 * 1024


# ---------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a listener's certificate, key and (optional) client CA are; `where` names the
    config key in errors (`daemon.listeners[2].tls`)."""

    cert: Path
    key: Path
    client_ca: Path | None
    where: str


@dataclass(slots=True)
class Tls:
    """A listener's TLS: the context new connections are wrapped with (swapped on reload), and
    its streak of failed handshakes (logged once per streak)."""

    files: TlsFiles
    context: ssl.SSLContext
    failing: int = 0

    def handshake_failed(self, listener: str, reason: str) -> None:
        if self.failing == 0:
            log.warning("tls.handshake_failed", listener=listener, reason=reason)
        self.failing += 1

    def handshake_done(self, listener: str) -> None:
        if self.failing:
            log.info("tls.handshake_failures_ended", listener=listener, failed=self.failing)
            self.failing = 0


class _EncryptedKey(Exception):
    """load_cert_chain asked for a password: the key file is encrypted."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block the daemon.
    raise _EncryptedKey


def _check_pem(path: Path, where: str, marker: bytes, what: str) -> None:
    """ConfigError naming `where` unless `path` is readable and holds a PEM `marker` block."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {os_reason(e)}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise ConfigError(f"{where}: {path} holds no PEM {what}")


def tls_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context from `files`. Raises ConfigError naming the key (`.tls.cert`,
    `.tls.key`, `.tls.clientCa`) when a file cannot be read or does not fit. Blocking (reads
    files): call it at start-up or from a worker thread."""
    w = files.where
    _check_pem(files.cert, f"{w}.cert", b"CERTIFICATE-----", "certificate")
    _check_pem(files.key, f"{w}.key", b"PRIVATE KEY-----", "private key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(
            f"{w}.key: {files.key} is encrypted; give an unencrypted key file, readable only "
            "by sessiond's user"
        ) from None
    except ssl.SSLError as e:
        raise ConfigError(
            f"{w}.key: {files.key} does not fit the certificate in {files.cert} ({e.reason})"
        ) from None
    if files.client_ca is not None:
        _check_pem(files.client_ca, f"{w}.clientCa", b"CERTIFICATE-----", "certificate")
        try:
            ctx.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as e:
            raise ConfigError(f"{w}.clientCa: cannot load {files.client_ca} ({e.reason})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def load_tls(tc: TlsConfig, where: str) -> Tls:
    files = TlsFiles(
        Path(tc.cert).expanduser(),
        Path(tc.key).expanduser(),
        None if tc.clientCa is None else Path(tc.clientCa).expanduser(),
        where,
    )
    return Tls(files, tls_context(files))


def tls_reloader(specs: list[Listener]) -> Callable[[Config], Callable[[], None]]:
    """A reload preparer (daemon/reload.py): re-read the running listeners' certificate files
    (their paths are restart-only; the files' contents are not), so that a renewed certificate
    serves new connections after a reload. A file that cannot be read rejects the reload and
    the running certificates stay."""

    def prepare(_new: Config) -> Callable[[], None]:
        fresh = [(s.tls, tls_context(s.tls.files)) for s in specs if s.tls is not None]

        def apply() -> None:
            for tls, ctx in fresh:
                tls.context = ctx

        return apply

    return prepare


class Replay(ByteStream):
    """A stream whose first bytes were already read (to tell TLS from plain text): they are
    received again first, then the rest from the stream."""

    def __init__(self, stream: ByteStream, first: bytes) -> None:
        self.stream = stream
        self.first = first

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.first:
            data, self.first = self.first[:max_bytes], self.first[max_bytes:]
            return data
        return await self.stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.stream.send(item)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def secure(raw: ByteStream, listener: str, tls: Tls) -> ByteStream | None:
    """The TLS stream over `raw`, or None when the handshake fails or the caller's timeout
    cancels it: logged once per streak of failures, never with a traceback; a client that
    spoke plain JSON-RPC is told so in plain text. Runs in the connection's own task."""
    secured: ByteStream | None = None
    reason = "no TLS handshake within daemon.limits.helloTimeoutSeconds"
    try:
        first = await raw.receive(1)
        if first[0] != TLS_HANDSHAKE_RECORD:
            reason = "plain text on a TLS listener"
            err = InvalidRequest(
                f"{listener} speaks TLS: connect with tls://HOST:PORT; connection closed"
            )
            await raw.send(encode_error(None, err))
            await drain(raw, LINGER_SECONDS)
            return None
        secured = await TLSStream.wrap(
            Replay(raw, first),
            server_side=True,
            ssl_context=tls.context,
            standard_compatible=False,
        )
    except ssl.SSLError as e:
        reason = e.reason or type(e).__name__
    except anyio.EndOfStream:
        reason = "closed by the client"
    except (anyio.BrokenResourceError, OSError) as e:
        reason = str(e.__cause__ or e) or type(e).__name__
    finally:
        if secured is None:
            tls.handshake_failed(listener, reason)
        else:
            tls.handshake_done(listener)
    return secured


async def drain(stream: ByteStream, seconds: float) -> None:
    """Say we are done writing, then read and discard (never buffer) what the client is still
    sending, for `seconds`: closing with unread data would make the kernel reset the
    connection and lose our last answer."""
    with contextlib.suppress(
        anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, NotImplementedError
    ):
        await stream.send_eof()  # NotImplementedError: TLS before 1.3
    with anyio.move_on_after(seconds):
        with contextlib.suppress(
            anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
        ):
            while await stream.receive(DRAIN_CHUNK):
                pass


# ---------------------------------------------------------------------------------------------
# Listeners


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket served besides daemon.socket, and the principal its connections start with."""

    name: str  # "unix:/run/sessiond/work.sock", "tcp:127.0.0.1:7700"
    principal: Principal | None
    path: Path | None = None
    mode: int = 0o660
    host: str = ""
    port: int = 0
    max_connections: int | None = None  # None: daemon.limits.listenerConnections
    tls: Tls | None = None


@dataclass(slots=True)
class Bound:
    """A listener with its open sockets (one per address family a host name gives)."""

    spec: Listener
    sockets: list[SocketListener] = field(default_factory=list)
    address: str = ""


def listeners_of(cfg: Config) -> list[Listener]:
    """The listeners `cfg` asks for. Raises ConfigError naming the key when a listener's TLS
    files cannot be read or do not fit (reads them: start-up only)."""
    out = []
    for i, lc in enumerate(cfg.daemon.listeners):
        principal = None
        if lc.role is not None:
            agents = frozenset(normalize_agent_id(a) for a in lc.agents) or None
            principal = Principal(lc.role, agents, f"listener #{i}")
        if lc.unix is not None:
            path = Path(lc.unix).expanduser()
            mode = 0o660 if lc.mode is None else lc.mode
            out.append(
                Listener(
                    f"unix:{path}",
                    principal,
                    path=path,
                    mode=mode,
                    max_connections=lc.maxConnections,
                )
            )
        else:
            assert lc.tcp is not None
            tls = None if lc.tls is None else load_tls(lc.tls, f"daemon.listeners[{i}].tls")
            host, port = parse_tcp_address(lc.tcp, tls=tls is not None)
            out.append(
                Listener(
                    f"{'tls' if tls else 'tcp'}:{lc.tcp}",
                    principal,
                    host=host,
                    port=port,
                    max_connections=lc.maxConnections,
                    tls=tls,
                )
            )
    return out


async def bind_listeners(specs: list[Listener]) -> list[Bound]:
    """Open every listener before the daemon starts serving; raises ListenFailed (and closes
    what it opened) so that a taken port or path stops start-up with a clear message."""
    bound: list[Bound] = []
    complete = False
    try:
        for spec in specs:
            bound.append(await _bind(spec))
        complete = True
    finally:
        if not complete:  # an error or a cancellation: close what was opened, then let it go
            for b in bound:
                await close_bound(b)
    return bound


async def _bind(spec: Listener) -> Bound:
    if spec.path is not None:
        return Bound(spec, [await bind_unix(spec.path, spec.mode)], str(spec.path))
    multi = await bind_tcp(spec.host, spec.port)
    socks = list(multi.listeners)
    port = socks[0].extra(SocketAttribute.local_port) if socks else spec.port
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return Bound(spec, [s for s in socks if isinstance(s, SocketListener)], f"{host}:{port}")


async def bind_tcp(host: str, port: int, what: str = "") -> MultiListener[SocketStream]:
    """Listen on `host`:`port` (every address the name has). Raises ListenFailed naming the
    address (and `what` listens there, e.g. "daemon.metrics") when it is taken or refused."""
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as e:
        where = f"{host}:{port}" + (f" ({what})" if what else "")
        raise ListenFailed(f"cannot listen on {where}: {os_reason(e)}") from None


async def bind_unix(path: Path, mode: int) -> SocketListener:
    """Listen on the Unix socket `path` with `mode`. Raises ListenFailed when the path is taken
    (by a live socket or by something that is not a socket) or cannot be bound."""
    return await listen_on(claim_unix(path, mode))


def claim_unix(path: Path, mode: int) -> socket.socket:
    """Bind the Unix socket `path` with `mode`, not listening yet: the path is ours and checked,
    but nobody can connect until `listen_on` (daemon.socket: not before the daemon handles
    SIGTERM). Raises ListenFailed like `bind_unix`; the caller owns the socket."""
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise ListenFailed(f"cannot listen on {path}: {os_reason(e)}") from None
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, mode)
    except OSError as e:
        sock.close()
        remove_socket_file(path)  # the file we just made
        raise ListenFailed(f"cannot set mode {mode:04o} on {path}: {os_reason(e)}") from None
    return sock


async def listen_on(sock: socket.socket) -> SocketListener:
    """Start accepting on a socket from `claim_unix`; the listener owns it from now on."""
    try:
        sock.listen(BACKLOG)
        return await SocketListener.from_socket(sock)
    except BaseException:
        sock.close()
        raise


def _clear_stale_socket(path: Path) -> None:
    """A socket file nobody answers on is left by a daemon that died: take it away. One that
    answers belongs to another process (also for daemon.socket: it may be outside our locked
    state folder)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenFailed(f"cannot listen on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ListenFailed(f"cannot listen on {path}: another process is serving on it")


async def close_bound(b: Bound) -> None:
    for s in b.sockets:
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await s.aclose()
    if b.spec.path is not None:
        remove_socket_file(b.spec.path)


def remove_socket_file(path: Path) -> None:
    """Take away a socket file we bound (ours, not user data), so that clients fail fast."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

"""A small blocking client for sessiond's socket, for the CLI and for channel adapters.

    from daemon.client import Client
    with Client("/var/lib/sessiond/sessiond.sock") as c:
        ack = c.call("message.ingest", {"channel": "telegram", "chatType": "direct",
                                        "peer": "123", "messageId": "m1", "text": "hi"})

`call` returns the result or raises `RpcError` with the JSON-RPC code. After `events.subscribe`,
`notifications()` yields the daemon's event notifications as they arrive. The answer to
`message.ingest` means the message is durably stored; on `RpcError` 1004 nothing was stored and
the adapter should retry with the same messageId (a retry is recognised as a duplicate).

A remote adapter reaches a TLS listener (`daemon.listeners` with `tls`) as
`Client("tls://sessiond.example:7443", token=..., ca="ca.pem")`, adding `cert=` and `key=` when
the listener asks for client certificates (`clientCa`).
"""

from __future__ import annotations

import collections
import itertools
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from daemon.errors import os_reason


class RpcError(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class ConnectError(Exception):
    """The daemon's socket cannot be reached."""


class Client:
    """One connection to the daemon; not thread-safe. Use as a context manager."""

    def __init__(
        self,
        socket_path: str | Path,
        timeout: float | None = 60.0,
        token: str | None = None,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> None:
        """`socket_path` is a Unix socket path, `tcp://HOST:PORT` (a loopback listener of
        `daemon.listeners`) or `tls://HOST:PORT` (a listener with `tls`); with `token`, the
        connection authenticates first (auth.hello). For TLS, the daemon's certificate is
        checked against the system's CAs, or against `ca` (a PEM file) when given, and must
        name HOST; `cert` (and `key`, when the key is not in the same file) is the client's own
        certificate, for listeners with `clientCa`."""
        self.path = str(socket_path)
        scheme, sep, rest = self.path.partition("://")
        tls = sep != "" and scheme == "tls"
        if not tls and (ca is not None or cert is not None or key is not None):
            raise ValueError("ca, cert and key apply to tls://HOST:PORT addresses only")
        context = _tls_context(ca, cert, key) if tls else None
        try:
            if sep and scheme in ("tcp", "tls"):
                host, _, port = rest.rpartition(":")
                if not port.isdigit() or not host:
                    raise OSError(0, f"expected {scheme}://HOST:PORT")
                host = host.strip("[]")
                self.sock = socket.create_connection((host, int(port)), timeout=timeout)
                if context is not None:
                    self.sock = _handshake(context, self.sock, host, self.path)
            else:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                try:
                    self.sock.connect(self.path)
                except OSError:
                    self.sock.close()
                    raise
        except FileNotFoundError:
            raise ConnectError(
                f"cannot connect to sessiond at {self.path}: no such socket "
                "(is the daemon running? start it with `sessiond run`)"
            ) from None
        except ConnectionRefusedError:
            raise ConnectError(
                f"cannot connect to sessiond at {self.path}: nobody is listening "
                "(the daemon is not running; it may have stopped uncleanly; start it with "
                "`sessiond run`)"
            ) from None
        except OSError as e:
            raise ConnectError(
                f"cannot connect to sessiond at {self.path}: {os_reason(e)}"
            ) from None
        self._ids = itertools.count(1)
        self._buf = b""
        # A TLS listener with clientCa refuses a certificate after the handshake, and its alert
        # may not reach us: a close before the first answer then gets a hint.
        self._tls_unanswered = tls
        # Notifications that arrived while `call` waited for its answer, oldest first.
        self._notes: collections.deque[dict[str, Any]] = collections.deque()
        if token is not None:
            complete = False
            try:
                self.call("auth.hello", {"token": token})
                complete = True
            finally:
                if not complete:
                    self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        rid = next(self._ids)
        req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        try:
            self.sock.sendall(orjson.dumps(req) + b"\n")
        except ssl.SSLError as e:
            raise ConnectError(_tls_ended(e)) from None
        while True:
            msg = self._read_message()
            if "method" in msg:  # a notification (events.subscribe), not our answer
                self._notes.append(msg)
                continue
            # id null: the daemon could not read the request at all (JSON-RPC -32700).
            if msg.get("id") == rid or msg.get("id") is None:
                break
        if "error" in msg:
            err = msg["error"]
            raise RpcError(int(err.get("code", 0)), str(err.get("message", "")), err.get("data"))
        return msg.get("result")

    def notifications(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield notifications ({"method", "params"}) as they arrive, waiting up to `timeout`
        seconds for each (None: for ever). Ends with ConnectError when the daemon closes the
        connection, TimeoutError when nothing arrives in time."""
        self.sock.settimeout(timeout)
        while True:
            while self._notes:
                yield self._notes.popleft()
            msg = self._read_message()
            if "method" in msg:
                yield msg

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(1 << 20)
            except ssl.SSLError as e:
                raise ConnectError(_tls_ended(e)) from None
            if not chunk:
                if self._tls_unanswered:
                    raise ConnectError(
                        "the daemon closed the TLS connection before answering; if its "
                        "listener has clientCa, it " + CLIENT_CERT_NEEDED
                    )
                raise ConnectError("the daemon closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        self._tls_unanswered = False
        obj = orjson.loads(line)
        if not isinstance(obj, dict):
            raise ConnectError("the daemon sent something that is not a JSON-RPC response")
        return obj


CLIENT_CERT_NEEDED = (
    "asks for a client certificate signed by its CA (--tls-cert FILE, --tls-key FILE; cert=, key=)"
)


def _tls_context(
    ca: str | Path | None, cert: str | Path | None, key: str | Path | None
) -> ssl.SSLContext:
    """A client context: the system's CAs or `ca`, and our own certificate when given. Raises
    ConnectError naming the file that cannot be used."""
    try:
        ctx = ssl.create_default_context(cafile=None if ca is None else str(ca))
    except (OSError, ssl.SSLError) as e:
        raise ConnectError(f"cannot use the CA file {ca}: {_why(e)}") from None
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            files = str(cert) if key is None else f"{cert} and {key}"
            raise ConnectError(f"cannot use the client certificate {files}: {_why(e)}") from None
    elif key is not None:
        raise ValueError("key needs cert (the client certificate it belongs to)")
    return ctx


def _handshake(ctx: ssl.SSLContext, sock: socket.socket, host: str, address: str) -> ssl.SSLSocket:
    """`sock` with TLS on it; closes it and raises ConnectError when the handshake fails."""
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        sock.close()
        raise ConnectError(
            f"cannot connect to sessiond at {address}: its certificate is not trusted "
            f"({e.verify_message}); give the CA that signed it (--tls-ca FILE)"
        ) from None
    except (OSError, ssl.SSLError) as e:
        sock.close()
        raise ConnectError(
            f"cannot connect to sessiond at {address}: TLS handshake failed ({_why(e)}); "
            "is it a TLS listener?"
        ) from None


def _why(e: OSError) -> str:
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e)
    return os_reason(e)


def _tls_ended(e: ssl.SSLError) -> str:
    why = _why(e)
    if "CERTIFICATE" in why or "UNKNOWN_CA" in why:  # our certificate is missing or refused
        return f"the daemon refused the TLS connection ({why}): this listener {CLIENT_CERT_NEEDED}"
    return f"the daemon ended the TLS connection ({why})"

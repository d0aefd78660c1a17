"""A small blocking client for sessiond's socket, for the CLI and for channel adapters.

    from daemon.client import Client
    with Client("/var/lib/sessiond/sessiond.sock") as c:
        ack = c.call("message.ingest", {"channel": "telegram", "chatType": "direct",
                                        "peer": "123", "messageId": "m1", "text": "hi"})

`call` returns the result or raises `RpcError` with the JSON-RPC code. After `events.subscribe`,
`notifications()` yields the daemon's event notifications as they arrive. The answer to
`message.ingest` means the message is durably stored; on `RpcError` 1004 nothing was stored and
the adapter should retry with the same messageId (a retry is recognised as a duplicate).
"""

from __future__ import annotations

import collections
import itertools
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson


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
        self, socket_path: str | Path, timeout: float | None = 60.0, token: str | None = None
    ) -> None:
        """`socket_path` is a Unix socket path or `tcp://HOST:PORT` (a loopback listener of
        `daemon.listeners`); with `token`, the connection authenticates first (auth.hello)."""
        self.path = str(socket_path)
        tcp = self.path.startswith("tcp://")
        family = socket.AF_INET6 if tcp and self.path[6:].startswith("[") else socket.AF_INET
        self.sock = socket.socket(family if tcp else socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            if tcp:
                host, _, port = self.path[6:].rpartition(":")
                if not port.isdigit():
                    raise OSError(0, "expected tcp://HOST:PORT")
                self.sock.connect((host.strip("[]"), int(port)))
            else:
                self.sock.connect(self.path)
        except FileNotFoundError:
            self.sock.close()
            raise ConnectError(
                f"cannot connect to sessiond at {self.path}: no such socket "
                "(is the daemon running? start it with `sessiond run`)"
            ) from None
        except ConnectionRefusedError:
            self.sock.close()
            raise ConnectError(
                f"cannot connect to sessiond at {self.path}: nobody is listening "
                "(the daemon is not running; it may have stopped uncleanly; start it with "
                "`sessiond run`)"
            ) from None
        except OSError as e:
            self.sock.close()
            raise ConnectError(f"cannot connect to sessiond at {self.path}: {e.strerror}") from None
        self._ids = itertools.count(1)
        self._buf = b""
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
        self.sock.sendall(orjson.dumps(req) + b"\n")
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
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectError("the daemon closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        obj = orjson.loads(line)
        if not isinstance(obj, dict):
            raise ConnectError("the daemon sent something that is not a JSON-RPC response")
        return obj

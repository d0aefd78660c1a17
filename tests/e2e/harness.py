"""Running the real daemon for end-to-end tests: a process, its socket, and what it left on disk.

`Daemon` starts `python -m daemon run` on a state folder, waits until its socket answers, and gives
tests a blocking `Client`, a raw socket for bytes the client would never send, and the two ways a
daemon ends (SIGTERM, SIGKILL). Nothing here knows the daemon's internals: only the SPEC's files,
socket and protocol.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from daemon.client import Client

READY_TIMEOUT = 60.0  # the daemon must accept connections within this (generous: a loaded machine)
STOP_TIMEOUT = 30.0  # SIGTERM must end the daemon within this
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


class DaemonFailed(AssertionError):
    """The daemon did not start, or ended when a test expected it to run."""


# ---------------------------------------------------------------------------------------------
# A raw connection


class RawConnection:
    """A bare Unix-socket connection: send any bytes, read answers line by line."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.buf = b""
        self._ids = itertools.count(1)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(
        self, method: str, params: dict[str, Any] | None = None, *, rid: Any = None
    ) -> Any:
        """Send one JSON-RPC request (no wait); return its id."""
        if rid is None:
            rid = next(self._ids)
        req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        self.send(orjson.dumps(req) + b"\n")
        return rid

    def read(self) -> dict[str, Any]:
        """The next answer line, parsed. Raises EOFError when the daemon closed the connection."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        obj = orjson.loads(line)
        assert isinstance(obj, dict), f"an answer must be a JSON object, got {line[:200]!r}"
        assert obj.get("jsonrpc") == "2.0", f"an answer must say jsonrpc 2.0: {obj}"
        return obj

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return its whole answer (result or error)."""
        rid = self.send_request(method, params)
        answer = self.read()
        assert answer.get("id") == rid, f"expected the answer to request {rid}, got {answer}"
        return answer

    def is_closed_by_daemon(self, timeout: float = 5.0) -> bool:
        """True when the daemon closes the connection within `timeout` (no more bytes to read)."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


# ---------------------------------------------------------------------------------------------
# Load


class PipelinedSender(threading.Thread):
    """Keeps `window` message.ingest requests in flight on one connection until it closes."""

    def __init__(self, socket_path: Path, name: str, peers: int, window: int = 32) -> None:
        super().__init__(daemon=True)
        self.path = socket_path
        self.prefix = name
        self.peers = peers
        self.window = window
        self.stopping = threading.Event()
        self.acked: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self.sent: dict[str, dict[str, Any]] = {}
        self.failure: BaseException | None = None
        self._n = 0

    def next_params(self) -> dict[str, Any]:
        self._n += 1
        mid = f"{self.prefix}-{self._n}"
        return ingest_params(f"peer{self._n % self.peers}", f"text {mid}", messageId=mid)

    def run(self) -> None:
        try:
            conn = RawConnection(self.path, timeout=20)
        except OSError:
            return
        try:
            self._run(conn)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pass  # the daemon went away: what is pending stays unanswered
        except Exception as e:  # reported by the test
            self.failure = e
        finally:
            conn.close()

    def _run(self, conn: RawConnection) -> None:
        while True:
            while not self.stopping.is_set() and len(self.pending) < self.window:
                p = self.next_params()
                self.pending[p["messageId"]] = p
                self.sent[p["messageId"]] = p
                conn.send_request("message.ingest", p, rid=p["messageId"])
            if not self.pending:
                return
            a = conn.read()
            mid = a["id"]
            self.pending.pop(mid)
            if "result" in a:
                self.acked[mid] = a["result"]
            else:
                self.errors[mid] = a["error"]


# ---------------------------------------------------------------------------------------------
# The daemon process


class Daemon:
    """One state folder and the daemon processes run on it, one at a time."""

    def __init__(
        self,
        workdir: Path,
        *,
        config: str | dict[str, Any] | None = None,
        state_dir: Path | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.state_dir = state_dir or workdir / "state"
        self.socket = self.state_dir / "sessiond.sock"
        if len(str(self.socket)) > SOCKET_PATH_MAX:
            raise DaemonFailed(f"socket path too long for AF_UNIX: {self.socket}")
        self.config_path = workdir / "config.json5"
        # Always pass a config file, so the host's ~/.config or /etc never leaks into a test.
        if not self.config_path.exists() or config is not None:
            text = config if isinstance(config, str) else json.dumps(config or {}, indent=2)
            self.config_path.write_text(text)
        self.wrapper = wrapper or []
        self.env: dict[str, str] = {}  # added to daemon_env() (e.g. SESSIOND_FAILPOINTS)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the daemon's own pid (differs from proc.pid under strace)
        self.runs = 0
        self._clients: list[Client | RawConnection] = []

    # --- life cycle -------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            *self.wrapper,
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--state-dir",
            str(self.state_dir),
            "--config",
            str(self.config_path),
            "--log-format",
            "json",
        ]

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start a daemon process on this state folder without waiting for it."""
        self.runs += 1
        out = open(self.workdir / f"daemon-{self.runs}.out", "wb")  # noqa: SIM115
        err = open(self.workdir / f"daemon-{self.runs}.err", "wb")  # noqa: SIM115
        try:
            return subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env={**daemon_env(), **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        finally:
            out.close()
            err.close()

    def start(self) -> Daemon:
        """Start the daemon and wait until its socket answers `status`."""
        assert self.proc is None or self.proc.poll() is not None, "the daemon is already running"
        self.pid = None
        self.proc = self.spawn()
        self.wait_ready()
        return self

    restart = start

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DaemonFailed(
                    f"the daemon exited with {self.proc.returncode} before it was ready:\n"
                    + self.output()
                )
            try:
                if self.pid is None:
                    with RawConnection(self.socket, timeout=2.0) as conn:
                        answer = conn.call("status")
                    self.pid = int(answer["result"]["pid"])
                # The socket serves before start-up is over; `daemon.started` is logged last,
                # right before the daemon listens for SIGTERM (stopping earlier kills it outright,
                # which test_startup checks on its own).
                if self.started_logged():
                    return
            except (FileNotFoundError, ConnectionRefusedError, EOFError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise DaemonFailed(f"the socket did not accept within {timeout}s:\n{self.output()}")
            time.sleep(0.02)

    def started_logged(self) -> bool:
        out = self.workdir / f"daemon-{self.runs}.out"
        return b'"event":"daemon.started"' in out.read_bytes()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the daemon and wait for it; return its exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL the daemon (a crash) and wait for it; return its exit code."""
        return self._end(signal.SIGKILL, STOP_TIMEOUT)

    def _end(self, sig: signal.Signals, timeout: float) -> int:
        assert self.proc is not None, "the daemon was never started"
        self.close_clients()
        if self.proc.poll() is None:
            os.kill(self.pid or self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise DaemonFailed(
                    f"the daemon did not exit within {timeout}s of {sig.name}:\n{self.output()}"
                ) from None
        return self.proc.returncode

    def close_clients(self) -> None:
        for c in self._clients:
            with contextlib.suppress(OSError):
                c.close()
        self._clients.clear()

    def cleanup(self) -> None:
        """Whatever happened in the test: no daemon process outlives it."""
        self.close_clients()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid or self.proc.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()

    # --- talking to it ----------------------------------------------------------------------

    def client(self, timeout: float = 30.0) -> Client:
        c = Client(self.socket, timeout=timeout)
        self._clients.append(c)
        return c

    def raw(self, timeout: float = 10.0) -> RawConnection:
        c = RawConnection(self.socket, timeout=timeout)
        self._clients.append(c)
        return c

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One request on a fresh connection; the result, or RpcError."""
        with Client(self.socket, timeout=30.0) as c:
            return c.call(method, params)

    # --- what it left behind ----------------------------------------------------------------

    def output(self) -> str:
        parts = []
        for n in range(1, self.runs + 1):
            for stream in ("out", "err"):
                p = self.workdir / f"daemon-{n}.{stream}"
                if p.exists() and p.stat().st_size:
                    text = p.read_text(errors="replace")
                    parts.append(f"--- run {n} std{stream} ---\n{text[-6000:]}")
        return "\n".join(parts)

    def logs(self, run: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of one run (default: the latest)."""
        p = self.workdir / f"daemon-{run or self.runs}.out"
        out = []
        for line in p.read_bytes().splitlines():
            if line.strip():
                out.append(orjson.loads(line))
        return out

    def sessions_dir(self, agent: str = "main") -> Path:
        return self.state_dir / "agents" / agent / "sessions"

    def transcripts(self, agent: str = "main") -> dict[Path, list[dict[str, Any]]]:
        """Every active transcript of an agent, each read strictly (see `read_transcript`)."""
        folder = self.sessions_dir(agent)
        return {p: read_transcript(p) for p in sorted(folder.glob("*.jsonl"))}

    def registry(self, agent: str = "main") -> dict[str, Any]:
        doc = orjson.loads((self.sessions_dir(agent) / "sessions.json").read_bytes())
        assert isinstance(doc, dict)
        return doc


def daemon_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIOND_", "NOTIFY_"))}
    env.pop("STATE_DIRECTORY", None)
    env["PYTHONUNBUFFERED"] = "1"
    # The never-delete guard (daemon/guard.py): the daemon refuses, and reports, any removal of
    # user data; tests/conftest.py names the file that collects the reports.
    env["SESSIOND_DELETE_GUARD"] = os.environ.get("SESSIOND_DELETE_GUARD", "1")
    return env


def short_workdir(tmp_path: Path) -> Path:
    """tmp_path, unless the socket path inside it would be too long for AF_UNIX."""
    if len(str(tmp_path / "state" / "sessiond.sock")) <= SOCKET_PATH_MAX:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="sd-"))


# ---------------------------------------------------------------------------------------------
# Transcripts as the SPEC describes them

ENTRY_ID = re.compile(r"[0-9a-f]{8}")


def read_transcript(path: Path) -> list[dict[str, Any]]:
    """All lines of a transcript; fails on a line that is not JSON or a missing final newline."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name} does not end with a newline: {data[-80:]!r}"
    out = []
    for n, line in enumerate(data.split(b"\n")[:-1], 1):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise AssertionError(f"{path.name} line {n} is not JSON ({e}): {line[:200]!r}") from e
        assert isinstance(obj, dict), f"{path.name} line {n} is not an object"
        out.append(obj)
    return out


def is_utc_iso(value: Any) -> bool:
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return dt.utcoffset() == timedelta(0)


def check_v3(path: Path, lines: list[dict[str, Any]]) -> None:
    """Header first, then message entries with 8-hex ids chained by parentId."""
    assert lines, f"{path.name} is empty"
    header = lines[0]
    assert header.get("type") == "session", f"{path.name}: first line is not a header: {header}"
    assert header.get("version") == 3
    assert header.get("id") == path.stem, "the header id is the session id and the file name"
    assert is_utc_iso(header.get("timestamp")), header
    assert isinstance(header.get("cwd"), str) and header["cwd"]
    assert isinstance(header.get("sessionKey"), str) and header["sessionKey"]
    check_chain(path, lines[1:])


def check_chain(path: Path, entries: list[dict[str, Any]]) -> None:
    parent = None
    seen = set()
    for i, e in enumerate(entries):
        assert isinstance(e.get("type"), str), f"{path.name} entry {i}: {e}"
        eid = e.get("id")
        assert isinstance(eid, str) and ENTRY_ID.fullmatch(eid), f"{path.name}: bad id {eid!r}"
        assert eid not in seen, f"{path.name}: entry id {eid} used twice"
        seen.add(eid)
        assert e.get("parentId") == parent, (
            f"{path.name} entry {i} ({eid}): parentId {e.get('parentId')!r}, expected {parent!r}"
        )
        assert is_utc_iso(e.get("timestamp")), f"{path.name} entry {i}: {e.get('timestamp')!r}"
        parent = eid


def message_ids(lines: list[dict[str, Any]]) -> Iterator[str]:
    """The adapter message ids (origin.messageId) of a transcript's entries, in order."""
    for e in lines:
        origin = e.get("origin")
        if isinstance(origin, dict) and isinstance(origin.get("messageId"), str):
            yield origin["messageId"]


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o777


def ingest_params(peer: str, text: str, *, channel: str = "telegram", **extra: Any) -> dict:
    return {"channel": channel, "chatType": "direct", "peer": peer, "text": text, **extra}

"""The daemon's end of the index worker (daemon/search/worker.py): starting it, asking it for a
pass, stopping it.

`spawn` starts `python -m daemon.search.worker` with the daemon's interpreter and environment
(so the tests' delete guard and failpoints reach it too) and always stops and reaps it when the
block ends, also when the block is cancelled: the worker is asked to stop (a pass in progress
commits first) and is killed if it has not exited within STOP_SECONDS. The worker's stdin and
stdout are the pipe (one JSON object per line); it logs to a copy of the daemon's log stream in the
daemon's format, and its stderr is the daemon's.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from daemon import logs

log = structlog.get_logger("daemon.search")

MODULE = "daemon.search.worker"
STOP_SECONDS = 5.0  # a worker asked to stop is killed if it has not exited by then
EXIT_SECONDS = 5.0  # a worker that closed its stdout is killed if it has not exited by then
MAX_REPLY = 1 << 20  # bytes in one reply line (a few hundred in practice)
STOP = orjson.dumps({"op": "stop"}) + b"\n"

Identity = tuple[int, int]  # (device, inode) of the index file the worker has open


class WorkerExited(Exception):
    """The worker process ended (killed, crashed) or broke the protocol (then it is killed)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(reason or f"the index worker exited with {code}")
        self.code = code


class WorkerUnavailable(Exception):
    """The worker could not open (or create) the index; it exits."""


class PassFailed(Exception):
    """A pass failed in the worker (an SQLite or I/O error there); the next may succeed."""

    def __init__(self, reason: str, db: Identity | None) -> None:
        super().__init__(reason)
        self.db = db


@dataclass(frozen=True, slots=True)
class PassDone:
    """A pass's SyncStats (to_json) and the identity of the index file it wrote."""

    stats: dict[str, Any]
    db: Identity | None


class IndexWorker:
    """One worker process, while `spawn`'s block runs: one pass at a time."""

    def __init__(self, proc: Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._stdin = proc.stdin
        self._replies = BufferedByteReceiveStream(proc.stdout)
        self._n = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def opened(self) -> Identity | None:
        """Wait until the worker has the index open. Raises WorkerUnavailable, WorkerExited."""
        reply = await self._reply()
        if "unavailable" in reply:
            raise WorkerUnavailable(str(reply["unavailable"]))
        if "open" not in reply:
            raise await self._broken(f"expected the index to open, got {reply!r}")
        return _identity(reply["open"])

    async def run_pass(
        self,
        agents: Iterable[str],
        workspaces: dict[str, str],
        touched: list[str] | None = None,
    ) -> PassDone:
        """One pass in the worker (`touched`: the transcripts written since the last one, None
        when not known). Raises PassFailed, WorkerExited."""
        self._n += 1
        request = {
            "op": "pass",
            "n": self._n,
            "agents": list(agents),
            "workspaces": workspaces,
            "log": list(logs.settings()),
            "touched": touched,
        }
        try:
            await self._stdin.send(orjson.dumps(request) + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise await self._exited() from None
        reply = await self._reply()
        if reply.get("n") != self._n:
            raise await self._broken(f"expected the answer to pass {self._n}, got {reply!r}")
        db = _identity(reply.get("db"))
        if "error" in reply:
            raise PassFailed(str(reply["error"]), db)
        stats = reply.get("stats")
        if not isinstance(stats, dict):
            raise await self._broken(f"a pass's answer without stats: {reply!r}")
        return PassDone(stats, db)

    async def stop(self) -> int:
        """Ask the worker to stop and wait for it (a pass in progress commits first); SIGKILL it
        after STOP_SECONDS. Always reaps it and closes the pipes. Returns its exit code."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(STOP_SECONDS):
                with contextlib.suppress(
                    anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
                ):
                    await self._stdin.send(STOP)
                    await self._stdin.aclose()
                await self.proc.wait()
            if self.proc.returncode is None:
                log.warning("search.worker_killed", pid=self.pid, seconds=STOP_SECONDS)
            code = await self._reap()
        return code

    async def _reply(self) -> dict[str, Any]:
        try:
            line = await self._replies.receive_until(b"\n", MAX_REPLY)
        except (anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise await self._exited() from None
        except anyio.DelimiterNotFound:
            raise await self._broken(f"a reply longer than {MAX_REPLY} bytes") from None
        try:
            reply = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise await self._broken(f"a reply that is not JSON: {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise await self._broken(f"a reply that is not an object: {line[:200]!r}")
        return reply

    async def _exited(self) -> WorkerExited:
        """The pipe closed: the worker is ending (killed, crashed). Wait for its exit code."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(EXIT_SECONDS):
                await self.proc.wait()
            code = await self._reap()
        return WorkerExited(code)

    async def _broken(self, reason: str) -> WorkerExited:
        """The worker broke the protocol (a bug): it is killed, since what it does next is
        anyone's guess."""
        with anyio.CancelScope(shield=True):
            code = await self._reap()
        return WorkerExited(code, f"the index worker broke the protocol: {reason}")

    async def _reap(self) -> int:
        """Kill the worker unless it has exited, wait for it, close the pipes (shield it)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        code = await self.proc.wait()
        await self.proc.aclose()
        return code


@contextlib.asynccontextmanager
async def spawn(state_dir: Path, nice: int) -> AsyncIterator[IndexWorker]:
    """Start a worker on `state_dir` (running `nice` below the daemon's priority); stop and reap
    it when the block ends, however it ends. OSError when it cannot be started."""
    level, fmt = logs.settings()
    log_fd = _copy_of_log_fd()
    argv = [sys.executable, "-m", MODULE, "--state-dir", str(state_dir), "--nice", str(nice)]
    argv += ["--log-level", level, "--log-format", fmt]
    if log_fd is not None:
        argv += ["--log-fd", str(log_fd)]
    try:
        # Shielded: a process that was started is always reaped below.
        with anyio.CancelScope(shield=True):
            proc = await anyio.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
                pass_fds=() if log_fd is None else (log_fd,),
            )
    finally:
        if log_fd is not None:
            os.close(log_fd)  # the worker has its own copy now
    worker = IndexWorker(proc)
    try:
        yield worker
    finally:
        await worker.stop()


def _copy_of_log_fd() -> int | None:
    """A copy of the fd the daemon logs to (stdout, or stderr when that is the journal) for the
    worker to log to; None when there is none (the worker then logs to its stderr)."""
    fd = logs.output_fd()
    try:
        return os.dup(1 if fd is None else fd)
    except OSError:
        return None


def _identity(value: Any) -> Identity | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (value[0], value[1])
    return None

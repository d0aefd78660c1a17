"""Worker processes: the one way the daemon runs Python work on big data off its event loop's GIL.

Parsing a transcript of hundreds of MB, summarising it, turning mirror rounds into records: each
is pure Python, and on a thread it would hold the GIL the event loop needs to acknowledge other
sessions' messages. A `Pool` runs such a job as a call of a module-level function in a process of
its own (`python -m daemon.worker_entry`), handing it paths, offsets and settings, never
transcripts: the worker reads what it needs itself and sends back a small result.

Supervision, the same for every pool:
- workers start on demand, at most `size` at once, and are reused; an idle one that finds its
  stdin closed (the daemon stopped or died) exits, and the kernel kills it with SIGKILL if the
  daemon dies mid-job (PR_SET_PDEATHSIG), so no worker outlives the daemon;
- a worker that dies mid-job (SIGKILL, a crash) is a `WorkerDied` for that job: the caller treats
  it as any failed attempt (nothing written, retried with back-off) and the next job gets a new
  worker; the daemon itself is unaffected;
- a cancelled job (the daemon stopping) is cancelled in the worker at once: SIGUSR1 raises
  `JobCancelled` there, which unwinds the job (a summarizer program it runs is killed and
  reaped); a worker that has not exited GRACE_SECONDS later is killed;
- a job run with `halt_seconds` (the search index's passes) is asked instead to halt at its next
  safe point: SIGUSR2 sets the worker's `halt_event()`, which the job looks at between steps,
  commits what it did and returns; its worker then exits, and is cancelled as above if the job
  has not returned within `halt_seconds`;
- state a job keeps in its process's globals (an open database) lives as long as the worker:
  a pool of one runs every job in the same process until it dies or the pool closes;
- workers ignore SIGINT/SIGTERM/SIGHUP (a Ctrl-C or systemd's stop reach the whole group: the
  daemon decides what ends and when), run WORKER_NICE below the daemon, and keep their log
  events in memory, handed back with each result and logged by the daemon (daemon/worker_log.py).

Frames on the pipes: 8 bytes of length (big-endian), then a pickle. Request: (function, args, log
level); answer: ("ok", result, events, left_out) or ("error", exception, events, left_out).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import anyio
import structlog
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from daemon import failpoints, guard, logs, worker_log

log = structlog.get_logger("daemon.workers")

T = TypeVar("T")

WORKER_NICE = 10  # workers run this much below the daemon's priority
IDLE = "idle"  # the worker's third argument when its pool runs in SCHED_IDLE
GRACE_SECONDS = 3.0  # a cancelled or stopped worker is killed if it has not exited by then
HEADER = struct.Struct(">Q")
PR_SET_PDEATHSIG = 1


def half_the_cores(most: int) -> int:
    """Worker processes for a pool of jobs that compete with ingest: half the machine's cores,
    between 1 and `most`. On two cores, two workers of a pool beside the event loop, the
    clients and the other pools left the loop waiting for a core (the reset job's probes,
    bench/isolation.py), and finished no sooner: the machine had no core to spare for them."""
    return max(1, min(most, (os.cpu_count() or 1) // 2))


class WorkerDied(Exception):
    """A worker process ended during a job (killed, crashed) or broke the protocol; the job did
    not finish, and whatever it was to write was not written by the daemon. `pid` and `code`
    (its exit code, negative for a signal; None when unknown) say which and how."""

    def __init__(self, message: str, pid: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.code = code


class JobCancelled(BaseException):
    """Raised in a worker by SIGUSR1: the daemon cancelled the job (a BaseException, so that no
    `except Exception` in the job's code takes it for a failure to handle)."""


# ---------------------------------------------------------------------------------------------
# The daemon's side


class Pool:
    """Up to `size` worker processes for one kind of job. Owned by the component that runs the
    jobs; `aclose` (at its end) stops the idle workers and kills those that do not stop."""

    def __init__(
        self,
        name: str,
        size: int,
        nice: int = WORKER_NICE,
        on_idle_exit: Callable[[int, int], None] | None = None,
        *,
        idle: bool = False,
    ) -> None:
        """`on_idle_exit(pid, code)`: told of a worker found dead between jobs (killed while
        idle), which is otherwise replaced without a word. `idle`: the workers run in the
        kernel's SCHED_IDLE class (`idle_class`)."""
        self.name = name
        self.nice = nice
        self.idle = idle
        self.on_idle_exit = on_idle_exit
        self.limiter = anyio.CapacityLimiter(size)
        self._idle: list[Process] = []
        self._busy: set[Process] = set()
        self.started = 0  # processes started, over the pool's life
        self.deaths = 0  # jobs whose worker died under them

    def resize(self, size: int) -> None:
        self.limiter.total_tokens = size

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids (idle and busy)."""
        return [p.pid for p in (*self._idle, *self._busy)]

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        cancellable: bool = True,
        halt_seconds: float | None = None,
    ) -> T:
        """`fn(*args)` in a worker. Raises what `fn` raised (re-raised here), WorkerDied, or
        OSError when no worker can be started. With `cancellable=False` the job always runs to
        its end, even if the caller is cancelled meanwhile (the answer is then dropped). With
        `halt_seconds`, a cancelled caller first asks the job to halt at a safe point (SIGUSR2,
        `halt_event()`) and waits that long for it to return before cancelling it."""
        request = pickle.dumps((fn, args, logs.settings()[0]), protocol=pickle.HIGHEST_PROTOCOL)
        async with self.limiter:
            proc = await self._take()
            self._busy.add(proc)
            frames = _Frames(proc)
            ending = "cancel"  # how the worker ends unless the job answers: cancel | retire
            try:
                with anyio.CancelScope(shield=not cancellable):
                    try:
                        await self._send(proc, request)
                        frames.sent = True
                        reply = await self._receive(proc, frames)
                    except anyio.get_cancelled_exc_class():
                        if halt_seconds is not None and frames.sent:
                            with anyio.CancelScope(shield=True):
                                if await self._halt(proc, frames, halt_seconds):
                                    ending = "retire"
                        raise
                ending = ""
            finally:
                self._busy.discard(proc)
                if not ending:
                    self._idle.append(proc)
                else:
                    with anyio.CancelScope(shield=True):
                        if ending == "retire":
                            await self._retire(proc)
                        else:
                            await self._end(proc, cancel=True)
        status, value, events, left_out = reply
        worker_log.relay(events, left_out, process=f"{self.name}-worker")
        if status == "ok":
            return value  # type: ignore[no-any-return]
        assert isinstance(value, BaseException)
        if isinstance(value, failpoints.Fired):
            failpoints.exit_now(value.name)  # a crash test's step, reached in the worker
        raise value

    async def warm(self, module: str) -> None:
        """Start the workers the pool does not have yet, each importing `module` (the one its
        jobs come from), ahead of a burst of jobs: a worker's start costs 0.2-0.3 s of CPU, and
        paid while the burst's first jobs wait, it delayed all of them. A worker that cannot be
        started is left to the first job to try again."""
        missing = int(self.limiter.total_tokens) - len(self._idle) - len(self._busy)
        async with anyio.create_task_group() as tg:
            for _ in range(max(0, missing)):
                tg.start_soon(self._warm_one, module)

    async def _warm_one(self, module: str) -> None:
        with contextlib.suppress(WorkerDied, OSError):
            await self.run(preload, module)

    async def _send(self, proc: Process, request: bytes) -> None:
        assert proc.stdin is not None
        try:
            await proc.stdin.send(HEADER.pack(len(request)) + request)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            raise await self._died(proc) from e

    async def _receive(self, proc: Process, frames: _Frames) -> tuple[str, Any, Any, int]:
        try:
            raw = await frames.receive()
        except (
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
        ) as e:
            raise await self._died(proc) from e
        try:
            reply = pickle.loads(raw)
        except Exception as e:
            raise WorkerDied(
                f"the {self.name} worker sent an answer that does not load", proc.pid
            ) from e
        if not (isinstance(reply, tuple) and len(reply) == 4):
            raise WorkerDied(f"the {self.name} worker broke the protocol", proc.pid)
        return reply

    async def _died(self, proc: Process) -> WorkerDied:
        self.deaths += 1
        with anyio.CancelScope(shield=True):
            code = await self._end(proc, cancel=False)
        return WorkerDied(f"the {self.name} worker process ended ({_how(code)})", proc.pid, code)

    async def _halt(self, proc: Process, frames: _Frames, seconds: float) -> bool:
        """Ask the job to halt at its next safe point and wait up to `seconds` for its answer
        (shield the call); whether it answered. The answer itself is dropped."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGUSR2)
        with anyio.move_on_after(seconds):
            try:
                await self._receive(proc, frames)
            except WorkerDied:
                return False
            return True
        return False

    async def _retire(self, proc: Process) -> None:
        """End a worker whose job has answered: it exits when its stdin closes (shield it)."""
        if proc.stdin is not None:
            with contextlib.suppress(OSError, anyio.BrokenResourceError):
                await proc.stdin.aclose()
        await self._end(proc, cancel=False)

    async def _take(self) -> Process:
        while self._idle:
            proc = self._idle.pop()
            if proc.returncode is None:
                return proc
            code = proc.returncode
            await proc.aclose()
            if self.on_idle_exit is not None:
                self.on_idle_exit(proc.pid, code)
        # The pool's name is for ps and bench/isolation.py's CPU figures; the worker ignores it.
        argv = [sys.executable, "-m", "daemon.worker_entry", str(self.nice), self.name]
        if self.idle:
            argv.append(IDLE)
        proc = await anyio.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
        )
        self.started += 1
        return proc

    async def _end(self, proc: Process, *, cancel: bool) -> int:
        """End a worker (shield the call): with `cancel`, SIGUSR1 first so that the job unwinds
        (and kills what it started); SIGKILL after GRACE_SECONDS. Reaps it."""
        if proc.returncode is None and cancel:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
        with anyio.move_on_after(GRACE_SECONDS):
            await proc.wait()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        code = await proc.wait()
        with contextlib.suppress(OSError):
            await proc.aclose()
        return code

    async def aclose(self) -> None:
        """Stop the idle workers (they exit when their stdin closes) and cancel busy ones;
        kill what has not exited after GRACE_SECONDS. Shielded."""
        with anyio.CancelScope(shield=True):
            idle, self._idle = self._idle, []
            busy = list(self._busy)
            for proc in idle:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError, anyio.BrokenResourceError):
                        await proc.stdin.aclose()
            async with anyio.create_task_group() as tg:
                for proc in idle:
                    tg.start_soon(self._end_idle, proc)
                for proc in busy:
                    tg.start_soon(lambda p: self._end(p, cancel=True), proc)

    async def _end_idle(self, proc: Process) -> None:
        await self._end(proc, cancel=False)


class _Frames:
    """The answers on one worker's stdout. A receive cancelled half-way can be taken up again
    (`_halt`): what arrived stays in the buffer, and a header read is remembered."""

    def __init__(self, proc: Process) -> None:
        assert proc.stdout is not None
        self.stream = BufferedByteReceiveStream(proc.stdout)
        self.size: int | None = None
        self.sent = False  # the whole request went out

    async def receive(self) -> bytes:
        if self.size is None:
            (self.size,) = HEADER.unpack(await self.stream.receive_exactly(HEADER.size))
        raw = await self.stream.receive_exactly(self.size)
        self.size = None
        return raw


def _how(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


# ---------------------------------------------------------------------------------------------
# The worker's side

_in_worker = False
_halt = threading.Event()


def in_worker() -> bool:
    """True in a worker process (a summarizer program started there must not outlive it)."""
    return _in_worker


def halt_event() -> threading.Event:
    """In a job: set when the daemon asks it to halt at its next safe point (the daemon is
    stopping); a job that can stop early looks at it between steps, commits and returns. Clear
    again once the job has answered."""
    return _halt


def preload(module: str) -> None:
    """A job that only imports `module` (`Pool.warm`)."""
    importlib.import_module(module)


def _cancel(_sig: int, _frame: FrameType | None) -> None:
    raise JobCancelled()


def _ask_halt(_sig: int, _frame: FrameType | None) -> None:
    _halt.set()


def idle_class() -> bool:
    """Put this process in the kernel's SCHED_IDLE class: it runs only when no task of normal
    priority wants the CPU, and a waking one preempts it at once. A nice level alone was not
    enough for the reset job's workers: at nice 5 three of them on two cores kept the event
    loop waiting for a core for tens of milliseconds (bench/isolation.py's reset phase). False
    where the class does not exist (not Linux) or the call is refused."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    return True


def _setup(nice: int, idle: bool = False) -> None:
    global _in_worker
    _in_worker = True
    failpoints.in_worker()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _cancel)
    signal.signal(signal.SIGUSR2, _ask_halt)
    with contextlib.suppress(OSError, AttributeError):
        # Killed with the daemon, even mid-job: nothing of ours outlives it.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        sys.exit(0)  # the daemon died before the prctl: nobody to work for
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + nice)
    if idle:
        idle_class()
    guard.install_from_env()  # tests: the never-delete guard watches workers as well


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(nice: int, idle: bool = False) -> None:
    """The worker's loop: one job at a time until stdin closes or a job is cancelled."""
    _setup(nice, idle)
    level = None
    while True:
        head = _read_exactly(0, HEADER.size)
        if head is None:
            return
        raw = _read_exactly(0, HEADER.unpack(head)[0])
        if raw is None:
            return
        fn, args, want = pickle.loads(raw)
        if want != level:
            level = want
            worker_log.capture(level)
        try:
            reply: tuple[str, Any, Any, int] = ("ok", fn(*args), *worker_log.take())
        except JobCancelled:
            return  # the daemon ends this process; the job's `finally` blocks have run
        except Exception as e:
            reply = ("error", e, *worker_log.take())
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            data = pickle.dumps(("error", RuntimeError(f"{type(e).__name__}: {e}"), [], 0))
        _write_all(1, HEADER.pack(len(data)) + data)
        # Not before: a halt asked for between the request and the job's start holds for it.
        _halt.clear()


def main() -> None:
    with contextlib.suppress(JobCancelled, BrokenPipeError):
        serve(int(sys.argv[1]) if len(sys.argv) > 1 else WORKER_NICE, IDLE in sys.argv[3:])

"""The command summarizer: any program that reads a JSON request on stdin and writes the summary
(or memory notes, or NO_REPLY) on stdout.

stdin is one JSON object: {task: "compaction"|"memoryFlush", prompt, instructions, previousSummary,
sessionKey, agentId, entries: [transcript entries as stored], transcript: "User: ...\\n..."}.
The program runs without a shell, in its own process group, with the daemon's environment; it
must exit 0 within `timeoutSeconds`. On a timeout the whole group is killed, so a wrapper script
cannot leave its children running. Anything else (exit code, signal, output that is not UTF-8 or
is too large) is a SummarizerFailed naming the reason, with the tail of stderr.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from io import BytesIO

import anyio
import orjson
from anyio.abc import ByteReceiveStream, Process

from daemon.errors import SummarizerFailed, os_reason
from daemon.summarizers import SummarizerSettings, SummaryRequest

MAX_OUTPUT = 4 * 1024 * 1024  # bytes of stdout accepted; a summary is far smaller
STDERR_TAIL = 400


class CommandSummarizer:
    kind = "command"

    def __init__(self, cfg: SummarizerSettings) -> None:
        self.argv = list(cfg.command)
        self.timeout = float(cfg.timeoutSeconds)

    async def summarize(self, req: SummaryRequest) -> str:
        payload = orjson.dumps(req.to_json())
        try:
            proc = await anyio.open_process(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise SummarizerFailed(f"cannot run {self.argv[0]!r}: {os_reason(e)}") from None
        out, err = BytesIO(), BytesIO()
        overflow: list[str] = []
        finished = False
        async with proc:
            try:
                with anyio.fail_after(self.timeout):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_drain, proc, proc.stdout, out, "stdout", overflow)
                        tg.start_soon(_drain, proc, proc.stderr, err, "stderr", overflow)
                        tg.start_soon(_feed, proc, payload)
                        await proc.wait()
                finished = True
            except TimeoutError:
                raise SummarizerFailed(
                    f"{self.argv[0]!r} did not finish within {self.timeout:g}s (killed)"
                ) from None
            finally:
                if not finished:
                    # Timed out or cancelled (the daemon stopping): nothing may outlive us.
                    _kill_group(proc)
        if overflow:
            raise SummarizerFailed(
                f"{self.argv[0]!r} wrote more than {MAX_OUTPUT} bytes to {overflow[0]} (killed)"
            )
        code = proc.returncode
        if code != 0:
            what = f"was killed by signal {-code}" if code and code < 0 else f"exited with {code}"
            tail = err.getvalue()[-STDERR_TAIL:].decode("utf-8", "replace").strip()
            raise SummarizerFailed(f"{self.argv[0]!r} {what}" + (f": {tail}" if tail else ""))
        try:
            return out.getvalue().decode("utf-8")
        except UnicodeDecodeError:
            raise SummarizerFailed(f"{self.argv[0]!r} wrote output that is not UTF-8") from None


async def _drain(
    proc: Process, stream: ByteReceiveStream | None, buf: BytesIO, name: str, overflow: list[str]
) -> None:
    if stream is None:
        return
    async for chunk in stream:
        if buf.tell() + len(chunk) > MAX_OUTPUT:
            overflow.append(name)
            _kill_group(proc)
            return
        buf.write(chunk)


async def _feed(proc: Process, payload: bytes) -> None:
    """Write the request; a program that exits without reading all of it is not an error here
    (its exit code and output decide)."""
    if proc.stdin is None:
        return
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await proc.stdin.send(payload)
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await proc.stdin.aclose()


def _kill_group(proc: Process) -> None:
    """SIGKILL the program and everything it started (its own session and process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)

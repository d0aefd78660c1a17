"""Ingest benchmark: durable messages per second and ack latency, against this machine's ceiling.

    python bench/ingest.py [--messages 200000] [--clients 16] [--sessions 1000] [--runs 3]

Starts the real daemon on a fresh state folder, then drives it from a separate process with C
pipelined clients (64 requests in flight each, unique message ids, spread over S sessions so that
requests in flight hit different sessions). In the same run it measures a bare NDJSON Unix-socket
server that only parses each line, appends it to one file and acknowledges after one fdatasync
per batch of what arrived together: the ceiling of this machine and language. Runs alternate
(ours, bare, ours, bare, ...) and the medians of each are compared. The same bare server written
with anyio streams (as the daemon is) is measured beside it, to show what the framework costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

IN_FLIGHT = 64


# ---------------------------------------------------------------------------------------------
# The driver (runs in its own process)


async def _client(path: str, lines: list[bytes], lat: list[float]) -> None:
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    sent_at: dict[int, float] = {}
    next_i = 0
    done = 0
    total = len(lines)
    window = min(IN_FLIGHT, total)

    def send(k: int) -> None:
        nonlocal next_i
        buf = []
        now = time.perf_counter()
        for _ in range(k):
            if next_i >= total:
                break
            sent_at[next_i] = now
            buf.append(lines[next_i])
            next_i += 1
        if buf:
            writer.write(b"".join(buf))

    send(window)
    while done < total:
        line = await reader.readline()
        if not line:
            raise RuntimeError("server closed the connection")
        msg = orjson.loads(line)
        if "error" in msg:
            raise RuntimeError(f"server error: {msg['error']}")
        i = msg["id"]
        lat.append(time.perf_counter() - sent_at.pop(i))
        done += 1
        # Refill in small groups: keeps 64 in flight without a write per answer.
        if len(sent_at) <= IN_FLIGHT - 8 or next_i >= total:
            send(IN_FLIGHT - len(sent_at))
    writer.close()


def make_lines(messages: int, clients: int, sessions: int, tag: str) -> list[list[bytes]]:
    per = messages // clients
    out: list[list[bytes]] = []
    n = 0
    for c in range(clients):
        lines = []
        for i in range(per):
            peer = n % sessions
            req = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "message.ingest",
                "params": {
                    "channel": "telegram",
                    "chatType": "direct",
                    "peer": f"{100000 + peer}",
                    "messageId": f"{tag}-{c}-{i}",
                    "text": f"benchmark message {n} with a little text, like a real chat line",
                },
            }
            lines.append(orjson.dumps(req) + b"\n")
            n += 1
        out.append(lines)
    return out


def drive(path: str, messages: int, clients: int, sessions: int, tag: str) -> dict[str, float]:
    work = make_lines(messages, clients, sessions, tag)
    lat: list[float] = []

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(path, lines, lat) for lines in work))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    lat.sort()
    n = len(lat)
    return {
        "messages": n,
        "seconds": elapsed,
        "rate": n / elapsed,
        "p50_ms": lat[n // 2] * 1000,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000,
    }


# ---------------------------------------------------------------------------------------------
# The bare server (runs in its own process): parse, append, one fdatasync per batch, ack.


def bare_server(path: str, data_file: str) -> None:
    fd = os.open(data_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pending: list[tuple[asyncio.Transport, bytes]] = []
    buffered: list[bytes] = []
    wake = asyncio.Event()

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            data = self.buf + data
            *lines, self.buf = data.split(b"\n")
            for line in lines:
                req = orjson.loads(line)
                buffered.append(line + b"\n")
                pending.append(
                    (self.t, b'{"jsonrpc":"2.0","id":%d,"result":{}}\n' % req["id"])  # type: ignore[arg-type]
                )
            wake.set()

    async def flusher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wake.wait()
            wake.clear()
            if not pending:
                continue
            batch, acks = b"".join(buffered), list(pending)
            buffered.clear()
            pending.clear()

            def write_sync(data: bytes) -> None:
                os.write(fd, data)
                os.fdatasync(fd)

            await loop.run_in_executor(None, write_sync, batch)
            out: dict[asyncio.Transport, list[bytes]] = {}
            for t, a in acks:
                out.setdefault(t, []).append(a)
            for t, chunks in out.items():
                t.write(b"".join(chunks))
            if pending:
                wake.set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(Proto, path)
        print("ready", flush=True)
        async with server:
            await flusher()

    asyncio.run(main())


def bare_anyio_server(path: str, data_file: str) -> None:
    """The same bare server written the way the daemon is: anyio streams read a line at a time,
    a task per connection. It shows what the I/O framework alone costs."""
    import anyio
    from anyio.abc import SocketStream
    from anyio.streams.buffered import BufferedByteReceiveStream

    fd = os.open(data_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pending: list[tuple[SocketStream, bytes]] = []
    buffered: list[bytes] = []
    has_work = anyio.Event()

    def write_sync(data: bytes) -> None:
        os.write(fd, data)
        os.fdatasync(fd)

    async def handle(stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        async with stream:
            while True:
                try:
                    line = await reader.receive_until(b"\n", 1 << 20)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                req = orjson.loads(line)
                buffered.append(line + b"\n")
                pending.append((stream, b'{"jsonrpc":"2.0","id":%d,"result":{}}\n' % req["id"]))
                has_work.set()

    async def flusher() -> None:
        nonlocal has_work
        while True:
            await has_work.wait()
            has_work = anyio.Event()
            batch, acks = b"".join(buffered), list(pending)
            buffered.clear()
            pending.clear()
            await anyio.to_thread.run_sync(write_sync, batch)
            out: dict[SocketStream, list[bytes]] = {}
            for st, a in acks:
                out.setdefault(st, []).append(a)
            for st, chunks in out.items():
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await st.send(b"".join(chunks))

    async def main() -> None:
        listener = await anyio.create_unix_listener(path)
        print("ready", flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(flusher)
            await listener.serve(handle)

    anyio.run(main)


# ---------------------------------------------------------------------------------------------
# Orchestration


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def run_driver(path: Path, args: argparse.Namespace, tag: str) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--drive",
            str(path),
            "--messages",
            str(args.messages),
            "--clients",
            str(args.clients),
            "--sessions",
            str(args.sessions),
            "--tag",
            tag,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_ours(args: argparse.Namespace, workdir: Path, n: int) -> dict[str, float]:
    state = workdir / f"ours-{n}"
    cfg = workdir / "config.json5"
    cfg.write_text(
        os.environ.get(
            "BENCH_CONFIG",
            '{session: {dmScope: "per-channel-peer"}, daemon: {logLevel: "warning"}}',
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--config", str(cfg), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
    )
    try:
        sock = state / "sessiond.sock"
        wait_socket(sock, proc)
        cpu0 = cpu_seconds(proc.pid)
        res = run_driver(sock, args, f"r{n}")
        res["cpu_us"] = (cpu_seconds(proc.pid) - cpu0) / res["messages"] * 1e6
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return res


def run_bare(args: argparse.Namespace, workdir: Path, n: int, style: str) -> dict[str, float]:
    sock = workdir / f"bare-{style}-{n}.sock"
    data = workdir / f"bare-{style}-{n}.ndjson"
    flag = "--bare" if style == "protocol" else "--bare-anyio"
    proc = subprocess.Popen(
        [sys.executable, __file__, flag, str(sock), str(data)], stdout=subprocess.DEVNULL
    )
    try:
        wait_socket(sock, proc)
        cpu0 = cpu_seconds(proc.pid)
        res = run_driver(sock, args, f"b{n}")
        res["cpu_us"] = (cpu_seconds(proc.pid) - cpu0) / res["messages"] * 1e6
        return res
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tag", default="x")
    ap.add_argument("--drive", metavar="SOCKET", help=argparse.SUPPRESS)
    ap.add_argument("--bare", nargs=2, metavar=("SOCKET", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--bare-anyio", nargs=2, metavar=("SOCKET", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    if args.drive:
        res = drive(args.drive, args.messages, args.clients, args.sessions, args.tag)
        print(json.dumps(res))
        return
    if args.bare:
        bare_server(*args.bare)
        return
    if args.bare_anyio:
        bare_anyio_server(*args.bare_anyio)
        return
    workdir = Path(tempfile.mkdtemp(prefix="sessiond-bench-", dir=os.environ.get("BENCH_DIR")))
    print(
        f"ingest benchmark: {args.messages} messages, {args.clients} clients x {IN_FLIGHT} "
        f"in flight, {args.sessions} sessions, {args.runs} interleaved runs; cpus={os.cpu_count()}"
    )
    # The ceiling is the bare server as fast as it can simply be written (asyncio protocol, one
    # write per batch). The same server written with anyio streams, as the daemon is, is shown
    # beside it: the difference is what the I/O framework alone costs.
    servers: dict[str, Callable[[int], dict[str, float]]] = {
        "sessiond": lambda n: run_ours(args, workdir, n),
        "bare": lambda n: run_bare(args, workdir, n, "protocol"),
        "bare-anyio": lambda n: run_bare(args, workdir, n, "anyio"),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    try:
        for n in range(args.runs):
            for name, run in servers.items():
                r = run(n)
                results[name].append(r)
                print(f"  run {n + 1} {name:<10}: {summary(r)}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        for name, rs in results.items()
    }
    for label, name in (
        ("sessiond durable msgs/s (median):", "sessiond"),
        ("bare ceiling msgs/s (median):", "bare"),
        ("bare with anyio streams (median):", "bare-anyio"),
    ):
        print(f"{label:<34} {summary(med[name])}")
    ours = med["sessiond"]["rate"]
    print(f"ratio sessiond / bare: {ours / med['bare']['rate']:.2f}")
    print(f"ratio sessiond / bare with anyio streams: {ours / med['bare-anyio']['rate']:.2f}")


def summary(r: dict[str, float]) -> str:
    return (
        f"{r['rate']:>9.0f} msgs/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
        f"cpu {r['cpu_us']:.1f} us/msg"
    )


if __name__ == "__main__":
    main()

"""Clients that never read their answers: the daemon's peak memory (issue 12).

    python bench/hostile.py [--requests 300000] [--clients 1] [--method status] [--sessions 0]

Starts the real daemon on a fresh state folder (built-in limits unless BENCH_CONFIG says
otherwise), then each of C clients sends its share of R requests pipelined on one connection
without ever reading a byte, for as long as the daemon takes them. Once every client is blocked
(the daemon stopped reading them: `status` says they are paused) it holds them there for a few
seconds, checks that another client is still served, and prints the daemon's peak RSS (VmHWM),
how much of what the clients wanted to send the daemon read, and its `clients` counters.
`--sessions N` first creates N sessions, so that `--method sessions.list` answers are large.

Without the per-connection budget, 300k `status` requests took the daemon from 45 MB to 2.1 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

LIMIT_MB = 200


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of `pid`, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def call(path: Path, method: str, params: dict[str, Any] | None = None) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(path))
        req = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        s.sendall(orjson.dumps(req) + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise EOFError("the daemon closed the connection")
            buf += chunk
    answer = orjson.loads(buf.split(b"\n", 1)[0])
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}")
        with contextlib.suppress(OSError, EOFError):
            call(path, "status")
            return
        if time.monotonic() > deadline:
            raise SystemExit("the daemon never answered")
        time.sleep(0.05)


def seed(path: Path, sessions: int) -> None:
    for i in range(sessions):
        call(
            path,
            "message.ingest",
            {
                "channel": "telegram",
                "chatType": "direct",
                "peer": f"p{i}",
                "text": f"hello {i}",
                "messageId": f"seed-{i}",
            },
        )


def flood(path: Path, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    """Send without reading until every client is blocked; return what happened."""
    line = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": args.method, "params": {}}) + b"\n"
    per_client = args.requests // args.clients
    data = line * per_client
    hogs = []
    for _ in range(args.clients):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.setblocking(False)
        hogs.append(s)
    sent = [0] * len(hogs)
    started = time.monotonic()
    peak_rss = 0
    last_progress = time.monotonic()
    while True:
        progress = False
        for i, s in enumerate(hogs):
            while sent[i] < len(data):
                try:
                    n = s.send(data[sent[i] : sent[i] + 65536])
                except BlockingIOError:
                    break
                sent[i] += n
                progress = True
        peak_rss = max(peak_rss, memory(pid)["VmRSS"])
        if all(n == len(data) for n in sent):
            break
        if progress:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > args.settle:
            clients = call(path, "status")["clients"]
            if clients["paused"] >= sum(1 for n in sent if n < len(data)):
                break
        select.select([], [s for i, s in enumerate(hogs) if sent[i] < len(data)], [], 0.2)
    blocked_after = time.monotonic() - started
    # Hold them there: nothing more may grow while they stay blocked.
    hold_until = time.monotonic() + args.hold
    while time.monotonic() < hold_until:
        peak_rss = max(peak_rss, memory(pid)["VmRSS"])
        time.sleep(0.2)
    t0 = time.monotonic()
    status = call(path, "status")
    served_in = time.monotonic() - t0
    for s in hogs:
        s.close()
    return {
        "wanted": per_client * len(hogs),
        "read": sum(n // len(line) for n in sent),
        "bytesWanted": len(data) * len(hogs),
        "bytesSent": sum(sent),
        "blockedAfter": blocked_after,
        "peakRss": peak_rss,
        "clients": status.get("clients", "(not reported)"),
        "servedIn": served_in,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--method", default="status")
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold the clients blocked")
    ap.add_argument("--settle", type=float, default=2.0, help="no progress for this long: blocked")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sessiond-hostile-", dir=os.environ.get("BENCH_DIR")))
    cfg = workdir / "config.json5"
    cfg.write_text(
        os.environ.get(
            "BENCH_CONFIG", '{session: {dmScope: "per-peer"}, daemon: {logLevel: "warning"}}'
        )
    )
    state = workdir / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--config", str(cfg), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
    )
    try:
        sock = state / "sessiond.sock"
        wait_socket(sock, proc)
        seed(sock, args.sessions)
        before = memory(proc.pid)["VmRSS"]
        answer = len(orjson.dumps(call(sock, args.method))) + 30
        res = flood(sock, args, proc.pid)
        hwm = memory(proc.pid)["VmHWM"]
        mb = 1024 * 1024
        print(
            f"hostile clients: {args.clients} x {res['wanted'] // args.clients} unread "
            f"{args.method} requests (answers ~{answer} bytes), {args.sessions} sessions"
        )
        print(
            f"  the clients got {res['bytesSent'] / mb:.1f} of {res['bytesWanted'] / mb:.1f} MB "
            f"of requests out (~{res['read']} requests, read by the daemon or still in the "
            f"kernel's buffers); every client blocked after "
            f"{res['blockedAfter']:.1f} s"
        )
        print(f"  clients while blocked: {res['clients']}")
        print(f"  another client's status answered in {res['servedIn'] * 1000:.1f} ms")
        print(
            f"  daemon RSS: {before / mb:.0f} MB before, peak {hwm / mb:.0f} MB "
            f"(sampled peak {res['peakRss'] / mb:.0f} MB); limit {LIMIT_MB} MB: "
            + ("OK" if hwm < LIMIT_MB * mb else "OVER")
        )
        if hwm >= LIMIT_MB * mb:
            sys.exit(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Start-up, history and reset-job benchmarks on a large state folder.

    python bench/startup.py [--sessions 10000] [--gigabytes 1.0] [--history-mb 200]

1. Writes a state folder with N sessions holding G GB of v3 transcripts (and their sessions.json),
   then measures the daemon's start-up: time from spawn until its socket answers `status`, and
   its resident memory (VmRSS) at that point. Targets: under 1 s, under 150 MB.
2. Reads the last 50 entries of a transcript of H MB through `sessions.history` (median and p99
   of 50 calls). Target: under 20 ms.
3. Runs the daily reset job over all N sessions (every one stale) and reports its duration.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.client import Client


def make_state(state: Path, sessions: int, total_bytes: int, history_bytes: int) -> str:
    """Write transcripts directly (as the daemon would have) and return the big session's key."""
    folder = state / "agents" / "main" / "sessions"
    folder.mkdir(parents=True, mode=0o700)
    per = max(1, total_bytes // sessions)
    day_ms = 1_790_000_000_000
    text = "a line of chat that is about as long as a real message, with some words in it. " * 2
    registry = {}
    big_key = ""
    for i in range(sessions):
        sid = str(uuid.uuid4())
        key = f"agent:main:telegram:direct:{100000 + i}"
        target = history_bytes if i == 0 else per
        lines = [
            orjson.dumps(
                {
                    "type": "session",
                    "version": 3,
                    "id": sid,
                    "timestamp": "2026-09-21T10:00:00.000Z",
                    "cwd": str(state / "workspace"),
                    "sessionKey": key,
                }
            )
        ]
        size = len(lines[0]) + 1
        n = 0
        parent = None
        while size < target:
            eid = f"{n:08x}"
            line = orjson.dumps(
                {
                    "type": "message",
                    "id": eid,
                    "parentId": parent,
                    "timestamp": "2026-09-21T10:00:00.000Z",
                    "message": {"role": "user", "content": [{"type": "text", "text": text}]},
                }
            )
            lines.append(line)
            size += len(line) + 1
            parent = eid
            n += 1
        path = folder / f"{sid}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        os.chmod(path, 0o600)
        registry[key] = {
            "sessionId": sid,
            "sessionFile": str(path),
            "updatedAt": day_ms,
            "sessionStartedAt": day_ms,
            "lastInteractionAt": day_ms,
            "chatType": "direct",
            "compactionCount": 0,
            "totalTokens": 0,
        }
        if i == 0:
            big_key = key
    (folder / "sessions.json").write_bytes(orjson.dumps(registry))
    # A folder sessiond wrote itself, not one adopted from OpenClaw (daemon/adoption.py): the
    # reset job below applies every passed boundary.
    (state / "adopted.json").write_bytes(orjson.dumps({"adoptedAt": 0}))
    return big_key


def wait_ready(sock: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        try:
            with Client(sock, timeout=5) as c:
                c.call("status")
            return
        except Exception:
            time.sleep(0.005)
    raise RuntimeError("daemon did not become ready")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--gigabytes", type=float, default=1.0)
    ap.add_argument("--history-mb", type=int, default=200)
    ap.add_argument("--starts", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sessiond-startup-", dir=os.environ.get("BENCH_DIR")))
    state = work / "state"
    try:
        t0 = time.monotonic()
        big_key = make_state(
            state, args.sessions, int(args.gigabytes * 1e9), args.history_mb * 1_000_000
        )
        print(
            f"state folder: {args.sessions} sessions, {args.gigabytes} GB of transcripts "
            f"(one of {args.history_mb} MB), written in {time.monotonic() - t0:.1f} s"
        )
        cfg = work / "config.json5"
        # Reset mode none for the start-up runs: the expiry job would otherwise archive them all.
        cfg.write_text('{daemon: {logLevel: "warning"}, session: {reset: {mode: "none"}}}')
        sock = state / "sessiond.sock"
        cmd = [
            sys.executable,
            "-m",
            "daemon",
            "run",
            "--config",
            str(cfg),
            "--state-dir",
            str(state),
        ]
        times, rss = [], []
        for _ in range(args.starts):
            t = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            wait_ready(sock, proc)
            times.append(time.monotonic() - t)
            rss.append(rss_mb(proc.pid))
            if _ == args.starts - 1:
                lat = []
                with Client(sock) as c:
                    for _i in range(50):
                        t1 = time.perf_counter()
                        res = c.call("sessions.history", {"sessionKey": big_key, "limit": 50})
                        lat.append(time.perf_counter() - t1)
                        assert len(res["entries"]) == 50
                lat.sort()
                print(
                    f"last 50 entries of a {args.history_mb} MB transcript: "
                    f"median {statistics.median(lat) * 1000:.2f} ms, "
                    f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.2f} ms "
                    "(target < 20 ms)"
                )
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        print(
            f"start-up with {args.sessions} sessions / {args.gigabytes} GB: "
            f"median {statistics.median(times):.3f} s (runs: "
            f"{', '.join(f'{t:.3f}' for t in times)}), RSS {max(rss):.0f} MB "
            "(targets < 1 s, < 150 MB)"
        )
        # The daily reset job over every session: all are stale under a daily policy.
        cfg.write_text(
            '{daemon: {logLevel: "info", timezone: "UTC"}, '
            'session: {reset: {mode: "daily", atHour: 4, deferWhileActiveMinutes: 0}}}'
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        seconds = None
        deadline = time.monotonic() + 600
        for raw in proc.stdout:
            try:
                ev = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if ev.get("event") == "job.run" and ev.get("archived"):
                seconds = ev["seconds"]
                print(
                    f"reset job over {ev['checked']} sessions: archived {ev['archived']} in "
                    f"{seconds:.2f} s ({ev['archived'] / max(seconds, 1e-9):.0f} sessions/s)"
                )
                break
            if time.monotonic() > deadline:
                break
        # Keep reading what it logs (a line per archived session, per flushed memory): a
        # daemon whose stdout pipe is full waits for it, and could not stop.
        drain = threading.Thread(target=proc.stdout.read, daemon=True)
        drain.start()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Isolation benchmark: one huge session, big reads, big messages and the reset job never slow the
other sessions down.

    python bench/isolation.py [--rate 2000] [--probe-sessions 100] [--big-mb 150]
                              [--reset-sessions 10000] [--phase-seconds 10]

A steady open-loop probe load (`--rate` messages/s over `--probe-sessions` sessions, latency counted
from each message's scheduled send time) runs for the whole benchmark, while in turn:

  baseline     nothing else;
  compaction   `sessions.compact` of a never-compacted `--big-mb` MB session;
  history      `sessions.history` pages (200 entries each) through that session, newest first;
  big          sixty messages of 1 MB (just under `maxLineBytes`) to another session;
  reset        the idle-expiry reset job over `--reset-sessions` sessions (`--idle-minutes`; each
               session holds facts, so its memory flush writes notes), until every note is written.

The probes start once the start-up catch-up is over (the index's first pass over the big
session, the mirror's copy; `--no-settle`: at once, as before). Prints probe p50/p99/max per
phase and the p99 ratio to the baseline phase, the reset job's
duration (the job itself, and until the last memory note is written), and the load average.
Goal (issue 16): every phase's p99 within 2x of the baseline's and its max under 100 ms.
The state folder (big session and reset sessions) is written straight to disk first, as
bench/startup.py does, then the daemon is started on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.startup import wait_ready
from daemon.client import Client

TEXT = "a line of chat that is about as long as a real message, with some words in it. " * 2
PROBE_CLIENTS = 4
SPY = ["py-spy", "record", "-t", "-r", "200", "--nonblocking"]  # a paused daemon runs 4x slower


# ---------------------------------------------------------------------------------------------
# The state folder


def header(sid: str, key: str, cwd: str) -> bytes:
    return orjson.dumps(
        {
            "type": "session",
            "version": 3,
            "id": sid,
            "timestamp": "2026-09-21T10:00:00.000Z",
            "cwd": cwd,
            "sessionKey": key,
        }
    )


def message(eid: str, parent: str | None, text: str) -> bytes:
    return orjson.dumps(
        {
            "type": "message",
            "id": eid,
            "parentId": parent,
            "timestamp": "2026-09-21T10:00:00.000Z",
            "message": {"role": "user", "content": [{"type": "text", "text": text}]},
        }
    )


def make_state(state: Path, big_bytes: int, reset_sessions: int) -> str:
    """The big session and the sessions the reset job will expire; returns the big one's key."""
    folder = state / "agents" / "main" / "sessions"
    folder.mkdir(parents=True, mode=0o700)
    cwd = str(state / "workspace")
    now = int(time.time() * 1000)
    registry: dict[str, Any] = {}

    def add(key: str, lines: list[bytes], sid: str) -> None:
        path = folder / f"{sid}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        os.chmod(path, 0o600)
        registry[key] = {
            "sessionId": sid,
            "sessionFile": str(path),
            "updatedAt": now,
            "sessionStartedAt": now,
            "lastInteractionAt": now,
            "chatType": "direct",
            "compactionCount": 0,
            "totalTokens": 0,
        }

    big_key = "agent:main:telegram:direct:big"
    sid = str(uuid.uuid4())
    lines, size, parent, n = [header(sid, big_key, cwd)], 0, None, 0
    while size < big_bytes:
        eid = f"{n:08x}"
        lines.append(message(eid, parent, f"{n} {TEXT}"))
        size += len(lines[-1]) + 1
        parent, n = eid, n + 1
    add(big_key, lines, sid)
    for i in range(reset_sessions):
        sid = str(uuid.uuid4())
        key = f"agent:main:telegram:direct:{200000 + i}"
        facts = (
            f"We decided to book room {i} at the Hiiragiya in Kyoto for 2026-04-03; "
            f"the plan is in notes/trip-{i}.md."
        )
        add(key, [header(sid, key, cwd), message("00000000", None, facts)], sid)
    (folder / "sessions.json").write_bytes(orjson.dumps(registry))
    (state / "adopted.json").write_bytes(orjson.dumps({"adoptedAt": 0}))
    return big_key


# ---------------------------------------------------------------------------------------------
# The probe load


class Probes:
    """Open-loop probes in a thread of their own: (scheduled send time, latency) per ack."""

    def __init__(self, sock: Path, rate: float, sessions: int) -> None:
        self.sock = sock
        self.rate = rate
        self.sessions = sessions
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(c) for c in range(PROBE_CLIENTS)))

    async def _client(self, c: int) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self.sock), limit=1 << 24)
        sent: dict[int, float] = {}
        interval = PROBE_CLIENTS / self.rate

        async def read() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    return
                now = time.monotonic()
                msg = orjson.loads(line)
                t = sent.pop(msg.get("id"), None)
                if t is None:
                    continue
                if "error" in msg:
                    self.errors += 1
                self.samples.append((t, now - t))

        task = asyncio.create_task(read())
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            at = start + n * interval
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rid = n * PROBE_CLIENTS + c
            s = rid % self.sessions
            params = {
                "channel": "telegram",
                "chatType": "direct",
                "peer": f"{100000 + s}",
                "messageId": f"probe-{rid}",
                "text": f"probe {rid}",
            }
            sent[rid] = at
            req = {"jsonrpc": "2.0", "id": rid, "method": "message.ingest", "params": params}
            writer.write(orjson.dumps(req) + b"\n")
            n += 1
            if n % 64 == 0:
                await writer.drain()
        await asyncio.sleep(1.0)
        writer.close()
        task.cancel()

    def window(self, t0: float, t1: float) -> list[float]:
        return sorted(lat for t, lat in list(self.samples) if t0 <= t < t1)


class CpuMeter:
    """CPU seconds of the daemon (its event loop's thread, its other threads) and of its worker
    processes, sampled in a thread: a figure the machine's load barely moves, unlike latency."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, float, float]] = []
        self.by_worker: list[tuple[float, dict[int, float]]] = []
        self._stop = threading.Event()
        self._dead: dict[int, float] = {}  # workers seen, by pid: their last CPU seconds
        self.kinds: dict[int, str] = {}  # worker pid -> what it is
        threading.Thread(target=self._run, daemon=True).start()

    def _cpu(self, path: str) -> float:
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return -1.0
        return (int(fields[11]) + int(fields[12])) / self.TICK  # utime + stime

    def _children(self) -> float:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.pid:
                if int(name) not in self.kinds:
                    with contextlib.suppress(OSError):
                        with open(f"/proc/{name}/cmdline", "rb") as f:
                            argv = f.read().split(b"\0")
                        self.kinds[int(name)] = " ".join(a.decode() for a in argv[1:5])
                cpu = self._cpu(f"/proc/{name}/stat")
                if cpu >= 0:
                    self._dead[int(name)] = cpu
        return sum(self._dead.values())

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            main = self._cpu(f"/proc/{self.pid}/task/{self.pid}/stat")
            every = self._cpu(f"/proc/{self.pid}/stat")
            if main < 0 or every < 0:
                return
            self.samples.append((time.monotonic(), main, every - main, self._children()))
            self.by_worker.append((time.monotonic(), dict(self._dead)))

    def stop(self) -> None:
        self._stop.set()

    def window(self, t0: float, t1: float) -> tuple[float, float, float]:
        """(event loop, other threads, workers) CPU seconds between t0 and t1."""

        def at(t: float) -> tuple[float, float, float]:
            before = [s for s in self.samples if s[0] <= t]
            s = before[-1] if before else self.samples[0]
            return s[1], s[2], s[3]

        a, b = at(t0), at(t1)
        return b[0] - a[0], b[1] - a[1], b[2] - a[2]

    def workers(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds of each kind of worker between t0 and t1."""

        def at(t: float) -> dict[int, float]:
            before = [s for s in self.by_worker if s[0] <= t]
            return (before[-1] if before else self.by_worker[0])[1]

        a, b = at(t0), at(t1)
        out: dict[str, float] = {}
        for pid, cpu in b.items():
            kind = self.kinds.get(pid, "?").replace("-m daemon.", "")
            out[kind] = out.get(kind, 0.0) + cpu - a.get(pid, 0.0)
        return {k: round(v, 2) for k, v in out.items() if v >= 0.05}


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


# ---------------------------------------------------------------------------------------------
# The phases


class Events:
    """job.run and memory.flushed notifications, read in a thread."""

    def __init__(self, sock: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(str(sock))
        req = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "events.subscribe",
            "params": {"events": ["job.run", "memory.flushed"]},
        }
        self.s.sendall(orjson.dumps(req) + b"\n")
        self.jobs: list[tuple[float, dict[str, Any]]] = []
        self.flushed_at: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        f = self.s.makefile("rb")
        for line in f:
            msg = orjson.loads(line)
            now = time.monotonic()
            if msg.get("method") == "job.run":
                self.jobs.append((now, msg["params"]))
            elif msg.get("method") == "memory.flushed" and msg["params"].get("reason") == "reset":
                self.flushed_at.append(now)


def settle(sock: Path, timeout: float = 300.0) -> float:
    """Wait until the start-up catch-up is over: the index's first pass (over the big session:
    12 s of the index worker on a loaded machine, all of the baseline phase) and the mirror's
    copy of the state folder. Returns the seconds waited."""
    t0 = time.monotonic()
    with Client(sock, timeout=60) as c:
        while time.monotonic() - t0 < timeout:
            st = c.call("status")
            search, backup = st.get("search", {}), st.get("backup", {})
            if search.get("passes", 0) >= 1 and backup.get("state") in ("ok", "disabled"):
                break
            time.sleep(0.2)
    return time.monotonic() - t0


def other_phases(
    client: Client, big_key: str, seconds: float, phases: list[tuple[str, float, float, str]]
) -> None:
    """The compaction, history and big-message phases, one after the other."""
    t0 = time.monotonic()
    res = client.call("sessions.compact", {"sessionKey": big_key})
    took = time.monotonic() - t0
    note = (
        f"compacted {res.get('summarizedEntries')} entries in {took:.1f} s"
        if res.get("compacted")
        else f"not compacted: {res.get('reason')}"
    )
    time.sleep(max(0.0, seconds - took))
    phases.append(("compaction", t0, time.monotonic(), note))

    t0 = time.monotonic()
    pages, before = 0, None
    while time.monotonic() - t0 < seconds:
        params: dict[str, Any] = {"sessionKey": big_key, "limit": 200}
        if before is not None:
            params["before"] = before
        page = client.call("sessions.history", params)
        pages += 1
        before = page.get("before")
    phases.append(("history", t0, time.monotonic(), f"{pages} pages of 200 entries"))

    t0 = time.monotonic()
    big_text = "x" * (1_000_000 - 300)
    for i in range(60):
        client.call(
            "message.ingest",
            {
                "channel": "telegram",
                "chatType": "direct",
                "peer": "bigmessages",
                "messageId": f"big-{i}",
                "text": f"{i} {big_text}",
            },
        )
    took = time.monotonic() - t0
    time.sleep(max(0.0, seconds - took))
    phases.append(("big", t0, time.monotonic(), f"60 messages of 1 MB in {took:.1f} s"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--probe-sessions", type=int, default=100)
    ap.add_argument("--big-mb", type=int, default=150)
    ap.add_argument("--reset-sessions", type=int, default=10_000)
    ap.add_argument(
        "--idle-minutes",
        type=int,
        default=2,
        help="the reset sessions' idleMinutes: the job runs this long after the state folder "
        "is written (1 before the start-up catch-up was waited for: the job then came during "
        "the baseline on a loaded machine)",
    )
    ap.add_argument("--phase-seconds", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true", help="keep the state folder")
    ap.add_argument("--only-reset", action="store_true", help="baseline and reset phases only")
    ap.add_argument(
        "--no-settle",
        action="store_true",
        help="start the probes without waiting for the start-up catch-up (as before 2026-12-06 "
        "19:50: the baseline then overlapped the index's first pass over the big session)",
    )
    ap.add_argument("--profile", help="write py-spy's folded stacks of the daemon here")
    ap.add_argument(
        "--profile-format",
        default="raw",
        help="py-spy's --format: raw (folded stacks) or speedscope (with --idle: a timeline)",
    )
    ap.add_argument("--profile-idle", action="store_true", help="py-spy --idle: idle samples too")
    ap.add_argument("--profile-gil", action="store_true", help="py-spy --gil: GIL holders only")
    ap.add_argument(
        "--profile-workers", action="store_true", help="py-spy --subprocesses: the workers too"
    )
    ap.add_argument(
        "--profile-start", type=float, default=55.0, help="seconds after the daemon is ready"
    )
    ap.add_argument("--profile-seconds", type=int, default=40)
    ap.add_argument("--log-level", default="warning", help="the daemon's; its log is daemon.log")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sessiond-isolation-", dir=os.environ.get("BENCH_DIR")))
    state = work / "state"
    proc: subprocess.Popen[bytes] | None = None
    try:
        t = time.monotonic()
        big_key = make_state(state, args.big_mb * 1_000_000, args.reset_sessions)
        written = time.monotonic()
        print(
            f"state: one {args.big_mb} MB session and {args.reset_sessions} sessions to reset, "
            f"written in {written - t:.1f} s"
        )
        cfg = work / "config.json5"
        cfg.write_text(
            orjson.dumps(
                {
                    "daemon": {"logLevel": args.log_level, "timezone": "UTC"},
                    "session": {
                        "dmScope": "per-channel-peer",
                        "reset": {
                            "mode": "idle",
                            "idleMinutes": args.idle_minutes,
                            "deferWhileActiveMinutes": 0,
                        },
                    },
                }
            ).decode()
        )
        sock = state / "sessiond.sock"
        argv = [sys.executable, "-m", "daemon", "run", "--config", str(cfg)]
        argv += ["--state-dir", str(state)]
        with (work / "daemon.log").open("wb") as logf:
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT)
        wait_ready(sock, proc, timeout=300)
        spies: list[subprocess.Popen[bytes]] = []
        spied_at: list[float] = []
        if args.profile:
            # Sampled stacks of the daemon's threads, folded, around the reset job (the expiry
            # job runs a minute after the start).
            def spy() -> None:
                assert proc is not None and args.profile
                spied_at.append(time.monotonic())
                spies.append(
                    subprocess.Popen(
                        [
                            *SPY,
                            *["-f", args.profile_format, "-d", str(args.profile_seconds)],
                            *(["--idle"] if args.profile_idle else []),
                            *(["--gil"] if args.profile_gil else []),
                            *(["--subprocesses"] if args.profile_workers else []),
                            *["-p", str(proc.pid), "-o", args.profile],
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=open(f"{args.profile}.log", "wb"),  # noqa: SIM115
                    )
                )

            threading.Timer(args.profile_start, spy).start()
        events = Events(sock)
        cpu = CpuMeter(proc.pid)
        if not args.no_settle:
            waited = settle(sock)
            print(f"start-up catch-up (index's first pass, mirror) over {waited:.1f} s after ready")
        probes = Probes(sock, args.rate, args.probe_sessions)
        probes.start()
        time.sleep(3.0)  # the probe sessions are created; the start-up catch-up settles
        phases: list[tuple[str, float, float, str]] = []
        client = Client(sock, timeout=600)

        t0 = time.monotonic()
        time.sleep(args.phase_seconds)
        phases.append(("baseline", t0, time.monotonic(), ""))

        if not args.only_reset:
            other_phases(client, big_key, args.phase_seconds, phases)

        # The reset job: the reset sessions turn idle `--idle-minutes` after they were written,
        # and the expiry job runs every minute.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(j.get("archived") for _, j in events.jobs):
            time.sleep(0.1)
        done = [(at, j) for at, j in events.jobs if j.get("archived")]
        if not done:
            print("the reset job did not run within 5 minutes")
            return
        ended, job = done[0]
        started = ended - float(job["seconds"])
        if started < phases[-1][2]:
            print(
                f"WARNING: the reset job started {phases[-1][2] - started:.1f} s before the "
                f"{phases[-1][0]} phase ended (raise --idle-minutes): that phase is not clean"
            )
        want = min(args.reset_sessions, int(job["archived"]))
        while time.monotonic() < deadline and len(events.flushed_at) < want:
            time.sleep(0.1)
        notes_done = max(events.flushed_at) if events.flushed_at else float("nan")
        time.sleep(1.0)
        phases.append(("reset", started, max(ended, notes_done), ""))
        probes.stop()
        client.close()
        for p in spies:
            p.wait(120)

        la = os.getloadavg()
        print(
            f"probes: {args.rate:.0f} msgs/s over {args.probe_sessions} sessions "
            f"({len(probes.samples)} acks, {probes.errors} errors); load average "
            f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; cpus={os.cpu_count()}"
        )
        base = probes.window(phases[0][1], phases[0][2])
        base_p99 = pct(base, 0.99)
        cpu.stop()
        print(
            f"{'phase':12} {'acks':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99/base':>9}"
            f"  {'cpu s: loop':>11} {'threads':>7} {'workers':>7}"
        )
        for name, a, b, note in phases:
            xs = probes.window(a, b)
            p99 = pct(xs, 0.99)
            loop_s, threads_s, workers_s = cpu.window(a, b)
            print(
                f"{name:12} {len(xs):7d} {pct(xs, 0.5) * 1000:8.1f} {p99 * 1000:8.1f} "
                f"{(xs[-1] if xs else float('nan')) * 1000:8.1f} {p99 / base_p99:9.2f}"
                f"  {loop_s:11.2f} {threads_s:7.2f} {workers_s:7.2f}"
                + (f"   {note}" if note else "")
            )
        for name, a, b, _note in phases:
            print(f"  workers' cpu s in {name}: {cpu.workers(a, b)}")
        print(
            f"reset job: {job['archived']} of {job['checked']} sessions archived in "
            f"{float(job['seconds']):.2f} s; memory notes of {len(events.flushed_at)} sessions "
            f"written {notes_done - started:.2f} s after the job started (target < 4 s)"
        )
        if spied_at:
            print(f"profile: started {started - spied_at[0]:.2f} s before the reset job")
        if events.flushed_at:
            at = sorted(t - started for t in events.flushed_at)
            marks = ", ".join(
                f"{q:.0%} at {at[min(len(at) - 1, int(q * len(at)))]:.2f} s"
                for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
            )
            print(f"memory notes (after the job started): {marks}, all at {at[-1]:.2f} s")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()

"""Ingest benchmark: durable messages per second, ack latency and CPU per message of the whole
process tree, each scenario against this machine's ceiling measured in the same run.

    python bench/ingest.py [--scenario NAME ...] [--runs 3] [--messages 100000] ...
    python bench/ingest.py --shards 2 [--via redis]

Scenarios (default: the first four):
  sessions-1k    closed loop, 16 clients x 64 in flight over 1,000 sessions
                 (dmScope per-channel-peer)
  sessions-100k  the same over 100,000 sessions (--big-messages, default 2 per session)
  hot            one hot session: the default config (dmScope main), every DM in agent:main:main,
                 for --hot-seconds (default 30: the session is compacted several times; the
                 compactions finished and the largest tokensAfter are printed, the goal being
                 at most half the threshold)
  open-5k        open loop at a fixed offered rate (--rate, default 5,000 msgs/s), --open-seconds;
                 latency counts from each message's scheduled send time. First a warm-up (not
                 measured): one message per session, then --settle seconds of rest, so the
                 figure is a daemon's steady state, not its start (--cold: no warm-up)
  shards         --shards N: 1 daemon, then N daemons (each its own state folder, socket and
                 `shards: {count: N, index: i}`); messages over 8 agents, each routed to its owner
                 (with --via redis: published to one Redis stream per shard instead)

Each run starts the real daemon on a fresh state folder and drives it from a separate process.
In the same run it measures a bare NDJSON Unix-socket server that only parses each line, appends
it to one file and acknowledges after one fdatasync per batch: the ceiling of this machine and
language (for sessions-1k also that server written with anyio streams, as the daemon is). Runs
alternate (ours, bare, ours, bare, ...) and medians are compared.

CPU and memory count the whole process tree of each server (the daemon, its index and mirror
workers and any other child; bench/proctree.py): `cpu` is the tree's CPU per message, `daemon`
the daemon process alone (the figure older versions printed), `its loop` the daemon's main
thread (the event loop, without the threads that write and sync), `rss` the peak of the tree's
summed RSS during the run. `BENCH_CONFIG='{...}'` replaces the daemon's config for the socket
scenarios.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ingest_load import IN_FLIGHT, message_params, owner, shard_of
from proctree import TreeMeter

HERE = Path(__file__).resolve().parent
LOAD = str(HERE / "ingest_load.py")
QUIET = 'daemon: {logLevel: "warning"}'
SPREAD = f'{{session: {{dmScope: "per-channel-peer"}}, {QUIET}}}'
SCENARIOS = ("sessions-1k", "sessions-100k", "hot", "open-5k")
Result = dict[str, float]
BARE_HOT_SECONDS = 5.0
SETTLE_LIMIT = 60.0  # --settle-disk
INODE_WAIT = 65.0  # --inode-wait: the kernel's 60 s (settle_disk) and a margin
INODE_WAIT_ABOVE = 10_000  # inodes a removal freed (100,000 sessions: about 300,000)
KEEP = "--keep" in sys.argv or "--timeline" in sys.argv
TIMELINE = "--timeline" in sys.argv


def wait_socket(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            s.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not start listening on {path}")


def run_driver(plan: dict[str, Any], start: Callable[[], None]) -> Result:
    """Run the driver; `start()` is called when its measured part begins (after any warm-up)."""
    proc = subprocess.Popen(
        [sys.executable, LOAD, "drive", json.dumps(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    if plan.get("warmup"):
        proc.stderr.readline()  # "measuring": warmed up and settled
    start()
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"driver failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out)  # type: ignore[no-any-return]


def measured(
    procs: list[subprocess.Popen[bytes]], work: Callable[[Callable[[], None]], Result]
) -> Result:
    """Run `work(start)`, metering the process tree from the moment it calls `start()`."""
    meter = TreeMeter([p.pid for p in procs])
    res = work(meter.start)
    tree = meter.stop()
    n = res["messages"]
    res["cpu_us"] = tree["tree_cpu_s"] / n * 1e6
    res["daemon_us"] = tree["root_cpu_s"] / n * 1e6
    res["loop_us"] = tree["main_thread_cpu_s"] / n * 1e6
    res["rss_mb"] = tree["peak_rss_mb"]
    res["procs"] = tree["procs"]
    return res


@contextmanager
def daemons(
    workdir: Path, configs: list[str], tag: str
) -> Iterator[tuple[list[Path], list[subprocess.Popen[bytes]]]]:
    """Start one daemon per config, each on its own state folder; yield sockets and processes."""
    procs: list[subprocess.Popen[bytes]] = []
    socks: list[Path] = []
    try:
        for i, text in enumerate(configs):
            state = workdir / f"{tag}-{i}"
            cfg = workdir / f"{tag}-{i}.json5"
            cfg.write_text(text)
            argv = [sys.executable, "-m", "daemon", "run", "--config", str(cfg)]
            argv += ["--state-dir", str(state)]
            with (workdir / f"{tag}-{i}.log").open("wb") as logf:
                procs.append(subprocess.Popen(argv, stdout=logf))
            socks.append(state / "sessiond.sock")
        for s in socks:
            wait_socket(s, procs)
        yield socks, procs
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if not KEEP:
            # Our own temporary state (100,000 sessions leave gigabytes): gone once measured.
            free = os.statvfs(workdir).f_ffree
            for i in range(len(configs)):
                shutil.rmtree(workdir / f"{tag}-{i}", ignore_errors=True)
            settle_disk(freed=os.statvfs(workdir).f_ffree - free)


def discards_done() -> int:
    """Discard requests completed, summed over the block devices (/proc/diskstats)."""
    done = 0
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                v = line.split()
                if len(v) >= 18 and not v[2].startswith(("loop", "ram", "dm-")):
                    done += int(v[14])
    except OSError:
        pass
    return done


def settle_disk(freed: int = 0, quiet: float = 1.0) -> None:
    """After a run's state is removed: write back what it left dirty and wait (at most
    --settle-disk s) until the disk has stopped discarding, so that no run measures the
    removal of the one before. On a file system mounted with `discard` (as here), removing
    100,000 sessions' files (300,000 files and folders with the mirror's) takes the kernel
    tens of seconds and is followed by discards of the freed extents; a test outside the
    daemon (50,000 sessions' files removed, then 20 file creations and a journal sync in a
    loop) ran at a quarter of its speed for the first 3 s after the removal, and at its usual
    speed from about 6 s on (--settle-disk 0: the next run at once, as before).

    That is not why successive 100,000-session runs fell (9.6k, 6.6k, 4.3k msgs/s on a quiet
    machine, with the discards waited for). What made them fall: this machine's ext4 has no
    journal, and without one the kernel's inode allocator passes over every free inode freed
    less than 60 s ago (fs/ext4/ialloc.c, `find_inode_bit` and `recently_deleted`: a
    buffer-cache look-up per free inode passed over, and a group whose free inodes were all
    freed just now is walked to its end). Files created right after the previous run's were
    removed cost 3-4x the kernel time each (20,000 files: 89 us each when fresh, 337-401 us
    right after a removal, 135 us 70 s after it). So when the removal freed more than
    INODE_WAIT_ABOVE inodes, the next run starts --inode-wait s after it (0: at once)."""
    t0 = time.monotonic()
    if SETTLE_LIMIT > 0:
        discards_settled(SETTLE_LIMIT, quiet)
        took = time.monotonic() - t0
        print(f"    (disk settled {took:.1f} s after the run's removal)", flush=True)
    if freed > INODE_WAIT_ABOVE and INODE_WAIT > 0:
        time.sleep(max(0.0, INODE_WAIT - (time.monotonic() - t0)))
        # Counted on the whole file system: other people's removals meanwhile count too.
        print(f"    ({freed} inodes freed: next run {INODE_WAIT:.0f} s after)", flush=True)


def discards_settled(limit: float, quiet: float) -> None:
    """Sync, then wait (at most `limit` s) until the disk has been `quiet` s without discards."""
    t0 = time.monotonic()
    os.sync()
    last = discards_done()
    calm_since = time.monotonic()
    while time.monotonic() - t0 < limit:
        time.sleep(0.2)
        done = discards_done()
        # A removal discards thousands of extents a second; other work on the disk, a few.
        if done - last > 20:
            calm_since = time.monotonic()
        last = done
        if time.monotonic() - calm_since >= quiet:
            break


def run_ours(workdir: Path, configs: list[str], plan: dict[str, Any], tag: str) -> Result:
    if TIMELINE:
        plan = {**plan, "timeline": str(workdir / f"{tag}.timeline")}
    with daemons(workdir, configs, tag) as (socks, procs):
        res = measured(
            procs, lambda start: run_driver({**plan, "sockets": [str(s) for s in socks]}, start)
        )
    res.update(compactions(workdir, tag, len(configs)))
    if TIMELINE and (workdir / f"{tag}.timeline").exists():
        print(stalls(workdir / f"{tag}.timeline"), flush=True)
    return res


def stalls(path: Path, window: float = 0.1, top: int = 5) -> str:
    """The `top` windows of sent messages whose slowest ack was slowest, with the wall-clock
    time of each (to find the daemon's log lines of the same moment)."""
    import datetime

    lines = path.read_text().splitlines()
    wall0 = float(lines[0].split()[2])
    worst: dict[int, float] = {}
    for line in lines[1:]:
        t, ms = map(float, line.split())
        w = int(t / window)
        worst[w] = max(worst.get(w, 0.0), ms)
    out = [f"    slowest {window * 1000:.0f} ms windows of {path.name} (sent at; worst ack):"]
    for w, ms in sorted(worst.items(), key=lambda kv: -kv[1])[:top]:
        at = datetime.datetime.fromtimestamp(wall0 + w * window, datetime.UTC)
        out.append(f"      +{w * window:6.1f} s  {at:%H:%M:%S.%f}  {ms:8.1f} ms")
    return "\n".join(out)


def compactions(workdir: Path, tag: str, count: int) -> Result:
    """How the compactions of a run went, from the daemons' `compaction.done` log lines (logged
    at level info, which the hot scenario turns on): how many, and the largest tokensAfter as a
    share of the compaction threshold. Nothing when the daemons logged at level warning."""
    from daemon.config import CompactionConfig

    done, failed, info = [], 0, False
    for i in range(count):
        for line in (workdir / f"{tag}-{i}.log").read_bytes().splitlines():
            if b'"compaction.done"' in line:
                done.append(json.loads(line))
            failed += b'"compaction.failed"' in line
            info = info or b'"daemon.started"' in line
    if not info:
        return {}  # logged at level warning: compactions are not known
    at = CompactionConfig().thresholds().compact_at
    return {
        "compactions": float(len(done)),
        "compactions_failed": float(failed),
        "max_after_share": max((int(d.get("tokensAfter") or 0) for d in done), default=0) / at,
    }


def run_bare(workdir: Path, plan: dict[str, Any], tag: str, style: str = "bare") -> Result:
    sock = workdir / f"{tag}.sock"
    proc = subprocess.Popen(
        [sys.executable, LOAD, style, str(sock), str(workdir / f"{tag}.ndjson")],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_socket(sock, [proc])
        if TIMELINE:
            plan = {**plan, "timeline": str(workdir / f"{tag}.timeline")}
        # Agents are the daemon's business; the bare server takes the same lines on one socket.
        res = measured([proc], lambda start: run_driver({**plan, "sockets": [str(sock)]}, start))
        if TIMELINE and (workdir / f"{tag}.timeline").exists():
            print(stalls(workdir / f"{tag}.timeline"), flush=True)
        return res
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# Redis Streams


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port, proc
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def publish_and_wait(port: int, plan: dict[str, Any], count: int) -> Result:
    """Pipelined XADD of every message to its shard's stream, then wait until each stream's
    group has read and acknowledged all of it. Throughput counts from the first XADD."""
    import orjson
    import redis

    client = redis.Redis(port=port)
    total = [0] * count
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for n in range(plan["messages"]):
        params = message_params(n, plan)
        k = shard_of(params, count)
        total[k] += 1
        pipe.xadd(f"bench:ingest:{k}", {"params": orjson.dumps(params)})
        if n % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    published = time.perf_counter() - t0
    deadline = time.monotonic() + 600
    left = set(range(count))
    while left:
        for k in list(left):
            groups = client.xinfo_groups(f"bench:ingest:{k}")
            g = groups[0] if groups else {}
            if g.get("pending") == 0 and g.get("entries-read") == total[k]:
                left.discard(k)
        if time.monotonic() > deadline:
            raise RuntimeError(f"streams {sorted(left)} not drained after 600 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    rejected = sum(client.xlen(f"bench:ingest:{k}:rejected") for k in range(count))
    client.close()
    if rejected:
        raise RuntimeError(f"{rejected} entries were dead-lettered (see <stream>:rejected)")
    n = plan["messages"]
    return {"messages": n, "seconds": elapsed, "rate": n / elapsed, "publish_s": published}


def run_redis(workdir: Path, configs: list[str], plan: dict[str, Any], tag: str) -> Result:
    with redis_server(workdir) as (port, rproc):
        url = f"redis://127.0.0.1:{port}/0"
        cfgs = [
            c[:-1] + f', ingest: {{redis: {{url: "{url}", stream: "bench:ingest:{i}", '
            f'group: "sessiond", consumer: "sessiond-{i}"}}}}}}'
            for i, c in enumerate(configs)
        ]
        with daemons(workdir, cfgs, tag) as (_socks, procs):
            rmeter = TreeMeter([rproc.pid])
            rmeter.start()
            res = measured(
                procs, lambda start: (start(), publish_and_wait(port, plan, len(configs)))[1]
            )
            res["redis_us"] = rmeter.stop()["tree_cpu_s"] / res["messages"] * 1e6
            return res


# ---------------------------------------------------------------------------------------------
# Scenarios


def shard_agents(count: int, per_shard: int = 4) -> list[str]:
    """Agent ids spread evenly over `count` shards by the daemon's own hash."""
    picked: dict[int, list[str]] = {k: [] for k in range(count)}
    i = 0
    while any(len(v) < per_shard for v in picked.values()):
        name = f"agent{i}"
        k = owner(name, count)
        if len(picked[k]) < per_shard:
            picked[k].append(name)
        i += 1
    return [a for k in range(count) for a in picked[k]]


def shard_configs(agents: list[str], count: int) -> list[str]:
    listed = ", ".join(f'{{id: "{a}"}}' for a in agents)
    return [
        f'{{session: {{dmScope: "per-channel-peer"}}, {QUIET}, agents: {{list: [{listed}]}}, '
        f"shards: {{count: {count}, index: {i}}}}}"
        for i in range(count)
    ]


def plan_for(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    plan: dict[str, Any] = {"clients": args.clients, "sessions": 1000, "tag": name}
    spread = os.environ.get("BENCH_CONFIG", SPREAD)
    if name == "sessions-1k":
        return {**plan, "messages": args.messages}, spread
    if name == "sessions-100k":
        return {**plan, "messages": args.big_messages, "sessions": 100_000}, spread
    if name == "hot":
        # Level info logs each compaction.done (with tokensAfter) and nothing per message.
        size = {"seconds": args.hot_seconds}
        if args.hot_messages:
            size = {"messages": args.hot_messages}
        return {**plan, **size}, os.environ.get("BENCH_CONFIG", '{daemon: {logLevel: "info"}}')
    if name == "open-5k":
        plan = {**plan, "messages": int(args.rate * args.open_seconds), "rate": args.rate}
        if not args.cold:
            plan.update(warmup=True, settle=args.settle)
        return plan, spread
    raise SystemExit(f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)})")


def bare_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """The bare server's plan: the same, but a timed run no longer than BARE_HOT_SECONDS."""
    if "seconds" in plan:
        return {**plan, "seconds": min(plan["seconds"], BARE_HOT_SECONDS)}
    return plan


def series(label: str, runs: int, servers: dict[str, Callable[[int], Result]]) -> dict[str, Result]:
    results: dict[str, list[Result]] = {name: [] for name in servers}
    for n in range(runs):
        for name, run in servers.items():
            r = run(n)
            results[name].append(r)
            print(f"  {label} run {n + 1} {name:<11}: {summary(r)}", flush=True)
    return {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if all(k in r for r in rs)}
        for name, rs in results.items()
    }


def report(label: str, med: dict[str, Result], ours: list[str]) -> None:
    print(f"{label}: medians (load average {load()})")
    for name, r in med.items():
        print(f"    {name:<11} {summary(r)}")
    bare = med["bare"]
    for name in ours:
        line = f"    ratio {name} / bare: throughput {med[name]['rate'] / bare['rate']:.2f}"
        if "p99_ms" in med[name]:
            line += f", ack p99 {med[name]['p99_ms'] / bare['p99_ms']:.1f}x the bare server's"
        print(line)
    if "bare-anyio" in med:
        print(
            "    ratio sessiond / bare-anyio: "
            f"{med['sessiond']['rate'] / med['bare-anyio']['rate']:.2f}"
        )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summary(r: Result) -> str:
    parts = [f"{r['rate']:>8.0f} msgs/s"]
    if "p50_ms" in r:
        parts.append(f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms")
    parts.append(
        f"cpu {r['cpu_us']:.1f} us/msg (daemon {r['daemon_us']:.1f}, its loop {r['loop_us']:.1f})"
    )
    if "redis_us" in r:
        parts.append(f"redis {r['redis_us']:.1f} us/msg")
    parts.append(f"rss {r['rss_mb']:.0f} MB in {r['procs']:.0f} procs")
    if "compactions" in r:
        share = r["max_after_share"]
        parts.append(
            f"{r['compactions']:.0f} compactions done ({r['compactions_failed']:.0f} failed, "
            f"e.g. cut short by the stop), largest tokensAfter {share:.2f} of the threshold "
            f"({'within' if share <= 0.5 else 'OVER'} the goal of 0.50)"
        )
    return "  ".join(parts)


def main() -> None:
    global SETTLE_LIMIT, INODE_WAIT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--messages", type=int, default=100_000, help="sessions-1k and shards")
    ap.add_argument("--big-messages", type=int, default=200_000, help="sessions-100k")
    ap.add_argument(
        "--hot-seconds",
        type=float,
        default=30.0,
        help="hot: closed loop for this long (several compaction cycles); the bare server\n"
        f"runs {BARE_HOT_SECONDS:.0f} s at most (nothing of it changes with time)",
    )
    ap.add_argument("--hot-messages", type=int, default=0, help="hot: this many instead")
    ap.add_argument("--rate", type=float, default=5000.0, help="open-5k: offered msgs/s")
    ap.add_argument("--open-seconds", type=float, default=10.0, help="open-5k: duration")
    ap.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="open-5k: seconds of rest between the warm-up (one message per session,\n"
        "not measured) and the open loop",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="open-5k: no warm-up; the open loop starts on an empty daemon, so its\n"
        "first second creates every session",
    )
    ap.add_argument("--shards", type=int, default=0, help="compare 1 daemon with N shards")
    ap.add_argument("--via", choices=["socket", "redis"], default="socket")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument(
        "--timeline",
        action="store_true",
        help="open-5k: write each ack's due time and latency to <run>.timeline in the kept\n"
        "folder and print the slowest 100 ms windows (implies --keep)",
    )
    ap.add_argument(
        "--settle-disk",
        type=float,
        default=SETTLE_LIMIT,
        help="after each run's state is removed, wait up to this many seconds until the\n"
        "disk is quiet (0: start the next run at once, as before)",
    )
    ap.add_argument(
        "--inode-wait",
        type=float,
        default=INODE_WAIT,
        help=f"after a removal that freed more than {INODE_WAIT_ABOVE:,} inodes, start the next\n"
        "run this many seconds after it (ext4 without a journal passes over inodes freed\n"
        "in the last 60 s, at a cost per file: see settle_disk; 0: at once, as before)",
    )
    args = ap.parse_args()
    SETTLE_LIMIT = args.settle_disk
    INODE_WAIT = args.inode_wait
    scale_out = args.shards > 0 or args.via == "redis"
    names = args.scenario or ([] if scale_out else ["all"])
    if "all" in names:
        names = list(SCENARIOS)
    workdir = Path(tempfile.mkdtemp(prefix="sessiond-bench-", dir=os.environ.get("BENCH_DIR")))
    print(
        f"ingest benchmark: {args.clients} clients x {IN_FLIGHT} in flight, {args.runs} "
        f"interleaved runs; cpus={os.cpu_count()}; load average {load()}",
        flush=True,
    )
    ours: dict[str, Result] = {}  # sessiond's medians per scenario
    try:
        for name in names:
            plan, cfg = plan_for(name, args)
            servers: dict[str, Callable[[int], Result]] = {
                "sessiond": lambda n, p=plan, c=cfg, nm=name: run_ours(
                    workdir, [c], p, f"{nm}-{n}"
                ),
                "bare": lambda n, p=plan, nm=name: run_bare(
                    workdir, bare_plan(p), f"bare-{nm}-{n}"
                ),
            }
            if name == "sessions-1k":
                servers["bare-anyio"] = lambda n, p=plan: run_bare(
                    workdir, p, f"anyio-{n}", "bare-anyio"
                )
            size = f"{plan.get('messages')} messages"
            if "seconds" in plan:
                size = f"{plan['seconds']:.0f} s of messages"
            print(f"{name}: {size} over {plan['sessions']} sessions", flush=True)
            med = series(name, args.runs, servers)
            report(name, med, ["sessiond"])
            ours[name] = med["sessiond"]
            if name == "sessions-100k" and "sessions-1k" in ours:
                ratio = med["sessiond"]["rate"] / ours["sessions-1k"]["rate"]
                print(f"    ratio sessions-100k / sessions-1k (medians): {ratio:.2f} (goal 0.8)")
        if scale_out:
            shard_series(args, workdir)
    finally:
        if KEEP:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def shard_series(args: argparse.Namespace, workdir: Path) -> None:
    counts = sorted({1, max(1, args.shards)})
    agents = shard_agents(max(counts))
    plan = {"clients": args.clients, "sessions": 1000, "messages": args.messages, "agents": agents}
    run = run_redis if args.via == "redis" else run_ours
    servers: dict[str, Callable[[int], Result]] = {}
    for k in counts:
        servers[f"{k}-shard"] = lambda n, k=k: run(
            workdir, shard_configs(agents, k), {**plan, "tag": f"s{k}-{n}"}, f"s{k}-{n}"
        )
    servers["bare"] = lambda n: run_bare(workdir, {**plan, "tag": f"b{n}"}, f"bare-s-{n}")
    label = f"shards via {args.via}"
    print(
        f"{label}: {args.messages} messages over 1000 sessions of {len(agents)} agents, "
        f"{', '.join(map(str, counts))} shards",
        flush=True,
    )
    med = series(label, args.runs, servers)
    report(label, med, [f"{k}-shard" for k in counts])
    if len(counts) > 1:
        a, b = med[f"{counts[0]}-shard"]["rate"], med[f"{counts[-1]}-shard"]["rate"]
        print(f"    {counts[-1]} shards / 1 shard: {b / a:.2f}")


if __name__ == "__main__":
    main()

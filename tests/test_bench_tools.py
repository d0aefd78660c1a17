"""The measuring parts of bench/ingest.py: whole-tree CPU accounting, shard routing, the open
loop's warm-up and timeline, and the timed closed loop.

A benchmark figure is only as true as what it counts: the tree meter must find a grandchild
started after the measurement began and count its CPU, and every message of a shard plan must go
to the socket of the daemon that owns its agent (the daemon's own rule, daemon/core/shards.py).
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from ingest import stalls
from ingest_load import drive, make_work, owner, timed_lines
from proctree import TreeMeter, tree_pids

from daemon.core.shards import ShardMap

# A child that starts a grandchild burning 0.3 s of its own CPU, waits for it to say so, then
# waits for stdin to close (so the grandchild's CPU is seen while it is alive, and after).
BURN = "import time\nwhile time.process_time() < 0.3: pass\nprint('burnt', flush=True)\n"
PARENT = (
    "import subprocess, sys\n"
    f"g = subprocess.Popen([sys.executable, '-c', {BURN!r}], stdout=subprocess.PIPE)\n"
    "print(g.pid, flush=True)\n"
    "g.stdout.readline()\n"
    "print('grandchild done', flush=True)\n"
    "sys.stdin.read()\n"
    "g.wait()\n"
)


def test_tree_meter_counts_a_grandchild_started_during_the_measurement() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        meter = TreeMeter([proc.pid], interval=0.01)
        meter.start()
        grandchild = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "grandchild done"
        assert grandchild in tree_pids([proc.pid])
        got = meter.stop()
        proc.stdin.close()
        proc.wait(60)
    # The grandchild alone used at least 0.3 s; the root process far less.
    assert got["tree_cpu_s"] >= 0.3
    assert got["root_cpu_s"] < got["tree_cpu_s"]
    assert 0 <= got["main_thread_cpu_s"] <= got["root_cpu_s"] + 0.02  # ticks round
    assert got["procs"] >= 2
    assert got["peak_rss_mb"] > 0


def test_shard_plan_sends_each_message_to_its_owner() -> None:
    agents = [f"agent{i}" for i in range(12)]
    plan = {
        "sockets": ["s0", "s1", "s2"],
        "clients": 6,
        "messages": 3000,
        "sessions": 100,
        "agents": agents,
        "tag": "t",
    }
    seen = 0
    for sock, lines in make_work(plan):
        k = int(sock[1:])
        for line in lines:
            agent = orjson.loads(line)["params"]["agentId"]
            assert ShardMap(3, k).owns(agent)
            assert owner(agent, 3) == k
            seen += 1
    assert seen == 3000


def _bare_server(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    sock, data = tmp_path / "bare.sock", tmp_path / "bare.ndjson"
    load = Path(__file__).resolve().parents[1] / "bench" / "ingest_load.py"
    proc = subprocess.Popen(
        [sys.executable, str(load), "bare", str(sock), str(data)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"  # listening
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
    return proc, sock, data


def test_open_loop_warm_up_is_not_measured_and_the_timeline_has_every_ack(
    tmp_path: Path,
) -> None:
    proc, sock, data = _bare_server(tmp_path)
    timeline = tmp_path / "run.timeline"
    plan = {
        "sockets": [str(sock)],
        "clients": 4,
        "sessions": 30,
        "messages": 200,
        "rate": 2000.0,
        "tag": "t",
        "warmup": True,
        "settle": 0.0,
        "timeline": str(timeline),
    }
    try:
        res = drive(plan)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert res["messages"] == 200  # the warm-up's 30 are not counted
    stored = [orjson.loads(x)["params"]["messageId"] for x in data.read_bytes().splitlines()]
    assert sorted(stored[:30]) == sorted(f"t-warm-{n}" for n in range(30))  # first, all of them
    assert sorted(stored[30:]) == sorted(f"t-{n}" for n in range(200))
    lines = timeline.read_text().splitlines()
    assert lines[0].startswith("# t0 ")
    sent_at = [float(x.split()[0]) for x in lines[1:]]
    assert len(sent_at) == 200 and sent_at == sorted(sent_at)
    assert "slowest 100 ms windows of run.timeline" in stalls(timeline)


def test_stalls_names_the_slowest_window_first(tmp_path: Path) -> None:
    path = tmp_path / "x.timeline"
    path.write_text("# t0 1800000000.0\n0.01 2.0\n0.05 3.0\n0.31 250.0\n0.35 40.0\n0.72 9.0\n")
    report = stalls(path, top=2).splitlines()
    assert "+   0.3 s" in report[1] and "250.0 ms" in report[1]
    assert "+   0.7 s" in report[2] and "9.0 ms" in report[2]


def test_timed_lines_spread_messages_over_clients_until_the_time_is_up() -> None:
    plan = {"sessions": 1000, "tag": "h"}
    far = time.perf_counter() + 3600
    reqs = [orjson.loads(x) for x in itertools.islice(timed_lines(plan, 1, 4, far), 3)]
    assert [r["id"] for r in reqs] == [0, 1, 2]
    assert [r["params"]["messageId"] for r in reqs] == ["h-1", "h-5", "h-9"]
    assert list(timed_lines(plan, 0, 4, time.perf_counter() - 1)) == []

"""The measuring parts of bench/ingest.py: whole-tree CPU accounting and shard routing.

A benchmark figure is only as true as what it counts: the tree meter must find a grandchild
started after the measurement began and count its CPU, and every message of a shard plan must go
to the socket of the daemon that owns its agent (the daemon's own rule, daemon/core/shards.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from ingest_load import make_work, owner
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

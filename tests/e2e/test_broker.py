"""Ingest from Redis Streams end to end: a real redis-server on loopback, the real daemon.

Effectively once: XACK only after the durable append, pending entries read again after a crash,
the messageId making the second ingest a duplicate. Nothing dropped: what can never be stored is
acknowledged into `<stream>:rejected` with the reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from e2e.conftest import Launch
from e2e.harness import Daemon

redis = pytest.importorskip("redis")

STREAM = "gw:ingest"
GROUP = "sessiond"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: Callable[[], Any], timeout: float = 120.0, step: float = 0.05) -> Any:
    """Poll a condition until it is truthy (never a fixed sleep); fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout}s: {value!r}"
        time.sleep(step)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip(
            "redis-server is not installed (Debian package redis-server; .ci/run installs it)"
        )
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*argv, "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                assert proc.poll() is None, "redis-server exited"
                return False

        wait_for(up, timeout=30)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def r(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


def config(redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "session": {"dmScope": "per-channel-peer"},
        "ingest": {
            "redis": {
                "url": redis_url,
                "stream": STREAM,
                "group": GROUP,
                "consumer": "c1",
                "replyStream": "gw:replies",
                "blockMs": 200,
                **extra,
            }
        },
    }


def publish(r: Any, messages: list[dict[str, Any]]) -> None:
    pipe = r.pipeline(transaction=False)
    for params in messages:
        pipe.xadd(STREAM, {"params": orjson.dumps(params)})
    pipe.execute()


def message(i: int, peers: int = 50) -> dict[str, Any]:
    return {
        "channel": "telegram",
        "chatType": "direct",
        "peer": str(i % peers),
        "messageId": f"m{i}",
        "text": f"message number {i}",
    }


def group_info(r: Any) -> dict[str, Any]:
    for g in r.xinfo_groups(STREAM):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == GROUP:
            return dict(g)
    return {}


def drained(r: Any, total: int) -> bool:
    g = group_info(r)
    return bool(g) and g["pending"] == 0 and g.get("entries-read") == total and g.get("lag") == 0


def stored_message_ids(d: Daemon) -> Counter[str]:
    """Every adapter message id in the agent's transcripts (active and archived), counted."""
    seen: Counter[str] = Counter()
    for path in d.sessions_dir().rglob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            entry = orjson.loads(line)
            mid = (entry.get("origin") or {}).get("messageId")
            if mid is not None:
                seen[mid] += 1
    return seen


def test_published_messages_are_stored_acknowledged_and_answered(
    launch: Launch, redis_url: str, r: Any
) -> None:
    d = launch(config=config(redis_url))
    publish(r, [message(i) for i in range(200)])
    wait_for(lambda: drained(r, 200))
    assert stored_message_ids(d) == Counter({f"m{i}": 1 for i in range(200)})
    replies = r.xrange("gw:replies")
    assert len(replies) == 200
    first = orjson.loads(replies[0][1][b"result"])
    assert first["sessionKey"] == "agent:main:telegram:direct:0" and first["duplicate"] is False
    status = d.call("status")["broker"]
    assert status["connected"] is True and status["ingested"] == 200


def test_an_entry_that_cannot_be_stored_is_dead_lettered_with_the_reason(
    launch: Launch, redis_url: str, r: Any
) -> None:
    launch(config=config(redis_url))
    r.xadd(STREAM, {"params": b"{not json"})
    r.xadd(STREAM, {"params": orjson.dumps({"channel": "telegram", "chatType": "direct"})})
    r.xadd(STREAM, {"other": b"x"})
    wait_for(lambda: drained(r, 3))
    dead = r.xrange(f"{STREAM}:rejected")
    assert len(dead) == 3
    errors = [orjson.loads(fields[b"error"]) for _id, fields in dead]
    assert [e["code"] for e in errors] == [-32700, -32602, -32602]
    assert errors[1]["field"] == "text" and errors[2]["field"] == "params"
    assert dead[0][1][b"params"] == b"{not json"  # kept as it was published


def test_a_message_without_an_id_is_stored_once_even_when_redelivered(
    launch: Launch, redis_url: str, r: Any
) -> None:
    d = launch(config=config(redis_url))
    publish(r, [{"channel": "telegram", "chatType": "direct", "peer": "5", "text": "no id"}])
    wait_for(lambda: drained(r, 1))
    entry_id = r.xrange(STREAM)[0][0].decode()
    # Deliver the same entry again as if the ack had been lost: claim it back into the PEL.
    r.xgroup_setid(STREAM, GROUP, "0")
    d.stop()
    d.start()
    wait_for(lambda: drained(r, 1))
    ids = stored_message_ids(d)
    assert ids == Counter({f"redis:{STREAM}:{entry_id}": 1})


def test_a_consumer_killed_mid_stream_stores_every_message_exactly_once(
    launch: Launch, redis_url: str, r: Any
) -> None:
    total = 20_000
    d = launch(config=config(redis_url, batch=512))
    publish(r, [message(i) for i in range(total)])

    def acked() -> int:
        g = group_info(r)
        return int(g.get("entries-read") or 0) - int(g.get("pending") or 0) if g else 0

    wait_for(lambda: acked() >= total // 4)
    d.kill()
    mid = group_info(r)
    assert mid["entries-read"] < total or mid["pending"] > 0 or acked() < total
    d.start()
    wait_for(lambda: drained(r, total), timeout=300)
    counts = stored_message_ids(d)
    assert len(counts) == total
    doubled = {k: v for k, v in counts.items() if v != 1}
    assert doubled == {}
    assert r.xpending(STREAM, GROUP)["pending"] == 0


def test_a_broker_that_is_down_degrades_only_the_broker_path(
    launch: Launch, tmp_path: Path
) -> None:
    d = launch(config=config(f"redis://127.0.0.1:{free_port()}/0"))
    status = wait_for(lambda: (s := d.call("status")["broker"])["lastError"] and s)
    assert status["connected"] is False
    ack = d.call(
        "message.ingest",
        {"channel": "telegram", "chatType": "direct", "peer": "1", "text": "socket still works"},
    )
    assert ack["created"] is True


def shard_config(index: int) -> dict[str, Any]:
    return {
        "agents": {"list": [{"id": "main", "default": True}, {"id": "ops"}]},
        "shards": {"count": 2, "index": index},  # crc32: main -> 0, ops -> 1
    }


def test_two_shards_each_store_their_own_agents_and_refuse_the_others(launch: Launch) -> None:
    from daemon.client import RpcError

    zero, one = launch(config=shard_config(0)), launch(config=shard_config(1))
    for_main = {"channel": "telegram", "chatType": "direct", "peer": "1", "text": "hi"}
    for_ops = {**for_main, "agentId": "ops"}
    assert zero.call("message.ingest", for_main)["sessionKey"] == "agent:main:main"
    assert one.call("message.ingest", for_ops)["sessionKey"] == "agent:ops:main"
    with pytest.raises(RpcError) as e:
        zero.call("message.ingest", for_ops)
    assert e.value.code == 1007
    assert e.value.data == {"agentId": "ops", "shard": 1, "thisShard": 0}
    assert "shard 1" in e.value.message
    with pytest.raises(RpcError) as e:
        one.call(
            "message.append",
            {"sessionKey": "agent:main:main", "message": {"role": "assistant", "content": "x"}},
        )
    assert e.value.code == 1007
    assert not (one.state_dir / "agents" / "main").exists()

"""SIGTERM under load: everything acknowledged is stored, everything else is answered with an
error or left unanswered and not stored, and the daemon exits 0 quickly."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from e2e.harness import RawConnection, ingest_params, message_ids
from ops_harness import Launch, daemons, wait_for, wait_log

STOP_WITHIN = 10.0  # seconds; the unit's TimeoutStopSec is 60


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    with daemons(tmp_path) as launch:
        yield launch


def test_sigterm_while_clients_send_loses_nothing_acknowledged(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-peer"}, "daemon": {"spool": {"enabled": True}}})
    assert d.pid is not None
    clients, burst = 8, 64
    acked: list[set[str]] = [set() for _ in range(clients)]
    refused: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    unanswered: list[set[str]] = [set() for _ in range(clients)]
    sent = [0] * clients
    conns = [RawConnection(d.socket, timeout=30) for _ in range(clients)]

    def send(n: int) -> None:
        conn = conns[n]
        i = 0
        waiting: dict[Any, str] = {}
        try:
            while True:
                waiting = {}
                for _ in range(burst):
                    mid = f"c{n}-{i}"
                    i += 1
                    params = ingest_params(f"p{n}", mid, messageId=mid)
                    rid = conn.send_request("message.ingest", params)
                    waiting[rid] = mid
                    sent[n] += 1
                while waiting:
                    a = conn.read()
                    mid = waiting.pop(a["id"])
                    if "result" in a:
                        acked[n].add(mid)
                    else:
                        refused[n].append({**a["error"], "messageId": mid})
        except (EOFError, BrokenPipeError, ConnectionResetError):
            unanswered[n].update(waiting.values())
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    wait_for("a few thousand acknowledgements", lambda: sum(map(len, acked)) > 3000)
    # The spool is busy too when the signal comes.
    spool = d.state_dir / "spool"
    for i in range(20):
        (spool / "tmp" / f"f{i}").write_bytes(orjson.dumps(ingest_params("s", f"f{i}")))
        os.rename(spool / "tmp" / f"f{i}", spool / "new" / f"f{i}")
    started = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    assert d.proc is not None
    assert d.proc.wait(STOP_WITHIN) == 0
    took = time.monotonic() - started
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert took < STOP_WITHIN
    wait_log(d, "daemon.stopped")

    stored = Counter(mid for lines in d.transcripts().values() for mid in message_ids(lines))
    assert set(stored.values()) <= {1}, "a message was stored twice"
    for n in range(clients):
        assert acked[n] <= set(stored), f"client {n}: acknowledged but not stored"
        # An error means nothing was stored: 1004, "retry".
        for err in refused[n]:
            assert err["code"] == 1004, err
            assert err["messageId"] not in stored
        # What was never answered was never read, so never stored.
        assert not (unanswered[n] & set(stored)), f"client {n}: stored but not answered"
        answered = len(acked[n]) + len(refused[n]) + len(unanswered[n])
        assert answered == sent[n]

    # Spool files were stored and moved, or are still waiting where a restart finds them.
    left = sorted(p.name for sub in ("new", "cur") for p in (spool / sub).iterdir())
    done = sorted(p.name for p in (spool / "done").iterdir() if not p.name.endswith(".json"))
    assert sorted(left + done) == sorted(f"f{i}" for i in range(20))

"""The metrics listener (`daemon.metrics`): real daemons, real HTTP on loopback, values parsed
with prometheus_client's own parser and checked against what the test did."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.client import RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params
from e2e.test_fault_injection import EIO, Faulty, fiu_works

TIMEOUT = 30.0  # generous: the machine is shared


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET over real HTTP."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    status, ctype, body = get(port, "/metrics")
    assert status == 200, body
    assert ctype.startswith("text/plain; version="), ctype
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def with_metrics(launch: Launch, **extra: Any) -> tuple[Daemon, int]:
    port = free_port()
    cfg = {"session": {"dmScope": "per-channel-peer"}, "daemon": {"metrics": f"127.0.0.1:{port}"}}
    cfg.update(extra)
    return launch(cfg), port


def test_metrics_count_what_the_daemon_stored_and_refused(launch: Launch) -> None:
    d, port = with_metrics(launch)
    c = d.client()
    stored = 0
    for i in range(25):
        c.call("message.ingest", ingest_params(f"p{i % 3}", f"hello {i}", messageId=f"m{i}"))
        stored += 1
    for i in (3, 7):  # the same messages again: answered, not stored
        assert c.call("message.ingest", ingest_params(f"p{i % 3}", "x", messageId=f"m{i}"))[
            "duplicate"
        ]
    with pytest.raises(RpcError) as bad:
        c.call("message.ingest", {"channel": "telegram", "text": "no chat type"})
    with pytest.raises(RpcError) as unknown:
        c.call("sessions.shred", {})
    # Resets of every kind: a /new trigger in chat, /reset, and one through the API.
    c.call("message.ingest", ingest_params("p0", "/new", messageId="t1"))
    c.call("message.ingest", ingest_params("p1", "/reset", messageId="t2"))
    stored += 2
    key = c.call("message.ingest", ingest_params("p2", "hi", messageId="t3"))["sessionKey"]
    stored += 1
    c.call("sessions.reset", {"sessionKey": key})
    status = c.call("status")

    m = scrape(port)
    assert value(m, "sessiond_messages_ingested_total") == stored == status["ingested"]
    assert value(m, "sessiond_messages_duplicate_total") == 2 == status["duplicates"]
    assert (
        value(
            m, "sessiond_requests_rejected_total", code=str(bad.value.code), error="invalid_params"
        )
        == 1
    )
    assert (
        value(
            m,
            "sessiond_requests_rejected_total",
            code=str(unknown.value.code),
            error="method_not_found",
        )
        == 1
    )
    assert value(m, "sessiond_resets_total", reason="new") == 1
    assert value(m, "sessiond_resets_total", reason="reset") == 2  # /reset and the API's
    # status counts every reset, the chat triggers included.
    assert status["resets"] == 3
    assert status["resetsByReason"] == {"new": 1, "reset": 2}
    assert value(m, "sessiond_ingest_latency_seconds_count") == stored
    assert value(m, "sessiond_ingest_latency_seconds_bucket", le="+Inf") == stored
    assert value(m, "sessiond_ingest_latency_seconds_sum") > 0
    batches = value(m, "sessiond_batches_total")
    assert batches == status["batches"] >= 1
    assert value(m, "sessiond_commit_latency_seconds_count") == batches
    assert value(m, "sessiond_batch_size_messages_count") == batches
    # Every stored message and the API's reset were acknowledged by some batch.
    assert value(m, "sessiond_batch_size_messages_sum") == stored + 1
    assert value(m, "sessiond_sessions_active", agent="main") == status["agents"]["main"] == 3
    wait_until(
        lambda: value(scrape(port), "sessiond_sessions_archived", agent="main") == 3,
        "three archived sessions",
    )
    assert value(m, "sessiond_storage_writable") == 1
    assert value(m, "sessiond_worker_restarts_total", worker="index") == 0
    assert value(m, "sessiond_worker_restarts_total", worker="mirror") == 0
    wait_until(
        lambda: value(scrape(port), "sessiond_index_state", sessiond_index_state="ok") == 1,
        "the index worker to be ready",
    )
    # The mirror catches up; then its lag is nothing.
    wait_until(
        lambda: value(scrape(port), "sessiond_mirror_lag_bytes") == 0, "the mirror to catch up"
    )
    wait_until(lambda: value(scrape(port), "sessiond_index_lag_batches") == 0, "the index")

    assert get(port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    assert get(port, "/nothing")[0] == 404
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(req, timeout=TIMEOUT)
    assert post.value.code == 405
    post.value.close()


def test_a_mirror_worker_that_dies_is_counted_as_a_restart(launch: Launch) -> None:
    port = free_port()
    d = launch(
        {"daemon": {"metrics": f"127.0.0.1:{port}"}},
        start=False,
    )
    d.env = {"SESSIOND_FAILPOINTS": "mirror.after_write=exit"}
    d.start()
    d.call("message.ingest", ingest_params("p", "hello", messageId=str(uuid.uuid4())))
    wait_until(
        lambda: value(scrape(port), "sessiond_worker_restarts_total", worker="mirror") >= 1,
        "the mirror worker's death to be counted",
    )
    assert value(scrape(port), "sessiond_mirror_failures_total") >= 1


def test_healthz_says_503_and_why_once_the_store_refuses_writes(
    launch: Launch, tmp_path: Any
) -> None:
    reason = fiu_works(tmp_path)
    if reason is not None:
        pytest.skip(reason)
    port = free_port()
    d = launch({"daemon": {"metrics": f"127.0.0.1:{port}"}}, start=False)
    faulty = Faulty(d)
    d.start()
    d.call("message.ingest", ingest_params("p", "before", messageId="a"))
    assert get(port, "/healthz")[0] == 200
    faulty.enable("posix/io/sync/fdatasync", EIO)
    with pytest.raises(RpcError) as failed:
        d.call("message.ingest", ingest_params("p", "during", messageId="b"))
    faulty.disable("posix/io/sync/fdatasync")
    assert failed.value.code == 1004
    status, _, body = get(port, "/healthz")
    assert status == 503
    assert body.startswith("unavailable: storage unavailable: journal sync failed"), body
    m = scrape(port)
    assert value(m, "sessiond_storage_writable") == 0
    assert (
        value(m, "sessiond_requests_rejected_total", code="1004", error="storage_unavailable") >= 1
    )


def test_the_listener_stops_with_the_daemon(launch: Launch) -> None:
    d, port = with_metrics(launch)
    assert get(port, "/healthz")[0] == 200
    # A scraper that connects and says nothing does not hold up the stop.
    idle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        assert d.stop() == 0
    finally:
        idle.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        conn.request("GET", "/healthz")
    conn.close()


def test_a_metrics_address_beyond_loopback_is_a_config_error(launch: Launch) -> None:
    d = launch({"daemon": {"metrics": "0.0.0.0:9464"}}, start=False)
    proc = d.spawn()
    assert proc.wait(timeout=TIMEOUT) == 1
    err = (d.workdir / "daemon-1.err").read_text()
    assert "daemon.metrics: must be a loopback address" in err, err


def test_a_taken_metrics_port_stops_start_up_with_a_clear_error(launch: Launch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = launch({"daemon": {"metrics": f"127.0.0.1:{port}"}}, start=False)
        proc = d.spawn()
        assert proc.wait(timeout=TIMEOUT) == 1
    err = (d.workdir / "daemon-1.err").read_text()
    assert f"cannot listen on 127.0.0.1:{port} (daemon.metrics)" in err, err
    assert "Traceback" not in err

"""Hostile clients against the real daemon (issue 8, "Hostile input").

- Thousands of hostile frames through a real socket: every line gets exactly the answer the
  protocol promises (or none, for notifications), never an internal error, and the daemon lives.
- A client that trickles a line one byte per second is cut off by the frame deadline
  (`daemon.frameTimeoutSeconds`) and never holds up anyone else.
- 10,000 concurrent connections are each served or refused with -32000, never a crash; running
  out of file descriptors only refuses connections for a while.
"""

from __future__ import annotations

import contextlib
import random
import resource
import select
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hostile import answer_expected, hostile_lines, nested
from reliability import tally

from daemon.client import Client, RpcError
from e2e.conftest import Launch
from e2e.harness import Daemon, RawConnection, check_v3, ingest_params

FRAMES = 6_000
CONNECTIONS = 6
INTERNAL_ERROR = -32603


def exchange(d: Daemon, lines: list[bytes], tag: str) -> list[dict[str, Any]]:
    """Send `lines` pipelined on one connection (a writer thread, so neither side's buffers can
    fill up), then a sentinel request; return every answer (answers may come in any order)."""
    conn = d.raw(timeout=60)
    sentinel = f"sentinel-{tag}"
    expected = sum(1 for wanted, _ in map(answer_expected, lines) if wanted)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            conn.send(b"".join(line + b"\n" for line in lines))
            conn.send_request("status", rid=sentinel)
        except OSError as e:
            failure.append(e)

    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    answers: list[dict[str, Any]] = []
    seen_sentinel = False
    while not seen_sentinel or len(answers) < expected:
        a = conn.read()
        if a.get("id") == sentinel:
            seen_sentinel = True
        elif "method" not in a:  # not an events.subscribe notification
            answers.append(a)
    writer.join(30)
    assert not failure, failure
    return answers


@pytest.mark.slow
def test_thousands_of_hostile_frames_get_their_answers_and_never_crash_the_daemon(
    launch: Launch,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    d = launch()
    d.call("message.ingest", ingest_params("42", "the session appends go to"))
    lines = hostile_lines(rng, FRAMES)
    # The frames that crashed the committer before nesting was bounded, at known positions.
    deep = b'{"k":' + nested(300, b"[", b"]") + b"}"
    lines[::500] = [
        b'{"jsonrpc":"2.0","id":"deep","method":"message.ingest","params":{"channel":"t",'
        b'"chatType":"direct","peer":"1","text":"x","metadata":' + deep + b"}}"
    ] * len(lines[::500])
    chunks = [lines[i::CONNECTIONS] for i in range(CONNECTIONS)]
    results: dict[int, list[dict[str, Any]]] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, exchange(d, chunks[i], str(i))))
        for i in range(CONNECTIONS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert d.running, f"the daemon died (seed {seed}):\n{d.output()}"
    for i, chunk in enumerate(chunks):
        got = results.get(i)
        assert got is not None, f"connection {i} got no sentinel answer (seed {seed})"
        answers = got
        expected = Counter(repr(rid) for wanted, rid in map(answer_expected, chunk) if wanted)
        assert Counter(repr(a.get("id")) for a in answers) == expected, f"seed {seed}"
        for a in answers:
            assert ("result" in a) != ("error" in a), a
            if "error" in a:
                assert a["error"]["code"] != INTERNAL_ERROR, f"seed {seed}: {a}"
                assert isinstance(a["error"]["message"], str)
    status = d.call("status")
    assert status["storage"] == "ok"
    assert d.stop() == 0
    for path, entries in d.transcripts().items():
        check_v3(path, entries)
    tally("fuzzed frames (real socket)", FRAMES, test="hostile frames e2e")


# ---------------------------------------------------------------------------------------------
# Slow clients


@pytest.mark.slow
def test_a_client_trickling_one_byte_per_second_is_cut_off_and_holds_up_no_one(
    launch: Launch,
) -> None:
    d = launch({"daemon": {"frameTimeoutSeconds": 3}})
    tricklers = [d.raw(timeout=30) for _ in range(20)]
    line = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "status"}) + b"\n"
    steady = d.raw(timeout=30)
    started = time.monotonic()
    cut_at: dict[int, float] = {}
    latencies = []
    sent = 0
    while len(cut_at) < len(tricklers) and time.monotonic() - started < 15:
        for n, t in enumerate(tricklers):
            if n in cut_at:
                continue
            try:
                t.send(line[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                cut_at[n] = time.monotonic() - started
        sent += 1
        # Everyone else is served at once, all along.
        t0 = time.monotonic()
        ack = steady.call("message.ingest", ingest_params("42", f"steady {sent}"))
        latencies.append(time.monotonic() - t0)
        assert "result" in ack, ack
        time.sleep(1.0)
        for n, t in enumerate(tricklers):
            if n not in cut_at and t.is_closed_by_daemon(timeout=0.01):
                cut_at[n] = time.monotonic() - started
    assert len(cut_at) == len(tricklers), "a trickling client was never cut off"
    assert all(2.5 < at < 6.5 for at in cut_at.values()), cut_at
    assert sent < len(line), "the deadline must fall before the line could complete"
    assert max(latencies) < 0.5, f"a steady client waited {max(latencies):.3f}s"
    assert any(e.get("event") == "connection.frame_timeout" for e in d.logs())
    tally("slow clients cut off", len(tricklers), test="trickling clients")
    print(
        f"[reliability] cut off after {min(cut_at.values()):.1f}-{max(cut_at.values()):.1f}s "
        f"(deadline 3 s); a steady client's acks meanwhile: max {max(latencies) * 1000:.1f} ms"
    )


def test_lines_that_complete_within_the_deadline_are_served_however_slowly_they_come(
    launch: Launch,
) -> None:
    """The deadline is per line, from its first byte: a client that pauses between lines, or
    sends one line in a few slow pieces, is a normal client."""
    d = launch({"daemon": {"frameTimeoutSeconds": 1}})
    conn = d.raw(timeout=30)
    line = orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "status"}) + b"\n"
    third = len(line) // 3 + 1
    for i in range(0, len(line), third):  # one line in three pieces, 0.75 s in all
        conn.send(line[i : i + third])
        time.sleep(0.25)
    assert conn.read()["id"] == 7
    time.sleep(1.5)  # idle between lines: no deadline runs
    conn.send(line[:5])
    time.sleep(0.6)
    conn.send(line[5:] + line[:5])  # the first line ends, a second begins: its own deadline
    assert conn.read()["id"] == 7
    time.sleep(0.6)
    conn.send(line[5:])
    assert conn.read()["id"] == 7


# ---------------------------------------------------------------------------------------------
# Many connections

CONNECTION_FLOOD = 10_000


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this test needs {needed} file descriptors; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect(path: Path, timeout: float = 30.0) -> socket.socket:
    """Connect, waiting while the daemon's backlog is full (a Unix socket then says EAGAIN)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def flood(path: Path, count: int) -> tuple[list[socket.socket], list[socket.socket], int]:
    """Open `count` connections at once; return (served, refused, refused-without-answer).
    A served connection answers `status`; a refused one got -32000 and was closed."""
    socks = [connect(path) for _ in range(count)]
    for s in socks:
        s.setblocking(False)
    # Every connection gets a status request; the refused ones will have said -32000 first.
    request = orjson.dumps({"jsonrpc": "2.0", "id": "s", "method": "status"}) + b"\n"
    for s in socks:
        with contextlib.suppress(OSError):
            s.send(request)
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytes] = {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    done: dict[socket.socket, str] = {}
    deadline = time.monotonic() + 60
    while len(done) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                chunk = b""
            bufs[s] += chunk
            if b"\n" in bufs[s] or not chunk:
                first = bufs[s].split(b"\n", 1)[0]
                if not first:
                    done[s] = "closed"
                else:
                    a = orjson.loads(first)
                    if "result" in a:
                        done[s] = "served"
                    else:
                        assert a["error"]["code"] == -32000, a
                        assert a["id"] is None
                        done[s] = "refused"
                sel.unregister(s)
    sel.close()
    assert len(done) == len(socks), f"{len(socks) - len(done)} connections got no answer"
    served = [s for s in socks if done[s] == "served"]
    refused = [s for s in socks if done[s] == "refused"]
    silent = sum(1 for s in socks if done[s] == "closed")
    return served, refused, silent


@pytest.mark.slow
def test_ten_thousand_connections_are_served_or_refused_cleanly(launch: Launch) -> None:
    raise_fd_limit(CONNECTION_FLOOD + 512)
    d = launch()
    watcher = d.raw(timeout=30)
    started = time.monotonic()
    served, refused, silent = flood(d.socket, CONNECTION_FLOOD)
    took = time.monotonic() - started
    try:
        assert silent == 0
        assert len(served) + len(refused) == CONNECTION_FLOOD
        assert 1000 <= len(served) <= 1023, len(served)  # maxConnections 1024, the watcher one
        assert d.running
        assert "result" in watcher.call("status")
        print(f"[reliability] {len(served)} served, {len(refused)} refused, in {took:.1f}s")
    finally:
        for s in served + refused:
            s.close()
    # Once they are gone (the daemon notices each close on its own time), new clients are
    # served again.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(RpcError):
            if d.call("status")["connections"] <= 2:
                break
        time.sleep(0.1)
    assert d.call("message.ingest", ingest_params("42", "after the flood"))["entryId"]
    assert d.stop() == 0
    # Logged once per streak of refusals, with the count when the streak ends.
    refusals = [e for e in d.logs() if e.get("event") == "connection.refused"]
    ended = [e for e in d.logs() if e.get("event") == "connection.refusals_ended"]
    assert 1 <= len(refusals) == len(ended)
    assert sum(e["refused"] for e in ended) >= len(refused)
    tally("concurrent connections", CONNECTION_FLOOD, test="connection flood")


@pytest.mark.slow
def test_running_out_of_file_descriptors_refuses_for_a_while_and_never_crashes(
    launch: Launch,
) -> None:
    """With 200 descriptors, the daemon cannot accept 600 clients: accept fails with EMFILE.
    That must be logged and backed off, and the daemon serves again once clients leave."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    d = launch(start=False)
    d.wrapper = ["prlimit", "--nofile=200:200", "--"]
    d.start()
    first = d.call("message.ingest", ingest_params("42", "before the flood"))
    socks = [connect(d.socket) for _ in range(600)]
    time.sleep(1.0)
    assert d.running, f"the daemon died of EMFILE:\n{d.output()}"
    for s in socks:
        s.close()
    deadline = time.monotonic() + 20
    ack = None
    while ack is None and time.monotonic() < deadline:
        try:
            with RawConnection(d.socket, timeout=5) as c:
                a = c.call("message.ingest", ingest_params("42", "after the flood"))
            ack = a.get("result")
        except (OSError, EOFError):
            time.sleep(0.2)
    assert ack is not None, f"never served again:\n{d.output()}"
    assert ack["sessionId"] == first["sessionId"]
    assert d.call("status")["storage"] == "ok"
    assert any(e.get("event") == "server.accept_failed" for e in d.logs())
    assert d.stop() == 0


# ---------------------------------------------------------------------------------------------
# Clients that never read (issue 12): their answers count against a budget; over it, the daemon
# stops reading their requests, and one stuck over it is closed.

BUDGET = 64 * 1024
STATUS_LINE = b'{"jsonrpc":"2.0","id":1,"method":"status"}\n'


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def clients(d: Daemon) -> dict[str, int]:
    c: dict[str, int] = d.call("status")["clients"]
    return c


def fill_until_paused(d: Daemon, hog: socket.socket, data: bytes) -> int:
    """Send `data` without reading a byte until the daemon stops reading this connection and
    the kernel's buffers are full; return how many bytes went out."""
    hog.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 120
    while sent < len(data):
        try:
            sent += hog.send(data[sent : sent + 65536])
            continue
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            break  # closed already (a short stall timeout)
        assert time.monotonic() < deadline, "the daemon never stopped reading"
        if clients(d)["paused"] >= 1:
            _, writable, _ = select.select([], [hog], [], 1.0)
            if not writable:
                break
        else:
            select.select([], [hog], [], 0.1)
    return sent


def test_a_client_that_never_reads_stops_being_read_and_its_answers_stay_within_budget(
    launch: Launch,
) -> None:
    d = launch({"daemon": {"limits": {"maxUnsentBytes": BUDGET, "stallTimeoutSeconds": 3600}}})
    answer_size = len(orjson.dumps(d.raw().call("status"))) + 1
    total = 20_000  # 840 kB of requests: far more than the kernel buffers hold
    data = STATUS_LINE * total
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(d.socket))
    sent = fill_until_paused(d, hog, data)
    assert sent < len(data), "the daemon read every request of a client that reads nothing"
    held = clients(d)
    assert held["paused"] == 1
    assert 0 < held["unsentBytes"] <= BUDGET + 2 * answer_size, held
    assert d.pid is not None and rss_bytes(d.pid) < 200 * 1024 * 1024
    assert d.running

    # Once the client reads, everything it sent is answered, in full.
    hog.setblocking(True)
    hog.settimeout(60)
    rest = threading.Thread(target=hog.sendall, args=(data[sent:],), daemon=True)
    rest.start()
    buf = b""
    answered = 0
    while answered < total:
        chunk = hog.recv(1 << 20)
        assert chunk, f"closed after {answered} answers"
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            assert orjson.loads(line)["result"]["storage"] == "ok"
        answered += len(lines)
    rest.join(60)
    assert answered == total and buf == b""
    assert clients(d)["paused"] == 0
    hog.close()


def test_a_client_stuck_over_its_budget_is_closed(launch: Launch) -> None:
    d = launch({"daemon": {"limits": {"maxUnsentBytes": BUDGET, "stallTimeoutSeconds": 1}}})
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(d.socket))
    fill_until_paused(d, hog, STATUS_LINE * 20_000)
    deadline = time.monotonic() + 60
    while (st := d.call("status"))["connections"] > 1:  # only the caller left
        assert time.monotonic() < deadline, "a stuck client was never closed"
        time.sleep(0.1)
    assert st["clients"]["closedStalled"] == 1 and st["clients"]["paused"] == 0
    assert [e for e in d.logs() if e.get("event") == "connection.stalled"]
    # The client finds its connection closed once it reads what had reached it.
    hog.setblocking(True)
    hog.settimeout(30)
    with contextlib.suppress(ConnectionResetError):
        while hog.recv(1 << 20):
            pass
    hog.close()


# ---------------------------------------------------------------------------------------------
# Lock-out (issue 12): idle TCP connections cannot take the admin socket's slots, and those that
# never say auth.hello are closed.

TOKEN = "hello-" + "t" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_thousand_idle_tcp_connections_cannot_lock_out_the_admin_socket(
    launch: Launch,
) -> None:
    raise_fd_limit(1024 + 512)
    port = free_port()
    d = launch(
        {
            "daemon": {
                "listeners": [{"tcp": f"127.0.0.1:{port}", "maxConnections": 100}],
                "limits": {"helloTimeoutSeconds": 3600},  # the slots stay taken
            }
        }
    )
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(1024)]
    try:
        deadline = time.monotonic() + 60
        while clients(d)["refused"] < 1024 - 100:
            assert time.monotonic() < deadline, clients(d)
            time.sleep(0.1)
        # The admin socket answers, through the command line too.
        assert clients(d)["unauthenticated"] == 100  # the listener's own slots, all taken
        cli = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "--socket", str(d.socket)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        refused = []
        for s in idle:
            s.setblocking(False)
            try:
                first = s.recv(4096).split(b"\n", 1)[0]
            except BlockingIOError:
                continue  # served: waiting for its auth.hello
            except ConnectionResetError:
                first = b""
            assert first, "a refused connection must get an error line before it is closed"
            refused.append(orjson.loads(first))
        assert len(refused) == 1024 - 100
        for a in refused:
            assert a["error"]["code"] == -32000 and a["id"] is None
            assert "too many connections" in a["error"]["message"]
            assert f"tcp:127.0.0.1:{port}" in a["error"]["message"]
        # One log line for the streak, not one per refusal.
        refusals = [e for e in d.logs() if e.get("event") == "connection.refused"]
        assert len(refusals) == 1 and refusals[0]["listener"] == f"tcp:127.0.0.1:{port}"
    finally:
        for s in idle:
            s.close()


def test_a_tcp_connection_that_never_says_hello_is_closed(launch: Launch) -> None:
    port = free_port()
    d = launch(
        {
            "daemon": {
                "listeners": [{"tcp": f"127.0.0.1:{port}"}],
                "limits": {"helloTimeoutSeconds": 1},
            },
            "auth": {"tokens": [{"name": "ops", "token": TOKEN, "role": "admin"}]},
        }
    )
    with Client(f"tcp://127.0.0.1:{port}", token=TOKEN, timeout=30) as authed:
        silent = socket.create_connection(("127.0.0.1", port), timeout=30)
        chatty = socket.create_connection(("127.0.0.1", port), timeout=30)
        # Silent: an error line saying why, then the end.
        got = b""
        while chunk := silent.recv(4096):
            got += chunk
        first = orjson.loads(got.split(b"\n", 1)[0])
        assert first["error"]["code"] == 1001 and "auth.hello" in first["error"]["message"]
        # Talking without a token does not keep a connection either.
        closed = False
        deadline = time.monotonic() + 60
        while not closed:
            assert time.monotonic() < deadline, "an unauthenticated talker was never closed"
            try:
                chatty.sendall(STATUS_LINE)
                answer = chatty.recv(4096)
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
            closed = answer == b""
            time.sleep(0.1)
        # The authenticated connection stays.
        assert authed.call("status")["storage"] == "ok"
        silent.close()
        chatty.close()
    assert clients(d)["closedHello"] == 2
    assert len([e for e in d.logs() if e.get("event") == "connection.hello_timeout"]) == 2


@pytest.mark.slow
def test_with_the_built_in_limits_idle_tcp_connections_are_refused_then_closed(
    launch: Launch,
) -> None:
    """The attack as it was found: 1,024 idle loopback connections, nothing configured."""
    raise_fd_limit(1024 + 512)
    port = free_port()
    d = launch({"daemon": {"listeners": [{"tcp": f"127.0.0.1:{port}"}]}})
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(1024)]
    try:
        cli = subprocess.run(
            [sys.executable, "-m", "daemon", "status", "--socket", str(d.socket)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        # Every one of them is refused (over 256) or closed for saying no auth.hello (10 s).
        deadline = time.monotonic() + 90
        while (c := clients(d))["refused"] + c["closedHello"] < 1024:
            assert time.monotonic() < deadline, c
            time.sleep(0.2)
        assert c["refused"] + c["closedHello"] == 1024 and c["closedHello"] >= 256
        assert c["unauthenticated"] == 0
    finally:
        for s in idle:
            s.close()

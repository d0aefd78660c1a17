"""The load side of bench/ingest.py: the request driver and the bare servers, each run in its
own process (`python bench/ingest_load.py drive|bare|bare-anyio ...`).

The driver takes a JSON plan: which sockets to use, how many clients per socket, the messages
(spread over sessions and, for shards, agents, each routed to its owner's socket) and the mode:
closed loop (64 requests in flight per client, as fast as acks come back; a number of
messages, or with `seconds` as many as that time allows) or open loop (each
message has a scheduled send time at a fixed offered rate; latency is measured from that time,
so a server that falls behind is charged for the queue it builds, not only for its service time).
With `warmup`, each session first gets one message (closed loop, not measured) and the server
`settle` seconds of rest before the measured messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

IN_FLIGHT = 64


def owner(agent: str, count: int) -> int:
    """The shard that owns an agent: the daemon's rule (daemon/core/shards.py)."""
    return zlib.crc32(agent.encode("utf-8")) % count


def message_params(n: int, plan: dict[str, Any]) -> dict[str, Any]:
    """Message n of a plan: session n % sessions; with agents, that session's agent."""
    s = n % plan["sessions"]
    params: dict[str, Any] = {
        "channel": "telegram",
        "chatType": "direct",
        "peer": f"{100000 + s}",
        "messageId": f"{plan['tag']}-{n}",
        "text": f"benchmark message {n} with a little text, like a real chat line",
    }
    agents = plan.get("agents")
    if agents:
        params["agentId"] = agents[s % len(agents)]
    return params


def shard_of(params: dict[str, Any], count: int) -> int:
    agent = params.get("agentId")
    return owner(agent, count) if agent and count > 1 else 0


def make_work(plan: dict[str, Any]) -> list[tuple[str, list[bytes]]]:
    """(socket, request lines) per client: each shard's messages spread over its clients."""
    sockets: list[str] = plan["sockets"]
    per_socket = max(1, plan["clients"] // len(sockets))
    clients: list[tuple[str, list[bytes]]] = [
        (sock, []) for sock in sockets for _ in range(per_socket)
    ]
    turn = [0] * len(sockets)
    for n in range(plan["messages"]):
        params = message_params(n, plan)
        k = shard_of(params, len(sockets))
        c = k * per_socket + turn[k] % per_socket
        turn[k] += 1
        lines = clients[c][1]
        req = {"jsonrpc": "2.0", "id": len(lines), "method": "message.ingest", "params": params}
        lines.append(orjson.dumps(req) + b"\n")
    return [c for c in clients if c[1]]


def _check(msg: dict[str, Any]) -> int:
    if "error" in msg:
        raise RuntimeError(f"server error: {msg['error']}")
    return int(msg["id"])


async def _closed_client(
    path: str, lines: Sequence[bytes] | Iterator[bytes], lat: list[float]
) -> None:
    """Keep 64 requests in flight until `lines` is used up (a list, or an iterator that stops
    when the time is up); each line's id is its position in `lines`."""
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    source = iter(lines)
    sent_at: dict[int, float] = {}
    next_i = 0
    exhausted = False

    def send(k: int) -> None:
        nonlocal next_i, exhausted
        buf = []
        now = time.perf_counter()
        for _ in range(k):
            line = next(source, None)
            if line is None:
                exhausted = True
                break
            sent_at[next_i] = now
            buf.append(line)
            next_i += 1
        if buf:
            writer.write(b"".join(buf))

    send(IN_FLIGHT)
    while sent_at:
        line = await reader.readline()
        if not line:
            raise RuntimeError("server closed the connection")
        i = _check(orjson.loads(line))
        lat.append(time.perf_counter() - sent_at.pop(i))
        # Refill in small groups: keeps 64 in flight without a write per answer.
        if not exhausted and (len(sent_at) <= IN_FLIGHT - 8 or not sent_at):
            send(IN_FLIGHT - len(sent_at))
    writer.close()


def timed_lines(plan: dict[str, Any], client: int, clients: int, until: float) -> Iterator[bytes]:
    """Client `client`'s requests (messages client, client + clients, ...) until `until`."""
    n, i = client, 0
    while time.perf_counter() < until:
        req = {"jsonrpc": "2.0", "id": i, "method": "message.ingest"}
        req["params"] = message_params(n, plan)
        yield orjson.dumps(req) + b"\n"
        n += clients
        i += 1


async def _open_loop(
    work: list[tuple[str, list[bytes]]],
    rate: float,
    lat: list[float],
    timeline: list[tuple[float, float]] | None = None,
) -> float:
    """Message k (over all clients, round-robin) is due at t0 + k / rate; the sender writes what
    is due every millisecond or so, and each ack's latency counts from its due time. Returns the
    wall-clock time (time.time()) of t0; `timeline` gets (due - t0, latency) per ack."""
    conns = [await asyncio.open_unix_connection(p, limit=1 << 24) for p, _ in work]
    order = [(c, i) for i in range(max(len(w) for _, w in work)) for c in range(len(work))]
    order = [(c, i) for c, i in order if i < len(work[c][1])]
    due: list[dict[int, float]] = [{} for _ in work]
    t0 = time.perf_counter() + 0.05
    wall0 = time.time() + (t0 - time.perf_counter())

    async def sender() -> None:
        k = 0
        while k < len(order):
            now = time.perf_counter()
            bufs: dict[int, list[bytes]] = {}
            while k < len(order) and t0 + k / rate <= now:
                c, i = order[k]
                due[c][i] = t0 + k / rate
                bufs.setdefault(c, []).append(work[c][1][i])
                k += 1
            for c, chunks in bufs.items():
                conns[c][1].write(b"".join(chunks))
            await asyncio.sleep(max(0.0, min(0.001, t0 + k / rate - time.perf_counter())))

    async def reader(c: int) -> None:
        r = conns[c][0]
        for _ in range(len(work[c][1])):
            line = await r.readline()
            if not line:
                raise RuntimeError("server closed the connection")
            i = _check(orjson.loads(line))
            at = due[c].pop(i)
            lat.append(time.perf_counter() - at)
            if timeline is not None:
                timeline.append((at - t0, lat[-1]))

    await asyncio.gather(sender(), *(reader(c) for c in range(len(work))))
    for _, w in conns:
        w.close()
    return wall0


def drive(plan: dict[str, Any]) -> dict[str, float]:
    work = [] if plan.get("seconds") else make_work(plan)
    lat: list[float] = []
    timeline: list[tuple[float, float]] | None = [] if plan.get("timeline") else None
    wall0 = 0.0

    async def main() -> float:
        nonlocal wall0
        if plan.get("warmup"):
            # Every session gets its first message (closed loop, not measured), then the server
            # has `settle` seconds to finish what follows (index pass, checkpoint, mirror round):
            # the open loop measures a server at rest with its sessions, not its start-up.
            warm = make_work({**plan, "messages": plan["sessions"], "tag": f"{plan['tag']}-warm"})
            await asyncio.gather(*(_closed_client(p, lines, []) for p, lines in warm))
            await asyncio.sleep(float(plan.get("settle", 0.0)))
            print("measuring", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if plan.get("rate"):
            wall0 = await _open_loop(work, float(plan["rate"]), lat, timeline)
        elif plan.get("seconds"):
            # For as long as that (one socket): as many messages as acks come back for.
            until = t0 + float(plan["seconds"])
            k = plan["clients"]
            path = plan["sockets"][0]
            await asyncio.gather(
                *(_closed_client(path, timed_lines(plan, c, k, until), lat) for c in range(k))
            )
        else:
            await asyncio.gather(*(_closed_client(p, lines, lat) for p, lines in work))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    if timeline is not None:
        # One line per ack, in send order: due time after the start (s) and latency (ms), with
        # the start's wall-clock time first, to line the acks up with the daemon's log lines.
        timeline.sort()
        with open(plan["timeline"], "w") as f:
            f.write(f"# t0 {wall0:.6f}\n")
            f.writelines(f"{t:.4f} {x * 1000:.2f}\n" for t, x in timeline)
    lat.sort()
    n = len(lat)
    return {
        "messages": n,
        "seconds": elapsed,
        "rate": n / elapsed,
        "p50_ms": lat[n // 2] * 1000,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000,
    }


# ---------------------------------------------------------------------------------------------
# The bare server (runs in its own process): parse, append, one fdatasync per batch, ack.


def bare_server(path: str, data_file: str) -> None:
    fd = os.open(data_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pending: list[tuple[asyncio.Transport, bytes]] = []
    buffered: list[bytes] = []
    wake = asyncio.Event()

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            data = self.buf + data
            *lines, self.buf = data.split(b"\n")
            for line in lines:
                req = orjson.loads(line)
                buffered.append(line + b"\n")
                pending.append(
                    (self.t, b'{"jsonrpc":"2.0","id":%d,"result":{}}\n' % req["id"])  # type: ignore[arg-type]
                )
            wake.set()

    async def flusher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wake.wait()
            wake.clear()
            if not pending:
                continue
            batch, acks = b"".join(buffered), list(pending)
            buffered.clear()
            pending.clear()

            def write_sync(data: bytes) -> None:
                os.write(fd, data)
                os.fdatasync(fd)

            await loop.run_in_executor(None, write_sync, batch)
            out: dict[asyncio.Transport, list[bytes]] = {}
            for t, a in acks:
                out.setdefault(t, []).append(a)
            for t, chunks in out.items():
                t.write(b"".join(chunks))
            if pending:
                wake.set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(Proto, path)
        print("ready", flush=True)
        async with server:
            await flusher()

    asyncio.run(main())


def bare_anyio_server(path: str, data_file: str) -> None:
    """The same bare server written the way the daemon is: anyio streams read a line at a time,
    a task per connection. It shows what the I/O framework alone costs."""
    import anyio
    from anyio.abc import SocketStream
    from anyio.streams.buffered import BufferedByteReceiveStream

    fd = os.open(data_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pending: list[tuple[SocketStream, bytes]] = []
    buffered: list[bytes] = []
    has_work = anyio.Event()

    def write_sync(data: bytes) -> None:
        os.write(fd, data)
        os.fdatasync(fd)

    async def handle(stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        async with stream:
            while True:
                try:
                    line = await reader.receive_until(b"\n", 1 << 20)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                req = orjson.loads(line)
                buffered.append(line + b"\n")
                pending.append((stream, b'{"jsonrpc":"2.0","id":%d,"result":{}}\n' % req["id"]))
                has_work.set()

    async def flusher() -> None:
        nonlocal has_work
        while True:
            await has_work.wait()
            has_work = anyio.Event()
            batch, acks = b"".join(buffered), list(pending)
            buffered.clear()
            pending.clear()
            await anyio.to_thread.run_sync(write_sync, batch)
            out: dict[SocketStream, list[bytes]] = {}
            for st, a in acks:
                out.setdefault(st, []).append(a)
            for st, chunks in out.items():
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await st.send(b"".join(chunks))

    async def main() -> None:
        listener = await anyio.create_unix_listener(path)
        print("ready", flush=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(flusher)
            await listener.serve(handle)

    anyio.run(main)


def main() -> None:
    cmd, *rest = sys.argv[1:]
    if cmd == "drive":
        print(json.dumps(drive(json.loads(rest[0]))))
    elif cmd == "bare":
        bare_server(*rest)
    elif cmd == "bare-anyio":
        bare_anyio_server(*rest)
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main()

"""The optional metrics listener: Prometheus `/metrics` and `/healthz` on a loopback port.

Configured by `daemon.metrics: "127.0.0.1:PORT"` (off by default; config validation refuses
anything but loopback: this listener has no TLS).

Nothing is instrumented for it on the hot path beyond plain counters and `core.histogram`
buckets the committer keeps anyway: `DaemonCollector` reads the daemon's own counters when it is
scraped. A scrape runs on the event loop, like every writer of those counters, so it needs no
lock and sees one consistent state. The collector is registered in a registry of its own, never
in prometheus_client's global one (which would also export this process's Python internals
under names that collide across daemons in tests).

The HTTP side is deliberately tiny: one request per connection (`Connection: close`), GET or
HEAD, a bounded request head read under a timeout, served by a task in the daemon's task group
(no threads), so SIGTERM stops it with everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from daemon import __version__, errors
from daemon.config_fields import parse_tcp_address
from daemon.core.histogram import Histogram
from daemon.listeners import bind_tcp

if TYPE_CHECKING:
    from anyio.abc import Listener

    from daemon.api import Api
    from daemon.backup import Mirror
    from daemon.pipeline import Pipeline
    from daemon.search import SearchService
    from daemon.server import Server

log = structlog.get_logger("daemon.metrics")

MAX_HEAD_BYTES = 8192  # a scraper's request head is a few hundred bytes
REQUEST_TIMEOUT_SECONDS = 10.0  # a connection that sends no complete head in time is closed
MAX_CONNECTIONS = 16  # scrapers are few; more at once are answered 503 and closed

MIRROR_STATES = ("disabled", "ok", "catching-up", "degraded")
INDEX_STATES = ("opening", "ok", "restarting", "unavailable", "disabled")


def _error_names() -> dict[int, str]:
    """JSON-RPC error code -> a stable label (`storage_unavailable`, ...) from daemon/errors.py."""
    names: dict[int, str] = {errors.INTERNAL_ERROR: "internal_error"}
    classes: list[type[errors.RequestError]] = [errors.RequestError]
    classes += errors.RequestError.__subclasses__()
    for cls in classes:
        name = cls.__name__
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
        names.setdefault(cls.code, snake)
    return names


ERROR_NAMES = _error_names()


def histogram_family(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(_le(bound), float(n)) for bound, n in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class DaemonCollector(Collector):
    """The daemon's state as metric families, read at scrape time (on the event loop)."""

    def __init__(
        self,
        pipeline: Pipeline,
        api: Api,
        mirror: Mirror | None = None,
        search: SearchService | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.api = api
        self.mirror = mirror
        self.search = search

    def collect(self) -> Iterator[Metric]:
        yield from self._ingest()
        yield from self._sessions()
        yield from self._storage()
        yield from self._mirror()
        yield from self._index()

    def _ingest(self) -> Iterator[Metric]:
        c = self.pipeline.counters
        yield CounterMetricFamily(
            "sessiond_messages_ingested",
            "Inbound messages stored and acknowledged (message.ingest).",
            value=c.ingested,
        )
        yield CounterMetricFamily(
            "sessiond_messages_duplicate",
            "Inbound messages answered from the idempotency cache (not stored again).",
            value=c.duplicates,
        )
        yield CounterMetricFamily(
            "sessiond_messages_appended",
            "Agent messages stored and acknowledged (message.append).",
            value=c.appended,
        )
        rejected = CounterMetricFamily(
            "sessiond_requests_rejected",
            "Requests answered with an error, by JSON-RPC error code.",
            labels=("code", "error"),
        )
        for code, n in sorted(c.rejected_by_code.items()):
            rejected.add_metric((str(code), ERROR_NAMES.get(code, "other")), n)
        yield rejected
        yield CounterMetricFamily(
            "sessiond_batches", "Batches written (one fdatasync each).", value=c.batches
        )
        yield CounterMetricFamily(
            "sessiond_checkpoints", "Journal checkpoints completed.", value=c.checkpoints
        )
        resets = CounterMetricFamily(
            "sessiond_resets",
            "Sessions reset, by reason (new, reset: chat triggers; daily, idle: policy; "
            "manual: the API).",
            labels=("reason",),
        )
        for reason, n in sorted(c.resets_by_reason.items()):
            resets.add_metric((reason,), n)
        yield resets
        yield histogram_family(
            "sessiond_ingest_latency_seconds",
            "From an inbound message's arrival to its durable acknowledgement.",
            c.ingest_latency,
        )
        yield histogram_family(
            "sessiond_commit_latency_seconds",
            "Writing one batch to its transcripts and the journal, fdatasync included.",
            c.commit_latency,
        )
        yield histogram_family(
            "sessiond_batch_size_messages",
            "Requests acknowledged by one batch (one fdatasync).",
            c.batch_sizes,
        )

    def _sessions(self) -> Iterator[Metric]:
        store = self.pipeline.store
        active = GaugeMetricFamily(
            "sessiond_sessions_active",
            "Live sessions in the registry, by agent.",
            labels=("agent",),
        )
        for agent, reg in sorted(store.agents.items()):
            active.add_metric((agent,), len(reg.sessions))
        yield active
        per_agent: dict[str, int] = {agent: 0 for agent in store.agents}
        for a in store.archived_by_id.values():
            per_agent[a.agent_id] = per_agent.get(a.agent_id, 0) + 1
        archived = GaugeMetricFamily(
            "sessiond_sessions_archived", "Archived sessions, by agent.", labels=("agent",)
        )
        for agent, n in sorted(per_agent.items()):
            archived.add_metric((agent,), n)
        yield archived
        yield GaugeMetricFamily(
            "sessiond_connections", "Open client connections.", value=len(self.api.clients.open)
        )

    def _storage(self) -> Iterator[Metric]:
        store = self.pipeline.store
        yield GaugeMetricFamily(
            "sessiond_storage_writable",
            "1 while the store accepts writes; 0 after a failed sync (see status.storage).",
            value=1 if store.broken is None else 0,
        )
        yield GaugeMetricFamily(
            "sessiond_journal_bytes", "Size of the current journal.", value=store.journal.size
        )
        info = GaugeMetricFamily("sessiond_info", "The running daemon.", labels=("version",))
        info.add_metric((__version__,), 1)
        yield info
        yield GaugeMetricFamily(
            "sessiond_start_time_seconds",
            "When the daemon started (Unix time).",
            value=self.api.started_ms / 1000,
        )

    def _mirror(self) -> Iterator[Metric]:
        m = self.mirror
        st: dict[str, Any] = m.status() if m is not None else {"state": "disabled"}
        yield _state_set("sessiond_mirror_state", "The backup mirror's state.", MIRROR_STATES, st)
        yield GaugeMetricFamily(
            "sessiond_mirror_lag_bytes",
            "Bytes stored and not yet in the backup mirror.",
            value=st.get("lagBytes", 0),
        )
        yield GaugeMetricFamily(
            "sessiond_mirror_lag_sessions",
            "Sessions with bytes not yet in the backup mirror.",
            value=st.get("lagSessions", 0),
        )
        yield GaugeMetricFamily(
            "sessiond_mirror_lag_seconds",
            "How long the session furthest behind in the mirror has been behind.",
            value=st.get("lagSeconds", 0.0),
        )
        mc = m.counters if m is not None else None
        yield CounterMetricFamily(
            "sessiond_mirror_failures",
            "Mirror rounds that failed (the mirror retries them).",
            value=mc.failures if mc is not None else 0,
        )
        restarts = CounterMetricFamily(
            "sessiond_worker_restarts",
            "Worker processes started again after one died or failed.",
            labels=("worker",),
        )
        restarts.add_metric(("mirror",), mc.worker_deaths if mc is not None else 0)
        s = self.search
        restarts.add_metric(("index",), max(0, s.worker_starts - 1) if s is not None else 0)
        yield restarts

    def _index(self) -> Iterator[Metric]:
        s = self.search
        st: dict[str, Any] = s.status() if s is not None else {"state": "disabled"}
        yield _state_set("sessiond_index_state", "The index worker's state.", INDEX_STATES, st)
        yield GaugeMetricFamily(
            "sessiond_index_lag_batches",
            "Batches written that the search index has not caught up with yet.",
            value=s.lag_batches() if s is not None else 0,
        )


def _state_set(
    name: str, doc: str, states: tuple[str, ...], status: dict[str, Any]
) -> StateSetMetricFamily:
    current = status.get("state")
    return StateSetMetricFamily(name, doc, value={s: s == current for s in states})


def daemon_health(pipeline: Pipeline, server: Server) -> str | None:
    """Why the daemon is not healthy, or None: it serves and its store accepts writes."""
    store = pipeline.store
    if store.broken is not None:
        return f"storage unavailable: {store.broken}"
    if server.accept_scope.cancel_called:
        return "the daemon is stopping"
    return None


# ---------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    allow: str | None = None


def route(method: str, target: str, registry: CollectorRegistry, health: str | None) -> Response:
    """The answer to one request (`health`: why the daemon is unhealthy, None when it is not)."""
    path = target.split("?", 1)[0]
    if path not in ("/metrics", "/healthz"):
        return Response(404, "Not Found", b"not found: try /metrics or /healthz\n")
    if method not in ("GET", "HEAD"):
        return Response(405, "Method Not Allowed", b"only GET and HEAD\n", allow="GET, HEAD")
    if path == "/metrics":
        return Response(200, "OK", generate_latest(registry), CONTENT_TYPE_LATEST)
    if health is None:
        return Response(200, "OK", b"ok\n")
    return Response(503, "Service Unavailable", f"unavailable: {health}\n".encode())


def encode(resp: Response, head_only: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {resp.reason}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if resp.allow is not None:
        lines.append(f"Allow: {resp.allow}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + resp.body


BAD_REQUEST = Response(400, "Bad Request", b"bad request\n")


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """(method, target) from a request head, or None when it is not HTTP/1.x."""
    first = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = first.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    try:
        return parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None


class MetricsListener:
    """Serves /metrics on a listener bound before it is made (`open_metrics`: a taken port is
    ListenFailed at start-up, not a failure in a running task), as a task in the daemon's task
    group until it is cancelled; the sockets are closed when `serve` ends."""

    def __init__(
        self,
        address: str,
        listener: Listener[SocketStream],
        registry: CollectorRegistry,
        health: Callable[[], str | None],
    ) -> None:
        self.address = address
        self.registry = registry
        self.health = health
        self._listener = listener
        self._open = 0

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with self._listener, anyio.create_task_group() as tg:
            log.info("metrics.listening", address=self.address)
            task_status.started()
            await self._listener.serve(self._handle, task_group=tg)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            self._open += 1
            try:
                with anyio.move_on_after(REQUEST_TIMEOUT_SECONDS):
                    await self._answer(stream)
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                pass  # the scraper went away: nothing to answer
            finally:
                self._open -= 1

    async def _answer(self, stream: SocketStream) -> None:
        if self._open > MAX_CONNECTIONS:
            busy = Response(503, "Service Unavailable", b"too many connections\n")
            await stream.send(encode(busy, False))
            return
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_HEAD_BYTES:
                await stream.send(encode(BAD_REQUEST, False))
                return
            head += await stream.receive(4096)
        parsed = parse_request_line(head)
        if parsed is None:
            await stream.send(encode(BAD_REQUEST, False))
            return
        method, target = parsed
        resp = route(method, target, self.registry, self.health())
        await stream.send(encode(resp, method == "HEAD"))


async def open_metrics(
    address: str | None,
    pipeline: Pipeline,
    api: Api,
    server: Server,
    mirror: Mirror | None,
    search: SearchService | None,
) -> MetricsListener | None:
    """The listener for `daemon.metrics`, already bound (None when it is off), with its own
    registry. Raises ListenFailed naming the address when the port is taken."""
    if address is None:
        return None
    host, port = parse_tcp_address(address)
    listener = await bind_tcp(host, port, "daemon.metrics")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(pipeline, api, mirror, search))
    return MetricsListener(address, listener, registry, lambda: daemon_health(pipeline, server))

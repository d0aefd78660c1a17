"""Ingest from Redis Streams: adapters publish, sessiond consumes with a consumer group.

Each stream entry has one field, `params`: the JSON of a `message.ingest` call's params. The
daemon reads with XREADGROUP as `ingest.redis.consumer` of `ingest.redis.group`, hands each entry
to `Pipeline.ingest` (the same entrance as the socket and the spool), and acknowledges it (XACK)
only once the pipeline has answered: stored durably, a duplicate, or refused for good.

Invariants:
1. XACK follows the durable append. A crash between the two leaves the entry pending; it is
   read again at start-up (this consumer's pending list, from id 0) and its messageId makes the
   second ingest a duplicate: effectively once. An entry without a messageId gets one derived
   from the stream and entry id, so even those are stored once.
2. An entry left pending by another consumer that died is taken over with XAUTOCLAIM once it has
   been idle for `claimIdleMs`.
3. Nothing is dropped silently: an entry that can never be stored (not JSON, invalid params, a
   sender not allowed) is acknowledged and copied, with the error, to the dead-letter stream
   `<stream>:rejected`; the answer also goes to `replyStream` when one is configured.
   Storage errors (1004) and internal errors leave the entry pending, retried with a back-off.
4. A broker that is down degrades only this path: the daemon keeps serving its sockets, logs
   `broker.unavailable` once per outage and reconnects with a back-off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import TaskStatus

from daemon.core.protocol import MAX_ID_LEN, parse_ingest
from daemon.errors import (
    INTERNAL_ERROR,
    STORAGE_UNAVAILABLE,
    InvalidParams,
    InvalidRequest,
    ParseError,
    RequestError,
)
from daemon.pipeline import Pipeline

log = structlog.get_logger("daemon.broker")

RETRY_FIRST, RETRY_MAX = 0.5, 30.0
RETRY_CODES = frozenset({STORAGE_UNAVAILABLE, INTERNAL_ERROR})

Outcome = dict[str, Any]


def derived_message_id(stream: str, entry_id: str) -> str:
    """The id an entry without a messageId is stored under: its place in the stream, which a
    redelivery keeps."""
    return f"redis:{stream[: MAX_ID_LEN - 40]}:{entry_id}"


def decode_entry(stream: str, entry_id: str, fields: dict[Any, Any]) -> dict[str, Any]:
    """An entry's params object. Raises RequestError naming what is wrong with the entry."""
    raw = fields.get(b"params", fields.get("params"))
    if raw is None:
        raise InvalidParams("params", "the stream entry has no field 'params'")
    try:
        params = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ParseError(f"field 'params' is not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise InvalidRequest("field 'params' must hold a JSON object")
    if params.get("messageId") is None:
        params["messageId"] = derived_message_id(stream, entry_id)
    return params


class RedisIngest:
    """The consumer: one task in the daemon's task group (run), stopped by `stop`."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        url: str,
        stream: str,
        group: str,
        consumer: str,
        reply_stream: str | None = None,
        reply_max_len: int = 100_000,
        batch: int = 256,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.pipeline = pipeline
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.reply_stream = reply_stream
        self.reply_max_len = reply_max_len
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.dead_letter = f"{stream}:rejected"
        self.scope = anyio.CancelScope()
        self.counts = {"ingested": 0, "duplicates": 0, "rejected": 0, "retried": 0, "claimed": 0}
        self.connected = False
        self.last_error: str | None = None

    def stop(self) -> None:
        self.scope.cancel()

    def status(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "group": self.group,
            "consumer": self.consumer,
            "connected": self.connected,
            "lastError": self.last_error,
            **self.counts,
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        task_status.started()
        delay = RETRY_FIRST
        with self.scope:
            while True:
                client = aioredis.from_url(self.url)
                try:
                    await self._ensure_group(client)
                    if not self.connected:
                        log.info("broker.connected", stream=self.stream, group=self.group)
                    self.connected, self.last_error = True, None
                    delay = RETRY_FIRST
                    await self._consume(client)
                except (RedisError, OSError) as e:
                    if self.connected or self.last_error is None:
                        log.warning("broker.unavailable", url=_safe_url(self.url), error=str(e))
                    self.connected, self.last_error = False, str(e)
                finally:
                    with anyio.CancelScope(shield=True):
                        await client.aclose()
                await anyio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)

    async def _ensure_group(self, client: Any) -> None:
        from redis.exceptions import ResponseError

        try:
            # From id 0: entries published before the group existed are ingested too.
            await client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _consume(self, client: Any) -> None:
        retry_at = 0.0
        # Our own pending entries first (a crash before XACK), then new ones.
        pending = await self._pending_own(client)
        while True:
            if pending:
                await self._handle(client, pending)
            now = anyio.current_time()
            if now >= retry_at:
                left = await self._pending_own(client)
                claimed = await self._claim_abandoned(client)
                pending = left + claimed
                retry_at = now + (RETRY_FIRST if left else self.claim_idle_ms / 1000)
                if pending:
                    if left:
                        self.counts["retried"] += len(left)
                    continue
            reply = await client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=self.batch,
                block=self.block_ms,
            )
            pending = [e for _name, entries in reply or () for e in entries]

    async def _pending_own(self, client: Any) -> list[tuple[Any, Any]]:
        reply = await client.xreadgroup(
            self.group, self.consumer, {self.stream: "0"}, count=self.batch
        )
        return [e for _name, entries in reply or () for e in entries if e[1]]

    async def _claim_abandoned(self, client: Any) -> list[tuple[Any, Any]]:
        res = await client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        entries = [e for e in res[1] if e[1]]
        if entries:
            self.counts["claimed"] += len(entries)
            log.info("broker.claimed", entries=len(entries), stream=self.stream)
        return entries

    async def _handle(self, client: Any, entries: list[tuple[Any, Any]]) -> None:
        """Ingest a batch; ack each entry once answered (or dead-lettered)."""
        outcomes: dict[str, Outcome | RequestError] = {}
        params_of: dict[str, dict[str, Any] | None] = {}
        pending = 1
        all_answered = anyio.Event()

        def settled() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                all_answered.set()

        def answer(eid: str) -> Callable[[Outcome | RequestError], None]:
            def reply(outcome: Outcome | RequestError) -> None:
                outcomes[eid] = outcome
                settled()

            return reply

        for raw_id, fields in entries:
            eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                params = decode_entry(self.stream, eid, fields)
                params_of[eid] = params
                parsed = parse_ingest(params)
            except RequestError as e:
                params_of.setdefault(eid, None)
                outcomes[eid] = e
                continue
            pending += 1
            try:
                waiter = self.pipeline.ingest(parsed, answer(eid))
                if waiter is not None:
                    await waiter
            except RequestError as e:
                outcomes[eid] = e
                settled()
        settled()
        await all_answered.wait()
        await self._settle(client, entries, outcomes, params_of)

    async def _settle(
        self,
        client: Any,
        entries: list[tuple[Any, Any]],
        outcomes: dict[str, Outcome | RequestError],
        params_of: dict[str, dict[str, Any] | None],
    ) -> None:
        acks: list[str] = []
        async with client.pipeline(transaction=False) as pipe:
            for raw_id, fields in entries:
                eid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                outcome = outcomes.get(eid)
                if outcome is None:
                    continue
                if isinstance(outcome, RequestError):
                    if outcome.code in RETRY_CODES:
                        continue  # stays pending: read again after a back-off
                    err = _error(outcome)
                    self.counts["rejected"] += 1
                    log.warning("broker.rejected", entry=eid, stream=self.stream, **err)
                    raw = fields.get(b"params", fields.get("params", b""))
                    pipe.xadd(
                        self.dead_letter,
                        {"entry": eid, "params": raw, "error": orjson.dumps(err)},
                    )
                    body: dict[str, Any] = {"entry": eid, "error": orjson.dumps(err)}
                else:
                    if outcome.get("duplicate"):
                        self.counts["duplicates"] += 1
                    else:
                        self.counts["ingested"] += 1
                    body = {"entry": eid, "result": orjson.dumps(outcome)}
                if self.reply_stream:
                    pipe.xadd(self.reply_stream, body, maxlen=self.reply_max_len, approximate=True)
                acks.append(eid)
            if acks:
                # After the dead letters and replies in the same round trip: an entry is never
                # acknowledged before what it left behind is in the broker.
                pipe.xack(self.stream, self.group, *acks)
            await pipe.execute()


def _error(e: RequestError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": e.code, "message": e.message}
    if isinstance(e, InvalidParams):
        out["field"] = e.field
    return out


def _safe_url(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"

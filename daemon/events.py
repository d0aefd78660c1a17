"""Notifications for `events.subscribe`: session.created, session.reset, job.run, ...

A subscriber is a callback that takes an encoded JSON-RPC notification line (the server passes
its connection's `deliver`). Publishing never blocks and never fails the publisher: a
subscriber that has stopped reading is dropped by the server's own limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import structlog

log = structlog.get_logger("daemon.events")

Subscriber = Callable[[bytes], bool]  # returns False to be dropped

EVENTS = (
    "session.created",
    "session.reset",
    "session.stop",
    "compaction.done",
    "memory.flushed",
    "job.run",
)


class EventBus:
    """Fan-out of notifications to subscribed connections (event loop only)."""

    def __init__(self) -> None:
        self.subscribers: dict[int, tuple[Subscriber, frozenset[str]]] = {}

    def subscribe(self, key: int, send: Subscriber, events: frozenset[str]) -> None:
        self.subscribers[key] = (send, events)

    def unsubscribe(self, key: int) -> None:
        self.subscribers.pop(key, None)

    def publish(self, event: str, params: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        line = orjson.dumps({"jsonrpc": "2.0", "method": event, "params": params}) + b"\n"
        for key, (send, events) in list(self.subscribers.items()):
            if event in events and not send(line):
                self.subscribers.pop(key, None)
                log.warning("events.subscriber_dropped", subscriber=key)

"""The after-commit stage that logs and publishes session events (daemon/session_events.py):
every session a durable batch began is logged and published once, in order, with the logger
bound once per batch."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest
from structlog.testing import capture_logs

from daemon.committer import Counters
from daemon.events import EventBus
from daemon.session_events import SessionEvents
from daemon.store.entry import SessionEntry
from daemon.store.registry import SessionState
from daemon.store.store import Batch
from daemon.work import Commit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def session(i: int) -> SessionState:
    key = f"agent:main:direct:{i}"
    return SessionState("main", key, f"id-{i}", f"agents/main/sessions/id-{i}.jsonl",
                        SessionEntry({"sessionId": f"id-{i}"}, lambda k: None, key))  # fmt: skip


async def test_every_session_a_batch_began_is_logged_and_published_once() -> None:
    bus = EventBus()
    published: list[dict[str, Any]] = []
    bus.subscribe(1, lambda line: published.append(orjson.loads(line)) or True,
                  frozenset({"session.created"}))  # fmt: skip
    stage = SessionEvents(bus, Counters())
    began = Batch()
    began.created.extend(session(i) for i in range(3))
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await stage.after_commit(Commit(Batch(), 0, ""), tg)  # began nothing: no event
            await stage.after_commit(Commit(began, 0, ""), tg)
    created = [e["sessionId"] for e in logs if e["event"] == "session.created"]
    assert created == ["id-0", "id-1", "id-2"]
    assert [p["params"]["sessionId"] for p in published] == created

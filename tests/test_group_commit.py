"""Group commit (daemon/committer.py, invariant 1): a batch is prepared while the one before it
is written, and what arrives while it waits for the writer joins it, so a request waits for the
batch being written and its own, never for one more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from inprocess import make_pipeline

from daemon.config import Config
from daemon.core.protocol import parse_ingest
from daemon.store.store import Store
from daemon.work import Commit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class HoldFirst:
    """An after-commit stage that notes each durable batch's size and keeps the writer in the
    first batch until `release` is set."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = anyio.Event()
        self.holding = anyio.Event()

    async def after_commit(self, commit: Commit, background: TaskGroup) -> None:
        self.sizes.append(len(commit.answers))
        if len(self.sizes) == 1:
            self.holding.set()
            await self.release.wait()


async def test_requests_arriving_while_a_batch_waits_for_the_writer_join_it(
    tmp_path: Path,
) -> None:
    cfg = Config.model_validate({"session": {"dmScope": "per-channel-peer"}})
    store = Store(tmp_path / "state", dedup_max=1000, dedup_window_ms=86_400_000)
    store.open()
    pipeline = make_pipeline(store, cfg)
    hold = HoldFirst()
    pipeline.stages = (*pipeline.stages, hold)
    queue = pipeline.entrance.queue
    answers: list[dict[str, Any]] = []
    done = anyio.Event()

    def reply(outcome: Any) -> None:
        assert isinstance(outcome, dict), outcome
        answers.append(outcome)
        if len(answers) == 4:
            done.set()

    def send(peer: str) -> None:
        params = {"channel": "telegram", "chatType": "direct", "peer": peer, "text": "hi"}
        assert pipeline.ingest(parse_ingest(params), reply) is None

    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        send("a")
        await hold.holding.wait()  # the writer is inside a's batch
        send("b")
        await anyio.wait_all_tasks_blocked()
        assert len(queue) == 0  # b's batch is prepared and waits for the writer
        send("c")
        send("d")
        await anyio.wait_all_tasks_blocked()
        assert len(queue) == 0  # taken into b's batch, not left for the batch after it
        hold.release.set()
        await done.wait()
        pipeline.close()
    assert hold.sizes == [1, 3]
    assert len({a["sessionId"] for a in answers}) == 4
    store.close()

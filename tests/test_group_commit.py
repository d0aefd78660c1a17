"""Group commit (daemon/committer.py, invariant 1): a batch is prepared while the one before it
is written, and what arrives while it waits for the writer joins it, so a request waits for the
batch being written and its own, never for one more."""

from __future__ import annotations

import errno
import threading
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import TaskGroup
from inprocess import make_pipeline

from daemon.config import Config
from daemon.core.protocol import parse_ingest
from daemon.store.registry import SessionState
from daemon.store.store import Batch, Store
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


class SteppedStore(Store):
    """A real store whose steps a test orders: the batch writing to `fail_key` waits for
    `fail_now` and then fails as a full disk fails a journal append (nothing written), and the
    tail read of `slow_key` signals `loading` and waits for `loaded`."""

    fail_key = "agent:main:telegram:direct:x"
    slow_key = "agent:main:telegram:direct:u"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_now = threading.Event()
        self.loading = threading.Event()
        self.loaded = threading.Event()

    def write_batch(self, batch: Batch) -> None:
        if any(st.session_key == self.fail_key for st, _b, _l in batch.touched.values()):
            self.fail_now.wait(30)
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write_batch(batch)

    def ensure_loaded(self, states: list[SessionState]) -> None:
        if any(st.session_key == self.slow_key for st in states):
            self.loading.set()
            self.loaded.wait(30)
        super().ensure_loaded(states)


async def test_requests_joining_a_batch_that_a_failed_write_voided_meanwhile_never_build_on_it(
    tmp_path: Path,
) -> None:
    """Found by the random-ENOSPC fault test under load: a transcript whose entry named as its
    parent an entry that was never written. Requests joined a prepared batch while their tails
    were read; a write failed meanwhile and voided that batch, and the joiners were still added
    to it, moving their sessions onto lines that would never be written; the next batch,
    prepared before the writer reached the void one, built on them and was written."""
    cfg = Config.model_validate({"session": {"dmScope": "per-channel-peer"}})
    state = tmp_path / "state"
    first = Store(state, dedup_max=1000, dedup_window_ms=86_400_000)
    first.open()
    answers: dict[str, Any] = {}
    answered: defaultdict[str, anyio.Event] = defaultdict(anyio.Event)
    everyone = anyio.Event()

    def replier(mid: str, want: int) -> Any:
        def reply(outcome: Any) -> None:
            answers[mid] = outcome
            answered[mid].set()
            if len(answers) == want:
                everyone.set()

        return reply

    def sender(pipeline: Any, want: int) -> Any:
        def send(peer: str, mid: str) -> None:
            params = {
                "channel": "telegram",
                "chatType": "direct",
                "peer": peer,
                "text": mid,
                "messageId": mid,
            }
            assert pipeline.ingest(parse_ingest(params), replier(mid, want)) is None

        return send

    # Sessions s and u exist on disk; after a restart their tails are not known yet.
    pipeline = make_pipeline(first, cfg)
    send = sender(pipeline, 2)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        send("s", "s0")
        send("u", "u0")
        await everyone.wait()
        pipeline.close()
    first.close()

    store = SteppedStore(state, dedup_max=1000, dedup_window_ms=86_400_000)
    store.open()
    pipeline = make_pipeline(store, cfg)
    answers.clear()
    everyone = anyio.Event()
    send = sender(pipeline, 6)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        send("s", "s1")  # s's tail is read and s1 written: s is loaded
        await answered["s1"].wait()
        send("x", "x1")  # the writer is in x1's batch, which will fail
        await anyio.wait_all_tasks_blocked()
        send("s", "s2")  # prepared on top of it: waits for the writer
        await anyio.wait_all_tasks_blocked()
        send("u", "u1")  # joins s2's batch: u's tail is read first ...
        send("s", "s3")
        await anyio.to_thread.run_sync(store.loading.wait, 30)
        send("s", "s4")  # ... while s4 waits in the queue for the batch after
        store.fail_now.set()  # x1's write fails: s2's batch is void
        await answered["x1"].wait()
        store.loaded.set()
        with anyio.fail_after(30):
            await everyone.wait()
        pipeline.close()
    store.close()

    transcript = next(
        path.read_bytes().splitlines()
        for path in (state / "agents" / "main" / "sessions").glob("*.jsonl")
        if b'"s0"' in path.read_bytes()
    )
    entries = [orjson.loads(line) for line in transcript[1:]]
    for before, entry in pairwise(entries):
        assert entry["parentId"] == before["id"], (entry, before)
    stored = [e["origin"]["messageId"] for e in entries]
    acked = [m for m, a in answers.items() if isinstance(a, dict) and m.startswith("s")]
    assert sorted(m for m in stored if m != "s0") == sorted(acked)
    # What waited for the void batch went into the next one instead of failing with it.
    assert [m for m in ("u1", "s3", "s4") if not isinstance(answers[m], dict)] == []
    assert stored == ["s0", "s1", "s3", "s4"]

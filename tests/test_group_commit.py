"""Group commit (daemon/committer.py, invariant 1): a batch is prepared while the one before it
is written, and what arrives while it waits for the writer joins it, so a request waits for the
batch being written and its own, never for one more."""

from __future__ import annotations

import errno
import threading
from collections import defaultdict
from dataclasses import dataclass, field
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


@dataclass
class Step:
    """One step of a real store that a test holds: `reached` when the store gets there, then
    it waits for `go` (and fails as a full disk fails a journal append, nothing written, when
    `fail`)."""

    fail: bool = False
    reached: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    def take(self) -> None:
        self.reached.set()
        self.go.wait(30)
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")


class SteppedStore(Store):
    """A real store whose steps a test orders: the first batch written to a key in `writes`,
    and the first tail read of a key in `loads`, take that key's step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: dict[str, Step] = {}
        self.loads: dict[str, Step] = {}

    def write_batch(self, batch: Batch) -> None:
        for st, _b, _l in list(batch.touched.values()):
            step = self.writes.pop(st.session_key, None)
            if step is not None:
                step.take()
        super().write_batch(batch)

    def ensure_loaded(self, states: list[SessionState]) -> None:
        for st in states:
            step = self.loads.pop(st.session_key, None)
            if step is not None:
                step.take()
        super().ensure_loaded(states)


def key(peer: str) -> str:
    return f"agent:main:telegram:direct:{peer}"


async def test_requests_joining_a_batch_that_a_failed_write_voided_meanwhile_never_build_on_it(
    tmp_path: Path,
) -> None:
    """Found by the random-ENOSPC fault test under load: a transcript whose entry named as its
    parent an entry that was never written, and one whose entry id was used twice.

    Requests joined a prepared batch while their tails were read; a write failed meanwhile and
    voided that batch, and the joiners were still added to it, moving their sessions onto lines
    never written, on which the next batch built. And when the writer reached a void batch, it
    unloaded its sessions again, though a newer batch had reloaded and advanced them since: the
    batch after that read their tails from disk before the newer batch's lines were there."""
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
    send = sender(pipeline, 7)
    x_fails = store.writes[key("x")] = Step(fail=True)
    u_read = store.loads[key("u")] = Step()
    u_written = store.writes[key("u")] = Step()
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
        await anyio.to_thread.run_sync(u_read.reached.wait, 30)
        send("s", "s4")  # ... while s4 waits in the queue for the batch after
        x_fails.go.set()  # x1's write fails: s2's batch is void
        await answered["x1"].wait()
        u_read.go.set()
        # The batch that takes u1 is written; s5 is prepared meanwhile, on top of it.
        await anyio.to_thread.run_sync(u_written.reached.wait, 30)
        send("s", "s5")
        with anyio.fail_after(30):
            while not pipeline.committer._unwritten:
                await anyio.wait_all_tasks_blocked()
                await anyio.sleep(0.01)
        u_written.go.set()
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
    assert len({e["id"] for e in entries}) == len(entries), "an entry id used twice"
    for before, entry in pairwise(entries):
        assert entry["parentId"] == before["id"], (entry, before)
    stored = [e["origin"]["messageId"] for e in entries]
    acked = [m for m, a in answers.items() if isinstance(a, dict) and m.startswith("s")]
    assert sorted(m for m in stored if m != "s0") == sorted(acked)
    # What waited for the void batch went into the next one instead of failing with it.
    assert [m for m in ("u1", "s3", "s4", "s5") if not isinstance(answers[m], dict)] == []
    assert stored == ["s0", "s1", "s3", "s4", "s5"]

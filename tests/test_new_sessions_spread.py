"""A batch begins at most MAX_NEW_SESSIONS sessions (a batch of new sessions alone at most
MAX_NEW_ALONE, and requests that join a prepared batch only what it may still begin): the
requests of further new sessions wait for the next batch, each session's requests keep their
order, and the messages of existing sessions behind them do not wait (SPEC 4.4: no session's
slow I/O holds another's acks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import TaskGroup
from hypothesis import given
from hypothesis import strategies as st
from inprocess import make_pipeline

from daemon.config import Config
from daemon.core.ingest import spread_new_sessions
from daemon.core.protocol import parse_ingest
from daemon.pipeline import MAX_NEW_ALONE, MAX_NEW_SESSIONS, Pipeline, _key_of
from daemon.store.store import Store
from daemon.work import Commit, IngestWork, Work

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_new_keys_beyond_the_cap_wait_with_all_their_later_requests() -> None:
    keys = ["a", "old", "b", "c", "a", "old", "c", "d", None]
    held = spread_new_sessions(keys, lambda k: k == "old", 2)
    assert [keys[i] for i in held] == ["c", "c", "d"]


def test_a_batch_of_new_sessions_only_is_not_split() -> None:
    keys = ["a", "b", "c", "a", "d"]
    assert spread_new_sessions(keys, lambda k: False, 2) == []
    # One request of an existing session (or one that begins none) and the cap applies.
    assert spread_new_sessions([*keys, None], lambda k: False, 2) == [2, 4]


def test_new_sessions_alone_are_bounded_by_their_own_cap() -> None:
    keys = ["a", "b", "c", "a", "d", "e"]
    assert [keys[i] for i in spread_new_sessions(keys, lambda k: False, 1, 3)] == ["d", "e"]
    # Mixed, the smaller cap applies; the first new keys in order are the ones that begin.
    mixed = [*keys, None]
    assert [mixed[i] for i in spread_new_sessions(mixed, lambda k: False, 1, 3)] == [
        "b",
        "c",
        "d",
        "e",
    ]


def test_requests_joining_a_batch_begin_only_what_it_may_still_begin() -> None:
    keys = ["a", "old", "b", "a"]

    def known(k: str) -> bool:
        return k == "old"

    # The batch begins 2 of its cap of 3 already: one more ("a", with its later request).
    assert [keys[i] for i in spread_new_sessions(keys, known, 3, begun=2)] == ["b"]
    # It begins all it may: every new session waits, existing sessions join.
    assert [keys[i] for i in spread_new_sessions(keys, known, 3, begun=3)] == ["a", "b", "a"]
    # A batch of new sessions alone (cap 4): joiners of new sessions alone fill it up to 4.
    alone = ["x", "y", "z"]
    assert spread_new_sessions(alone, lambda k: False, 1, 4, begun=2) == [2]
    # ... but a batch that answers others (or joiners that do) is held to the smaller cap.
    assert spread_new_sessions(alone, lambda k: False, 1, 4, begun=2, others=True) == [0, 1, 2]


@given(
    st.lists(st.sampled_from(["k0", "k1", "n0", "n1", "n2", "n3", "n4", None]), max_size=40),
    st.integers(min_value=1, max_value=4),
)
def test_the_cap_holds_and_no_session_is_reordered(keys: list[str | None], cap: int) -> None:
    held = set(spread_new_sessions(keys, lambda k: k.startswith("k"), cap))
    taken_new = {k for i, k in enumerate(keys) if i not in held and k and k.startswith("n")}
    if any(k is None or k.startswith("k") for k in keys):
        assert len(taken_new) <= cap
    else:
        assert not held
    for i, k in enumerate(keys):
        if k is None or k.startswith("k"):
            assert i not in held  # existing sessions (and requests without a key) never wait
        elif i in held:
            # Every later request of a held key waits too: its order is kept.
            assert all(j in held for j in range(i, len(keys)) if keys[j] == k)
    if any(k and k.startswith("n") for k in keys):
        assert taken_new  # at least one new session begins: held requests always progress


class Batches:
    """An after-commit stage noting, per durable batch, the sessions it began and the keys of
    the sessions it wrote a message to."""

    def __init__(self) -> None:
        self.created: list[int] = []
        self.keys: list[set[str]] = []

    async def after_commit(self, commit: Commit, background: TaskGroup) -> None:
        self.created.append(len(commit.batch.created))
        self.keys.append({s.session_key for s in commit.messaged.values()})


def params(peer: str, text: str) -> Any:
    return parse_ingest({"channel": "telegram", "chatType": "direct", "peer": peer, "text": text})


async def test_a_burst_of_new_sessions_is_spread_and_an_existing_session_is_not_held(
    tmp_path: Path,
) -> None:
    cfg = Config.model_validate({"session": {"dmScope": "per-channel-peer"}})
    store = Store(tmp_path / "state", dedup_max=1000, dedup_window_ms=86_400_000)
    store.open()
    pipeline: Pipeline = make_pipeline(store, cfg)
    batches = Batches()
    pipeline.stages = (*pipeline.stages, batches)
    answers: dict[str, list[dict[str, Any]]] = {}
    done = anyio.Event()
    n = MAX_NEW_SESSIONS * 3 + 5
    expected = n + 2 + 1

    def reply_for(peer: str) -> Any:
        def reply(outcome: Any) -> None:
            assert isinstance(outcome, dict), outcome
            answers.setdefault(peer, []).append(outcome)
            if sum(map(len, answers.values())) == expected:
                done.set()

        return reply

    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        first = anyio.Event()
        pipeline.ingest(params("old", "hello"), lambda o: first.set())
        await first.wait()
        batches.created.clear()
        batches.keys.clear()
        # Queued together (no await in between): one take of the committer sees them all.
        for i in range(n):
            assert pipeline.ingest(params(f"new{i}", "first"), reply_for(f"new{i}")) is None
        last = f"new{n - 1}"  # a new session beyond the cap: its second message follows it
        assert pipeline.ingest(params(last, "second"), reply_for(last)) is None
        assert pipeline.ingest(params("old", "still here"), reply_for("old")) is None
        assert pipeline.ingest(params(last, "third"), reply_for(last)) is None
        await done.wait()
        pipeline.close()
    assert sum(batches.created) == n
    # The first batch answered the existing session and began only its share of the new ones;
    # the rest, new sessions alone, begin in the batches after it, MAX_NEW_ALONE at most each.
    old_key = answers["old"][0]["sessionKey"]
    assert old_key in batches.keys[0]
    assert batches.created[0] == MAX_NEW_SESSIONS
    assert batches.created[1] == min(n - MAX_NEW_SESSIONS, MAX_NEW_ALONE)
    assert max(batches.created) <= MAX_NEW_ALONE
    last_id = answers[last][0]["sessionId"]
    assert {a["sessionId"] for a in answers[last]} == {last_id}
    path = tmp_path / f"state/agents/main/sessions/{last_id}.jsonl"
    texts = [
        e["message"]["content"][0]["text"]
        for e in map(orjson.loads, path.read_bytes().splitlines())
        if e.get("type") == "message"
    ]
    assert texts == ["first", "second", "third"]
    store.close()


async def test_the_pipeline_holds_back_what_the_rule_holds_back_at_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Pipeline.held_back` first counts the requests that may begin a session (one registry
    lookup each) and asks the rule only when they could be too many: the same answer as the
    rule's alone, for batches just under, at and over the cap, with repeated keys and existing
    sessions, alone or joining a batch that begins some already."""
    cfg = Config.model_validate({"session": {"dmScope": "per-channel-peer"}})
    store = Store(tmp_path / "state", dedup_max=1000, dedup_window_ms=86_400_000)
    store.open()
    pipeline: Pipeline = make_pipeline(store, cfg)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        done = anyio.Event()
        pipeline.ingest(params("old", "hello"), lambda o: done.set())
        await done.wait()
        pipeline.close()

    def work(peer: str) -> IngestWork:
        p = params(peer, "hi")
        route, _ = pipeline.router.route(p)
        return IngestWork(route, p, lambda o: None, None, 0.0)

    cases: list[tuple[list[Work], int, bool]] = []
    for new in (
        0,
        MAX_NEW_SESSIONS - 1,
        MAX_NEW_SESSIONS,
        MAX_NEW_SESSIONS + 1,
        3 * MAX_NEW_SESSIONS,
    ):
        for repeat in (0, 3):
            peers = ["old"] * 40 + [f"n{i}" for i in range(new)] + [f"n{i}" for i in range(repeat)]
            for begun in (0, 10, MAX_NEW_SESSIONS - 1, MAX_NEW_SESSIONS + 8):
                cases.append(([work(p) for p in peers], begun, begun > 0))
    answers = [pipeline.held_back(items, begun, others) for items, begun, others in cases]
    monkeypatch.setattr(pipeline, "_begins_few", lambda items, begun: False)
    rule = [pipeline.held_back(items, begun, others) for items, begun, others in cases]
    assert answers == rule
    assert any(rule) and not all(rule)
    # The rule as `held_back` asks it (each key once, known ones as None) answers as the rule
    # asked with every key and a lookup per key does.
    for items, begun, others in cases:
        keys = [_key_of(item) for item in items]

        def known(key: str) -> bool:
            return pipeline.find_by_key(key) is not None

        waiting = len({k for k in keys if k is not None and not known(k)})
        cap, alone = max(MAX_NEW_SESSIONS, waiting // 4), max(MAX_NEW_ALONE, waiting // 2)
        expected = spread_new_sessions(keys, known, cap, alone, begun=begun, others=others)
        assert pipeline.held_back(items, begun, others) == expected
    store.close()

"""Scheduled resets with an injected clock: the real store and pipeline on a temporary folder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import orjson
import pytest
from anyio.abc import TaskGroup
from inprocess import make_pipeline

from daemon.archiving import ARCHIVE_GROUP, ARCHIVE_WORKERS
from daemon.config import Config
from daemon.core.ids import now_ms
from daemon.core.protocol import parse_ingest
from daemon.events import EventBus
from daemon.pipeline import Pipeline
from daemon.scheduler import (
    EXPIRY,
    RESET_GROUP,
    RESET_GROUP_MAX,
    RESET_GROUP_SECONDS,
    RESET_GROUPS_IN_FLIGHT,
    Scheduler,
    _Tally,
    daily_job,
    group_size,
)
from daemon.session_events import SessionEvents
from daemon.store.archive import INDEX
from daemon.store.store import Store
from daemon.work import Commit, Entrance

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ms(s: str, tz: str) -> int:
    return int(datetime.fromisoformat(s).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


async def ingest(p: Pipeline, peer: str, text: str) -> dict[str, Any]:
    done = anyio.Event()
    box: list[Any] = []

    def reply(o: Any) -> None:
        box.append(o)
        done.set()

    params = parse_ingest({"channel": "telegram", "chatType": "direct", "peer": peer, "text": text})
    w = p.ingest(params, reply)
    if w is not None:
        await w
    await done.wait()
    assert isinstance(box[0], dict), box[0]
    return box[0]


def make(tmp_path: Path, tz: str, reset: dict[str, Any]) -> tuple[Store, Pipeline]:
    cfg = Config.model_validate(
        {"daemon": {"timezone": tz}, "session": {"dmScope": "per-channel-peer", "reset": reset}}
    )
    store = Store(tmp_path / "state", dedup_max=1000, dedup_window_ms=86_400_000)
    store.open()
    return store, make_pipeline(store, cfg)


def backdate(store: Store, key: str, started: int, last: int) -> None:
    st = store.agents["main"].sessions[key]
    st.entry.update({"sessionStartedAt": started, "lastInteractionAt": last})


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
async def test_the_daily_job_archives_stale_sessions_with_no_traffic(
    tmp_path: Path, tz: str
) -> None:
    store, pipeline = make(tmp_path, tz, {"mode": "daily", "atHour": 4})
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await ingest(pipeline, "1", "talking before four")
        await ingest(pipeline, "2", "still talking at four")
        k1, k2 = "agent:main:telegram:direct:1", "agent:main:telegram:direct:2"
        backdate(store, k1, ms("2026-03-28 20:00", tz), ms("2026-03-28 21:00", tz))
        # k2 was active ten minutes ago: its reset waits for 30 quiet minutes.
        backdate(store, k2, ms("2026-03-28 20:00", tz), ms("2026-03-29 03:55", tz))
        sched = Scheduler(pipeline, store.state_dir)
        first = await sched.run_job(daily_job(4), at=ms("2026-03-29 04:05", tz))
        assert first["archived"] == 1 and first["reasons"] == {"daily": 1}
        assert k1 not in store.agents["main"].sessions
        assert k2 in store.agents["main"].sessions
        again = await sched.run_job(daily_job(4), at=ms("2026-03-29 04:06", tz))
        assert again["archived"] == 0  # never twice
        later = await sched.run_job(EXPIRY, at=ms("2026-03-29 04:26", tz))
        assert later["archived"] == 1
        assert k2 not in store.agents["main"].sessions
        for _ in range(100):
            if all(a.record is not None for a in store.archives["main"]):
                break
            await anyio.sleep(0.02)
        pipeline.close()
    index = (tmp_path / "state/agents/main/sessions/archive/index.jsonl").read_bytes().splitlines()
    recs = [orjson.loads(x) for x in index]
    assert sorted(r["sessionKey"] for r in recs) == sorted([k1, k2])
    assert all(r["reason"] == "daily" and r["messages"] == 1 for r in recs)
    runs = orjson.loads((tmp_path / "state/scheduler.json").read_bytes())["lastRuns"]
    assert set(runs) == {daily_job(4), EXPIRY}
    store.close()


async def test_the_next_message_after_a_scheduled_reset_begins_a_new_session(
    tmp_path: Path,
) -> None:
    store, pipeline = make(tmp_path, "UTC", {"mode": "idle", "idleMinutes": 10})
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        first = await ingest(pipeline, "1", "hello")
        key = first["sessionKey"]
        backdate(store, key, 0, 0)
        res = await Scheduler(pipeline, store.state_dir).run_job(EXPIRY)
        assert res["reasons"] == {"idle": 1}
        second = await ingest(pipeline, "1", "are you there?")
        assert second["created"] and second["sessionId"] != first["sessionId"]
        pipeline.close()
    store.close()


def test_a_daily_run_missed_while_down_runs_once_at_start_up(tmp_path: Path) -> None:
    store, pipeline = make(tmp_path, "UTC", {"mode": "daily", "atHour": 4})
    sched = Scheduler(pipeline, store.state_dir)
    now = ms("2026-01-10 09:00", "UTC")
    sched.last_runs = {daily_job(4): ms("2026-01-09 04:00", "UTC")}
    assert sched.missed(now) == [daily_job(4)]
    sched.last_runs = {daily_job(4): ms("2026-01-10 04:00", "UTC")}
    assert sched.missed(now) == []
    store.close()


async def test_system_events_neither_count_as_interaction_nor_trigger_a_reset(
    tmp_path: Path,
) -> None:
    store, pipeline = make(tmp_path, "UTC", {"mode": "idle", "idleMinutes": 10})
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        first = await ingest(pipeline, "1", "hello")
        key = first["sessionKey"]
        backdate(store, key, 0, 0)
        done = anyio.Event()
        box: list[Any] = []

        def reply(o: Any) -> None:
            box.append(o)
            done.set()

        params = parse_ingest(
            {
                "channel": "telegram",
                "chatType": "direct",
                "peer": "1",
                "text": "HEARTBEAT",
                "metadata": {"event": "heartbeat"},
            }
        )
        w = pipeline.ingest(params, reply)
        if w is not None:
            await w
        await done.wait()
        assert box[0]["sessionId"] == first["sessionId"] and box[0]["reset"] is None
        assert store.agents["main"].sessions[key].entry["lastInteractionAt"] == 0
        # A real message after the same pause does reset.
        second = await ingest(pipeline, "1", "back")
        assert second["reset"] == {"reason": "idle", "previousSessionId": first["sessionId"]}
        pipeline.close()
    store.close()


async def test_an_adopted_folder_gets_resets_only_for_boundaries_after_its_adoption(
    tmp_path: Path,
) -> None:
    store, pipeline = make(tmp_path, "UTC", {"mode": "daily", "atHour": 4})
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        await ingest(pipeline, "1", "an OpenClaw session from last week")
        key = "agent:main:telegram:direct:1"
        backdate(store, key, ms("2026-01-03 20:00", "UTC"), ms("2026-01-03 21:00", "UTC"))
        sched = Scheduler(pipeline, store.state_dir)
        sched.adopted_at = ms("2026-01-10 09:00", "UTC")
        # Seven boundaries passed before the adoption: none of them resets it.
        same_day = await sched.run_job(EXPIRY, at=ms("2026-01-10 23:59", "UTC"))
        assert same_day["archived"] == 0 and key in store.agents["main"].sessions
        # The first boundary after the adoption does.
        after = await sched.run_job(daily_job(4), at=ms("2026-01-11 04:00", "UTC"))
        assert after["reasons"] == {"daily": 1}
        assert key not in store.agents["main"].sessions
        pipeline.close()
    store.close()


def test_adoption_is_recorded_once_and_a_folder_sessiond_scheduled_is_not_adopted(
    tmp_path: Path,
) -> None:
    from daemon.adoption import MARKER, adopt, record

    store, pipeline = make(tmp_path, "UTC", {"mode": "daily", "atHour": 4})
    at, marker = adopt(store, pipeline.policies, 1000)
    assert at == 1000 and marker is not None and marker["adoptedAt"] == 1000
    record(store.state_dir, marker)
    assert adopt(store, pipeline.policies, 2000) == (1000, None)
    store.close()
    ours, pipeline = make(tmp_path / "ours", "UTC", {"mode": "daily", "atHour": 4})
    (ours.state_dir / "scheduler.json").write_bytes(b'{"lastRuns": {}}')
    assert adopt(ours, pipeline.policies, 3000) == (0, None)
    assert not (ours.state_dir / MARKER).exists()
    ours.close()


async def test_a_scheduled_reset_gets_its_successor_when_the_next_session_of_its_key_begins(
    tmp_path: Path,
) -> None:
    from daemon.api import Api
    from daemon.core.protocol import parse_archived, parse_history

    store, pipeline = make(tmp_path, "UTC", {"mode": "daily", "atHour": 4})
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        first = await ingest(pipeline, "1", "yesterday's talk")
        key = first["sessionKey"]
        backdate(store, key, ms("2026-01-09 20:00", "UTC"), ms("2026-01-09 21:00", "UTC"))
        res = await Scheduler(pipeline, store.state_dir).run_job(
            daily_job(4), at=ms("2026-01-10 04:00", "UTC")
        )
        assert res["reasons"] == {"daily": 1}
        await pipeline.archives_settled()
        second = await ingest(pipeline, "1", "good morning")
        assert second["created"]
        await pipeline.archives_settled()
        api = Api(store, pipeline, tmp_path / "unused.sock")
        archived = await api.sessions_archived(parse_archived({"sessionKey": key}))
        assert [(a["sessionId"], a["successor"]) for a in archived["sessions"]] == [
            (first["sessionId"], second["sessionId"])
        ]
        prev = await api.sessions_history(parse_history({"sessionKey": key, "previous": 1}))
        assert prev["sessionId"] == first["sessionId"]
        pipeline.close()
    folder = tmp_path / "state/agents/main/sessions"
    index = [orjson.loads(x) for x in (folder / "archive/index.jsonl").read_bytes().splitlines()]
    # Append-only: the archiving's line, then the line that names the successor.
    assert [(r["sessionId"], r["reason"], r["successor"]) for r in index] == [
        (first["sessionId"], "daily", None),
        (first["sessionId"], "daily", second["sessionId"]),
    ]
    header = orjson.loads((folder / f"{second['sessionId']}.jsonl").read_bytes().splitlines()[0])
    assert header["predecessor"] == first["sessionId"]
    store.close()
    # After a restart the later line wins.
    again = Store(tmp_path / "state", dedup_max=1000, dedup_window_ms=86_400_000)
    again.open()
    assert again.archived_by_id[first["sessionId"]].successor == second["sessionId"]
    again.close()


class ResetsPerBatch:
    """An after-commit stage that notes how many resets each durable batch held."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def after_commit(self, commit: Commit, background: TaskGroup) -> None:
        if commit.resets:
            self.sizes.append(len(commit.resets))


async def test_a_job_over_many_sessions_archives_them_all_a_few_groups_per_batch(
    tmp_path: Path,
) -> None:
    """The job queues its resets in groups, so a batch of the committer holds no more than the
    groups in flight (other sessions' messages are prepared with them), and every session still
    ends in archive/ with an index line carrying its batch's time."""
    cfg = Config.model_validate(
        {"session": {"dmScope": "per-channel-peer", "reset": {"mode": "idle", "idleMinutes": 5}}}
    )
    store = Store(tmp_path / "state", dedup_max=1000, dedup_window_ms=86_400_000)
    store.open()
    entrance = Entrance(store, cfg, EventBus())
    batches = ResetsPerBatch()
    pipeline = Pipeline(
        entrance, stages=[SessionEvents(entrance.events, entrance.counters), batches]
    )
    n = RESET_GROUP * 2 + 7
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        keys = [(await ingest(pipeline, str(i), f"hello {i}"))["sessionKey"] for i in range(n)]
        for key in keys:
            backdate(store, key, 0, 0)
        # As after a restart: the job reads the tails of sessions nobody has written to since.
        for key in keys[:RESET_GROUP]:
            store.agents["main"].sessions[key].size = -1
        before = now_ms()
        res = await Scheduler(pipeline, store.state_dir).run_job(EXPIRY)
        after = now_ms()
        assert res["reasons"] == {"idle": n} and res["failed"] == 0
        pipeline.close()
    assert sum(batches.sizes) == n
    # The first groups are queued before any is answered, so the job's first batch holds at
    # most the groups in flight (later groups grow only while groups are answered slowly).
    assert batches.sizes[0] <= RESET_GROUP * RESET_GROUPS_IN_FLIGHT < n
    assert not store.agents["main"].sessions
    index = (tmp_path / "state/agents/main/sessions/archive/index.jsonl").read_bytes().splitlines()
    recs = [orjson.loads(x) for x in index]
    assert sorted(r["sessionKey"] for r in recs) == sorted(keys)
    assert all(before <= r["archivedAt"] <= after for r in recs)
    for r in recs:  # the closing entry went in at the end of the transcript, after its message
        data = (tmp_path / "state/agents/main/sessions/archive" / r["file"]).read_bytes()
        *_, message, last = (orjson.loads(x) for x in data.splitlines())
        assert last["customType"] == "sessiond.closed" and last["parentId"] == message["id"]
    store.close()


def test_groups_grow_only_while_they_are_answered_slowly() -> None:
    assert group_size(0.0) == group_size(RESET_GROUP_SECONDS) == RESET_GROUP
    assert group_size(RESET_GROUP_SECONDS * 3) == RESET_GROUP * 3
    assert group_size(3600.0) == RESET_GROUP_MAX


async def test_a_session_gone_before_the_job_reached_it_is_not_a_failure(
    tmp_path: Path,
) -> None:
    store, pipeline = make(tmp_path, "UTC", {"mode": "idle", "idleMinutes": 10})
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        sched = Scheduler(pipeline, store.state_dir)
        tally = _Tally(EXPIRY)
        # Judged stale, then reset by a message of its own before its turn came: no session
        # with that key is left to expire.
        await sched._reset_all([("main", "agent:main:telegram:direct:9", "idle")], 0, tally)
        assert (tally.failed, tally.reasons) == (0, {})
        pipeline.close()
    store.close()


async def test_tails_read_ahead_never_replace_those_of_a_session_written_meanwhile(
    tmp_path: Path,
) -> None:
    store, pipeline = make(tmp_path, "UTC", {"mode": "idle", "idleMinutes": 10})
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        a = await ingest(pipeline, "1", "one")
        b = await ingest(pipeline, "2", "two")
        pipeline.close()
    sa = store.agents["main"].sessions[a["sessionKey"]]
    sb = store.agents["main"].sessions[b["sessionKey"]]
    size_a = sa.size
    sa.size = sb.size = -1
    tails = store.read_tails([sa, sb])
    assert tails[0] == (size_a, a["entryId"])
    sb.size, sb.last_entry_id = 12345, "written meanwhile"  # the committer loaded it first
    store.set_tails([sa, sb], tails)
    assert (sa.size, sa.last_entry_id) == (size_a, a["entryId"])
    assert (sb.size, sb.last_entry_id) == (12345, "written meanwhile")
    store.close()


async def test_sessions_moved_by_groups_at_once_are_each_archived_and_indexed_once(
    tmp_path: Path,
) -> None:
    """More than ARCHIVE_WORKERS groups' worth of closed sessions: the groups are moved by two
    worker processes at once (daemon/archiving.py), and still every transcript is in archive/,
    none left beside it, each with exactly one index line naming it."""
    cfg = Config.model_validate(
        {"session": {"dmScope": "per-channel-peer", "reset": {"mode": "idle", "idleMinutes": 5}}}
    )
    store = Store(tmp_path / "state", dedup_max=1000, dedup_window_ms=86_400_000)
    store.open()
    entrance = Entrance(store, cfg, EventBus())
    pipeline = Pipeline(entrance, stages=[SessionEvents(entrance.events, entrance.counters)])
    n = ARCHIVE_GROUP * ARCHIVE_WORKERS + 10
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        answers = [await ingest(pipeline, str(i), f"hello {i}") for i in range(n)]
        for a in answers:
            backdate(store, a["sessionKey"], 0, 0)
        res = await Scheduler(pipeline, store.state_dir).run_job(EXPIRY)
        assert res["reasons"] == {"idle": n} and res["failed"] == 0
        pipeline.close()
    folder = tmp_path / "state/agents/main/sessions"
    recs = [orjson.loads(x) for x in (folder / "archive/index.jsonl").read_bytes().splitlines()]
    ids = sorted(a["sessionId"] for a in answers)
    assert sorted(r["sessionId"] for r in recs) == ids
    moved = sorted(p.name for p in (folder / "archive").glob("*.jsonl") if p.name != INDEX)
    assert moved == [f"{sid}.jsonl" for sid in ids]
    assert not list(folder.glob("*.jsonl"))
    store.close()

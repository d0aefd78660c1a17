"""Scheduled resets with an injected clock: the real store and pipeline on a temporary folder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import orjson
import pytest
from inprocess import make_pipeline

from daemon.config import Config
from daemon.core.protocol import parse_ingest
from daemon.pipeline import Pipeline
from daemon.scheduler import EXPIRY, Scheduler, daily_job
from daemon.store.store import Store

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

"""The backup mirror (SPEC 6): records that rebuild their lines exactly, a mirror that follows the
real committer, catches up after a crash without doubling anything, survives its disk going away,
and `backup verify` / `backup restore` over it."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from inprocess import make_pipeline

from daemon import failpoints, logs, worker_log
from daemon.api import read_history
from daemon.backup import Mirror, backup_root
from daemon.config import Config
from daemon.core.exclusions import excluded
from daemon.core.protocol import parse_append, parse_ingest
from daemon.pipeline import Pipeline
from daemon.restore import RestoreError, restore
from daemon.store import backup as files
from daemon.store.backup import Job, catch_up, key_of_record, line_of, read_records, to_record
from daemon.store.store import Store
from daemon.store.transcript import header_line, message_line
from daemon.verify import verify

# ---------------------------------------------------------------------------------------------
# Records


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20))
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def transcript_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["message", "custom", "session", "compaction", "other"]))
    extra = draw(st.dictionaries(st.text(min_size=1, max_size=8), json_value, max_size=3))
    ts = draw(st.one_of(st.just("2026-11-22T09:15:00.209Z"), st.none()))
    if kind == "session":
        obj: dict[str, Any] = {"type": "session", "version": 3, "id": "s1", "timestamp": ts}
    elif kind == "message":
        msg = {"role": draw(st.sampled_from(["user", "assistant", "toolResult"]))}
        if draw(st.booleans()):
            msg["content"] = draw(json_value)
        msg.update(draw(st.dictionaries(st.text(min_size=1, max_size=8), json_value, max_size=2)))
        obj = {"type": "message", "id": "0000abcd", "parentId": None, "timestamp": ts}
        obj["message"] = msg
    else:
        obj = {"type": kind, "id": draw(st.one_of(st.none(), st.text(max_size=8)))}
    for k, v in extra.items():
        obj.setdefault(k, v)
    return orjson.dumps(obj)


@settings(max_examples=300, deadline=None)
@given(transcript_lines())
def test_a_record_rebuilds_its_line_byte_for_byte(line: bytes) -> None:
    rec = to_record(line, agent_id="main", session_key="agent:main:main", session_id="s1")
    assert set(rec) == {"role", "content", "timestamp", "metadata"}
    assert {"agentId", "sessionKey", "sessionId", "entryId", "channel"} <= set(rec["metadata"])
    again = orjson.loads(orjson.dumps(rec))  # as read back from the mirror file
    assert line_of(again) == line


@given(st.binary(max_size=60).filter(lambda b: b"\n" not in b))
def test_a_line_that_is_not_json_is_kept_raw(line: bytes) -> None:
    rec = orjson.loads(
        orjson.dumps(to_record(line, agent_id="a", session_key=None, session_id="s"))
    )
    assert line_of(rec) == line


def test_a_message_record_shows_role_content_timestamp_and_metadata() -> None:
    line = message_line(
        "0000000a",
        None,
        "2026-11-22T09:15:00.209Z",
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "timestamp": 1},
        {"channel": "telegram", "messageId": "9"},
    )
    rec = to_record(line, agent_id="main", session_key="agent:main:main", session_id="s1")
    assert rec["role"] == "user" and rec["content"] == [{"type": "text", "text": "hi"}]
    assert rec["timestamp"] == "2026-11-22T09:15:00.209Z"
    meta = rec["metadata"]
    assert meta["entryId"] == "0000000a" and meta["channel"] == "telegram"
    assert (meta["agentId"], meta["sessionKey"], meta["sessionId"]) == (
        "main",
        "agent:main:main",
        "s1",
    )


def test_exclude_patterns_are_globs_over_session_keys() -> None:
    pats = ("agent:*:cron:*", "agent:work:slack:group:C0?")
    assert excluded("agent:main:cron:nightly", pats)
    assert excluded("agent:work:slack:group:C01", pats)
    assert not excluded("agent:work:slack:group:C012", pats)
    assert not excluded("agent:main:main", pats)
    assert not excluded(None, pats)


def test_the_default_backup_path_is_in_the_state_folder(tmp_path: Path) -> None:
    assert backup_root(Config(), tmp_path) == tmp_path / "backup"
    cfg = Config.model_validate({"sessions": {"backup": {"path": "elsewhere"}}})
    assert backup_root(cfg, tmp_path) == tmp_path / "elsewhere"
    cfg = Config.model_validate({"sessions": {"backup": {"path": str(tmp_path / "b")}}})
    assert backup_root(cfg, tmp_path / "s") == tmp_path / "b"


# ---------------------------------------------------------------------------------------------
# The writer, on files


def write_transcript(path: Path, n: int, start: int = 0, *, header: bool = True) -> list[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header_line("s1", "agent:main:main", 0, "/w")] if header else []
    parent = None
    for i in range(start, start + n):
        eid = f"{i + 1:08x}"
        msg = {"role": "user", "content": [{"type": "text", "text": f"m{i}"}], "timestamp": i}
        lines.append(message_line(eid, parent, "2026-11-22T09:15:00.209Z", msg))
        parent = eid
    with open(path, "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    return lines


def job(path: Path, sid: str = "s1") -> Job:
    return Job(sid, "main", "agent:main:main", "telegram", (path,), None, None)


def mirrored_lines(root: Path, sid: str = "s1") -> list[bytes]:
    return [line_of(r) for r in read_records(root, sid)]


def test_catching_up_twice_writes_nothing_twice(tmp_path: Path) -> None:
    t = tmp_path / "state" / "s1.jsonl"
    root = tmp_path / "backup"
    lines = write_transcript(t, 5)
    assert catch_up(root, [job(t)]).records == 6
    assert catch_up(root, [job(t)]).records == 0
    lines += write_transcript(t, 3, 5, header=False)
    assert catch_up(root, [job(t)]).records == 3
    assert mirrored_lines(root) == lines


def test_a_torn_mirror_record_is_kept_aside_and_the_entry_written_again(tmp_path: Path) -> None:
    t = tmp_path / "state" / "s1.jsonl"
    root = tmp_path / "backup"
    lines = write_transcript(t, 4)
    catch_up(root, [job(t)])
    live = files.live_path(root, "s1")
    data = live.read_bytes()
    last = data[:-1].rsplit(b"\n", 1)[1]
    live.write_bytes(data[: -len(last) // 2 - 1])  # a crash in the middle of the last record
    catch_up(root, [job(t)])
    assert mirrored_lines(root) == lines
    sides = list(live.parent.glob("history.jsonl.torn-*"))
    assert len(sides) == 1 and last.startswith(sides[0].read_bytes())


def test_a_rebuilt_transcript_adds_only_what_the_mirror_lacks(tmp_path: Path) -> None:
    t = tmp_path / "state" / "s1.jsonl"
    root = tmp_path / "backup"
    lines = write_transcript(t, 4)
    catch_up(root, [job(t)])
    # The transcript is written again from scratch with entries the mirror has and new ones;
    # the mirror's last entry is gone from it, so its position cannot be found.
    t.rename(tmp_path / "old.jsonl")
    again = write_transcript(t, 3) + write_transcript(t, 2, 10, header=False)
    catch_up(root, [job(t)])
    got = mirrored_lines(root)
    assert got == lines + again[-2:]
    keys = [key_of_record(r) for r in read_records(root, "s1")]
    assert len(keys) == len(set(keys))


def test_a_finished_transcript_ending_in_a_fragment_is_mirrored_whole(tmp_path: Path) -> None:
    t = tmp_path / "state" / "s1.jsonl"
    root = tmp_path / "backup"
    lines = write_transcript(t, 2)
    with open(t, "ab") as f:
        f.write(b'{"type":"message","id":"000')
    catch_up(root, [job(t)])
    assert mirrored_lines(root) == [*lines, b'{"type":"message","id":"000']
    assert catch_up(root, [job(t)]).records == 0


# ---------------------------------------------------------------------------------------------
# The mirror stage, with the real store and committer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def running(
    state: Path, settings: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Store, Pipeline, Mirror]]:
    cfg = Config.model_validate(settings or {})
    store = Store(state, dedup_max=1000, dedup_window_ms=86_400_000)
    await anyio.to_thread.run_sync(store.open)
    mirror = Mirror(store, cfg, state)
    pipeline = make_pipeline(store, cfg, mirror=mirror)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        await tg.start(pipeline.run)
        yield store, pipeline, mirror
        pipeline.close()
        mirror.close()
    store.close()


async def call(pipeline: Pipeline, method: str, params: dict[str, Any]) -> dict[str, Any]:
    done = anyio.Event()
    box: list[Any] = []

    def reply(o: Any) -> None:
        box.append(o)
        done.set()

    if method == "ingest":
        w = pipeline.ingest(parse_ingest(params), reply)
    else:
        w = pipeline.append(parse_append(params), reply)
    if w is not None:
        await w
    await done.wait()
    assert isinstance(box[0], dict), box[0]
    return box[0]


def msg(peer: str, text: str, mid: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"channel": "telegram", "chatType": "direct", "peer": peer, "text": text}
    if mid is not None:
        p["messageId"] = mid
    return p


PER_PEER = {"session": {"dmScope": "per-channel-peer"}}


async def settled(mirror: Mirror, seconds: float = 5.0) -> dict[str, Any]:
    return await until(mirror, lambda s: s["state"] == "ok" and s["lagSessions"] == 0, seconds)


async def until(
    mirror: Mirror, ok: Callable[[dict[str, Any]], bool], seconds: float = 30.0
) -> dict[str, Any]:
    """The mirror's status once `ok` says so (polled: the status is computed, not signalled)."""
    deadline = time.monotonic() + seconds
    while not ok(s := mirror.status()):
        assert time.monotonic() < deadline, s
        await anyio.sleep(0.02)
    return s


def transcript_ids(state: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in sorted((state / "agents" / "main" / "sessions").rglob("*.jsonl")):
        if p.name == "index.jsonl":
            continue
        lines = [orjson.loads(x) for x in p.read_bytes().splitlines()]
        out[lines[0]["id"]] = [o["id"] for o in lines[1:]]
    return out


def mirror_ids(root: Path) -> dict[str, list[str]]:
    return {
        sid: [r["metadata"]["entryId"] for r in read_records(root, sid)][1:]
        for sid in files.mirrored_sessions(root)
    }


@pytest.mark.anyio
async def test_every_appended_entry_is_mirrored(tmp_path: Path) -> None:
    # How fast the mirror catches up is a figure for bench/, not a bound for a test: on a
    # loaded machine any bound fails; here only "everything arrives" is proved.
    state = tmp_path / "state"
    async with running(state, PER_PEER) as (_store, pipeline, mirror):
        for i in range(20):
            await call(pipeline, "ingest", msg(str(i % 4), f"hello {i}", str(i)))
        a = await call(pipeline, "ingest", msg("0", "last"))
        await call(
            pipeline,
            "append",
            {"sessionKey": a["sessionKey"], "message": {"role": "assistant", "content": "ok"}},
        )
        status = await settled(mirror, seconds=60.0)
        assert status["records"] == 4 + 21 + 1  # 4 headers, 21 messages, 1 reply
    assert mirror_ids(state / "backup") == transcript_ids(state)
    recs = list(read_records(state / "backup", a["sessionId"]))
    assert recs[-1]["role"] == "assistant" and recs[-1]["content"] == "ok"
    assert recs[-2]["metadata"]["channel"] == "telegram"


@pytest.mark.anyio
async def test_with_sync_ack_the_answer_comes_after_the_mirror(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = {"sessions": {"backup": {"sync": "ack"}}}
    async with running(state, cfg) as (_store, pipeline, _mirror):
        for i in range(5):
            ans = await call(pipeline, "ingest", msg("1", f"m{i}"))
            ids = mirror_ids(state / "backup")[ans["sessionId"]]
            assert ids[-1] == ans["entryId"]


@pytest.mark.anyio
async def test_excluded_sessions_are_not_mirrored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = {**PER_PEER, "sessions": {"backup": {"exclude_patterns": ["*:direct:secret*"]}}}
    async with running(state, cfg) as (_store, pipeline, mirror):
        kept = await call(pipeline, "ingest", msg("alice", "hi"))
        hidden = await call(pipeline, "ingest", msg("secret-bob", "psst"))
        await settled(mirror)
    assert files.mirrored_sessions(state / "backup") == [kept["sessionId"]]
    assert hidden["sessionId"] not in os.listdir(state / "backup")


@pytest.mark.anyio
async def test_a_missing_mirror_folder_degrades_the_mirror_not_ingest(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bk = tmp_path / "bk"
    cfg = {"sessions": {"backup": {"path": str(bk)}}}
    async with running(state, cfg) as (_store, pipeline, mirror):
        await call(pipeline, "ingest", msg("1", "before"))
        await settled(mirror)
        bk.rename(tmp_path / "unmounted")  # the disk goes away
        for i in range(5):
            await call(pipeline, "ingest", msg("1", f"while away {i}", str(i)))
        await until(mirror, lambda s: s["state"] == "degraded")
        s = mirror.status()
        assert s["lagSessions"] == 1 and s["lagBytes"] > 0 and "not mounted" in s["error"]
        (tmp_path / "unmounted").rename(bk)  # it is back
        mirror._wake.set()
        await settled(mirror, seconds=40)
    assert mirror_ids(bk) == transcript_ids(state)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("action", "error"),
    [
        ("enospc", "No space left on device"),  # the disk filled up mid-round
        ("exit", "the mirror's worker process died"),  # the worker was killed mid-round
    ],
)
async def test_a_round_that_fails_midway_degrades_the_mirror_and_it_catches_up_without_doubles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str, error: str
) -> None:
    # Rounds run in the mirror's worker process, which reads the failpoint when it starts (at
    # the first round): the second round fails after writing its records, before the sync.
    monkeypatch.setenv(failpoints.ENV, f"mirror.after_write={action}@2")
    state = tmp_path / "state"
    async with running(state) as (_store, pipeline, mirror):
        await call(pipeline, "ingest", msg("1", "first"))
        await settled(mirror)
        for i in range(4):
            await call(pipeline, "ingest", msg("1", f"m{i}"))
        await until(mirror, lambda s: s["state"] == "degraded")
        assert mirror.status()["error"].startswith(error)
        mirror._wake.set()
        await settled(mirror, seconds=40)
        assert mirror.status()["state"] == "ok"
    assert mirror_ids(state / "backup") == transcript_ids(state)
    assert verify(state, state / "backup").ok


@pytest.mark.anyio
async def test_after_a_crash_the_mirror_catches_up_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running(state, PER_PEER) as (_store, pipeline, mirror):
        for i in range(6):
            await call(pipeline, "ingest", msg(str(i % 2), f"m{i}"))
        await settled(mirror)
    # The mirror lost its last records (the daemon died before they were written) and one
    # session never reached it at all.
    root = state / "backup"
    sids = files.mirrored_sessions(root)
    live = files.live_path(root, sids[0])
    live.write_bytes(b"".join(live.read_bytes().splitlines(keepends=True)[:2]))
    files.live_path(root, sids[1]).rename(tmp_path / "gone.jsonl")
    async with running(state, PER_PEER) as (_store, pipeline, mirror):
        await settled(mirror)
    assert mirror_ids(root) == transcript_ids(state)
    assert verify(state, root).ok


@pytest.mark.anyio
async def test_resets_archive_sessions_and_their_mirrors_stay_complete(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running(state) as (store, pipeline, mirror):
        first = await call(pipeline, "ingest", msg("1", "one"))
        await call(pipeline, "ingest", msg("1", "/reset"))
        await call(pipeline, "ingest", msg("1", "two"))
        await pipeline.archives_settled()
        await settled(mirror)
        assert first["sessionId"] in store.archived_by_id
    recs = list(read_records(state / "backup", first["sessionId"]))
    assert recs[-1]["metadata"]["entry"]["customType"] == "sessiond.closed"
    assert verify(state, state / "backup").ok


@pytest.mark.anyio
async def test_a_backlog_is_mirrored_in_small_rounds_while_messages_come_and_whole_once_idle(
    tmp_path: Path,
) -> None:
    from daemon import backup as stage
    from daemon.store.backup import MAX_JOBS_PER_ROUND

    state = tmp_path / "state"
    n = MAX_JOBS_PER_ROUND + 100
    async with running(state, PER_PEER) as (_store, pipeline, mirror):
        async with mirror.lock:  # no round can run: the backlog builds up
            for i in range(n):
                await call(pipeline, "ingest", msg(f"p{i}", "hello"))
            mirror._last_commit = time.monotonic()  # as if a batch had just come
            assert len(mirror._jobs()) == MAX_JOBS_PER_ROUND, "messages are still coming"
            mirror._last_commit -= stage.ROUND_INTERVAL + 1  # as if none came for a while
            assert len(mirror._jobs()) == n, "idle: the whole backlog in one round"
        await settled(mirror, 60)
    assert len(files.mirrored_sessions(state / "backup")) == n
    assert verify(state, state / "backup").ok


@pytest.mark.anyio
async def test_each_archived_session_gets_its_state_record_once_its_mirror_is_complete(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    root = state / "backup"
    async with running(state, PER_PEER) as (_store, pipeline, mirror):
        ended = []
        for peer in ("1", "2", "3"):
            ended.append((await call(pipeline, "ingest", msg(peer, "one")))["sessionId"])
            await call(pipeline, "ingest", msg(peer, "/reset"))
        await pipeline.archives_settled()
        await settled(mirror)
        deadline = time.monotonic() + 30

        def done() -> bool:
            # The records are written in a thread, and the mirror forgets them on the loop once
            # it returns: a look between the two saw the files and sids still to look at.
            left = mirror._unstated or mirror._unstated_busy
            return not left and all(files.read_state(root, sid) for sid in ended)

        while not done():
            assert time.monotonic() < deadline, (
                [files.read_state(root, s) for s in ended],
                "left to look at:",
                mirror._unstated,
                mirror._unstated_busy,
            )
            await anyio.sleep(0.02)
    for sid in ended:
        rec = files.read_state(root, sid)
        assert rec is not None and rec["sessionId"] == sid and rec["reason"] == "reset"
        assert list(read_records(root, sid))[-1]["metadata"]["entry"]["customType"] == (
            "sessiond.closed"
        )


# ---------------------------------------------------------------------------------------------
# verify and restore


def test_verify_names_missing_extra_doubled_and_different_entries(tmp_path: Path) -> None:
    state = tmp_path / "state"
    t = state / "agents" / "main" / "sessions" / "s1.jsonl"

    root = tmp_path / "bk"
    write_transcript(t, 6)
    catch_up(root, [job(t)])
    assert verify(state, root).ok
    live = files.live_path(root, "s1")
    recs = live.read_bytes().splitlines(keepends=True)
    changed = orjson.loads(recs[3])
    changed["content"] = "tampered"
    extra = orjson.loads(recs[4])
    extra["metadata"]["entryId"] = "ffffffff"
    # drop entry 1, change entry 3, add an entry only the mirror has, and double entry 5
    live.write_bytes(
        recs[0] + recs[2] + orjson.dumps(changed) + b"\n" + b"".join(recs[4:])
        + orjson.dumps(extra) + b"\n" + recs[5]
    )  # fmt: skip
    report = verify(state, root)
    assert not report.ok
    (d,) = report.diffs
    assert d.missing == ["00000001"]
    assert d.differs == ["00000003"]
    assert d.extra == ["ffffffff"]
    assert d.doubled == ["00000005"]
    assert "1 missing from the mirror (00000001)" in report.render()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.anyio
async def test_restore_rebuilds_transcripts_registry_index_and_message_ids(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    bk = tmp_path / "bk"
    cfg = {**PER_PEER, "sessions": {"backup": {"path": str(bk)}}}
    acked: list[dict[str, Any]] = []
    async with running(state, cfg) as (_store, pipeline, mirror):
        for i in range(8):
            acked.append(await call(pipeline, "ingest", msg(str(i % 3), f"m{i}", f"id{i}")))
        acked.append(await call(pipeline, "ingest", msg("0", "/new again", "id-new")))
        await pipeline.archives_settled()
        await settled(mirror)
    new = tmp_path / "new"
    report = restore(bk, new, workspace=lambda a: "/w", now_ms=time.time_ns() // 1_000_000)
    assert (report.active, report.archived) == (3, 1)
    assert verify(new, bk).ok
    folder = new / "agents" / "main" / "sessions"
    for p in (state / "agents" / "main" / "sessions").glob("*.jsonl"):
        assert sha(folder / p.name) == sha(p)  # byte for byte
    reg = orjson.loads((folder / "sessions.json").read_bytes())
    old = orjson.loads((state / "agents" / "main" / "sessions" / "sessions.json").read_bytes())
    assert {k: v["sessionId"] for k, v in reg.items()} == {
        k: v["sessionId"] for k, v in old.items()
    }
    (rec,) = [orjson.loads(x) for x in (folder / "archive" / "index.jsonl").read_bytes().split()]
    assert rec["reason"] == "new" and rec["successor"] == acked[-1]["sessionId"]
    # Everything acknowledged is back, once.
    got = transcript_ids(new)
    for a in acked:
        assert got[a["sessionId"]].count(a["entryId"]) == 1
    # A retried message id is recognised after the restore.
    async with running(new, {**PER_PEER, "sessions": {"backup": {"path": str(bk)}}}) as (
        _s,
        pipeline,
        mirror,
    ):
        again = await call(pipeline, "ingest", msg("1", "m1", "id1"))
        assert again["duplicate"] and again["entryId"] == acked[1]["entryId"]
        await settled(mirror)
    assert verify(new, bk).ok


def test_restore_never_merges_into_a_folder_with_sessions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    t = state / "agents" / "main" / "sessions" / "s1.jsonl"
    write_transcript(t, 2)
    catch_up(tmp_path / "bk", [job(t)])
    with pytest.raises(RestoreError, match="already holds sessions"):
        restore(tmp_path / "bk", state, workspace=lambda a: "/w")
    with pytest.raises(RestoreError, match="not a sessiond backup"):
        restore(tmp_path / "nothing", tmp_path / "new", workspace=lambda a: "/w")


def test_history_reads_a_compressed_archive_like_the_plain_one(tmp_path: Path) -> None:
    import gzip

    folder = tmp_path / "agents" / "main" / "sessions"
    plain = folder / "archive" / "s1.jsonl"
    write_transcript(plain, 30)
    want, cur, pages = [], None, 0
    while True:
        page, cur, _ = read_history(tmp_path, "agents/main/sessions/s1.jsonl", "s1", cur, 7, True)
        want += page
        pages += 1
        if cur is None:
            break
    gz = plain.with_name("s1.jsonl.gz")
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    plain.rename(tmp_path / "moved-away.jsonl")
    got, cur = [], None
    while True:
        page, cur, _ = read_history(tmp_path, "agents/main/sessions/s1.jsonl", "s1", cur, 7, True)
        got += page
        if cur is None:
            break
    assert got == want and len(got) == 30 and pages == 5


@pytest.mark.anyio
async def test_the_mirror_workers_log_lines_reach_the_daemons_log(tmp_path: Path) -> None:
    """anyio starts its worker with stderr on a pipe nobody reads: the mirror worker's lines
    were lost, and one that wrote more than the pipe holds (64 KiB) blocked for ever with the
    mirror's lock held. Jobs with ids that cannot name a mirror folder make the worker log an
    error each (about 300 bytes): 1,500 of them are far more than a pipe holds."""
    state = tmp_path / "state"
    bad = [f"../bad-id-{i:04d}-{'x' * 200}" for i in range(1500)]
    jobs = [Job(sid, "main", None, None, (), None, None) for sid in bad]
    out = tmp_path / "daemon.log"
    try:
        with out.open("w", buffering=1) as stream:
            logs.configure("info", "json", stream=stream)
            async with running(state) as (_store, _pipeline, mirror):
                with anyio.fail_after(60):  # blocked for ever before the fix
                    assert await mirror._round(jobs) is True
    finally:
        structlog.reset_defaults()
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    relayed = [e for e in lines if e["event"] == "backup.bad_session_id"]
    # At most MAX_EVENTS lines of one round come back; the rest are counted, not dropped unseen.
    assert [e["sessionId"] for e in relayed] == bad[: worker_log.MAX_EVENTS]
    assert all(e["level"] == "error" and e["process"] == "mirror-worker" for e in relayed)
    [left_out] = [e for e in lines if e["event"] == "worker.lines_left_out"]
    assert left_out["count"] == len(bad) - worker_log.MAX_EVENTS

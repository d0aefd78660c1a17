"""The retention sweep (SPEC 5): old archives and finished backups become verified `.gz` files,
history keeps reading them, a crash at any step leaves a complete copy, and nothing is deleted."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from inprocess import make_pipeline

from daemon import retention
from daemon.api import Api, read_history
from daemon.backup import Mirror
from daemon.cli import main
from daemon.config import Config
from daemon.core.protocol import parse_history, parse_ingest
from daemon.lock import StateLock
from daemon.pipeline import Pipeline
from daemon.retention import ArchiveItem, Retention, VerifyFailed, plan
from daemon.scheduler import RETENTION, Scheduler
from daemon.store import archive
from daemon.store import backup as files
from daemon.store.backup import Job, catch_up, read_records
from daemon.store.store import Store
from daemon.verify import verify

DAY = 86_400_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@asynccontextmanager
async def running(
    state: Path, settings: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Store, Pipeline, Mirror]]:
    cfg = Config.model_validate(settings or {})
    store = Store(state, dedup_max=1000, dedup_window_ms=DAY)
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


async def ingest(p: Pipeline, peer: str, text: str) -> dict[str, Any]:
    done = anyio.Event()
    box: list[Any] = []

    def reply(o: Any) -> None:
        box.append(o)
        done.set()

    w = p.ingest(
        parse_ingest({"channel": "t", "chatType": "direct", "peer": peer, "text": text}), reply
    )
    if w is not None:
        await w
    await done.wait()
    assert isinstance(box[0], dict), box[0]
    return box[0]


async def mirrored(mirror: Mirror) -> None:
    deadline = time.monotonic() + 5
    while mirror.status()["lagSessions"]:
        assert time.monotonic() < deadline
        await anyio.sleep(0.02)


async def make_archives(
    state: Path, n: int = 3, settings: dict[str, Any] | None = None
) -> list[str]:
    """`n` archived sessions of one key (each ended by /reset), and the active one after them."""
    ids = []
    async with running(state, settings) as (_store, pipeline, mirror):
        for i in range(n):
            ids.append((await ingest(pipeline, "1", f"session {i} " + "x" * 300))["sessionId"])
            await ingest(pipeline, "1", "/reset")
        await pipeline.archives_settled()
        await mirrored(mirror)
    return ids


def sessions_folder(state: Path) -> Path:
    return state / "agents" / "main" / "sessions"


def latest(state: Path) -> dict[str, archive.ArchiveRecord]:
    return {r.sessionId: r for r in archive.read_index(sessions_folder(state))}


def age(state: Path, sid: str, days: int) -> None:
    """Make an archive look `days` old (an index line written later wins)."""
    rec = latest(state)[sid]
    archive.append_index(
        sessions_folder(state), [replace(rec, archivedAt=rec.archivedAt - days * DAY)]
    )


def now() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_only_archives_older_than_compress_after_days_are_compressed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old, young, _ = await make_archives(state)
    age(state, old, 31)
    age(state, young, 29)
    p = plan(state, None, compress_after_days=30, retention_days=30, now_ms=now(), active=set())
    assert [a.record.sessionId for a in p.archives] == [old]
    before = sha(sessions_folder(state) / "archive" / f"{old}.jsonl")
    result = retention.execute(p, None)
    assert (result.archives, result.failed) == (1, [])
    arch = sessions_folder(state) / "archive"
    assert not (arch / f"{old}.jsonl").exists() and (arch / f"{young}.jsonl").exists()
    gz = arch / f"{old}.jsonl.gz"
    assert hashlib.sha256(gzip.decompress(gz.read_bytes())).hexdigest() == before
    rec = latest(state)[old]
    assert rec.file == gz.name and rec.sha256 == before  # the index names the .gz now
    assert archive.transcript_stats(gz).sha256 == before
    assert not plan(
        state, None, compress_after_days=30, retention_days=30, now_ms=now(), active=set()
    ).archives


@pytest.mark.anyio
async def test_history_and_previous_sessions_read_compressed_archives(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ids = await make_archives(state, 2)
    rel = f"agents/main/sessions/{ids[0]}.jsonl"
    plain = read_history(state, rel, ids[0], None, 100, True)
    retention.execute(
        plan(state, None, compress_after_days=0, retention_days=0, now_ms=now(), active=set()), None
    )
    assert read_history(state, rel, ids[0], None, 100, True) == plain
    async with running(state) as (store, pipeline, _mirror):
        api = Api(store, pipeline, state / "s.sock")
        assert store.archived_by_id[ids[0]].rel_path.endswith(".jsonl.gz")
        key = store.archived_by_id[ids[0]].session_key
        res = await api.sessions_history(parse_history({"sessionKey": key, "previous": 2}))
        assert res["sessionId"] == ids[0]
        assert res["entries"] == plain[0]


@pytest.mark.anyio
async def test_the_scheduled_job_compresses_and_the_daemon_reads_the_gz_at_once(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    cfg = {"retention": {"compressAfterDays": 0}, "sessions": {"backup": {"retention_days": 0}}}
    ids = await make_archives(state, 2, cfg)
    async with running(state, cfg) as (store, pipeline, mirror):
        await mirrored(mirror)
        sched = Scheduler(pipeline, state, Retention(pipeline, mirror))
        info = await sched.run_job(RETENTION)
        assert info["archivesCompressed"] == 2 and info["backupsCompressed"] == 2
        assert info["failed"] == []
        for sid in ids:
            assert store.archived_by_id[sid].rel_path.endswith(".gz")
            rel = store.archived_by_id[sid].rel_path
            entries, _, _ = await anyio.to_thread.run_sync(
                read_history, state, rel, sid, None, 10, True
            )
            assert entries
        assert sched.last_runs[RETENTION] > 0
        # The active session keeps being mirrored: its backup is never compressed.
        active = next(iter(store.by_id))
        assert files.live_path(state / "backup", active).exists()
        await ingest(pipeline, "1", "still here")
        await mirrored(mirror)
    assert verify(state, state / "backup").ok
    for sid in ids:
        segs = files.compressed_segments(state / "backup", sid)
        assert [p.name for p in segs] == ["history.jsonl.gz"]
        assert not files.live_path(state / "backup", sid).exists()
        # No empty folder is left behind: what stays is the session's state record.
        assert sorted(p.name for p in (state / "backup" / sid).iterdir()) == ["state.json"]


def test_a_compressed_copy_that_does_not_verify_leaves_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "state" / "agents" / "main" / "sessions"
    plain = folder / "archive" / "s.jsonl"
    plain.parent.mkdir(parents=True)
    plain.write_bytes(b'{"type":"session","id":"s"}\n' * 50)
    rec = archive.index_orphan(plain, "main", 0)
    real = retention.sha256_file

    def corrupted(path: Path, *, gz: bool = False) -> tuple[str, int]:
        digest, size = real(path, gz=gz)
        return ("0" * 64, size) if gz else (digest, size)

    monkeypatch.setattr(retention, "sha256_file", corrupted)
    with pytest.raises(VerifyFailed):
        retention.compress_archive(ArchiveItem(folder, rec))
    assert plain.exists() and sorted(os.listdir(plain.parent)) == ["index.jsonl", "s.jsonl"]
    assert latest(tmp_path / "state")["s"].file == "s.jsonl"


@pytest.mark.anyio
async def test_a_crash_at_any_step_of_a_compression_is_finished_by_the_next_sweep(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    a, b, c = await make_archives(state)
    arch = sessions_folder(state) / "archive"
    hashes = {sid: sha(arch / f"{sid}.jsonl") for sid in (a, b, c)}
    # a: the temporary file was written when the sweep died
    (arch / f".{a}.jsonl.gz.tmp-999999").write_bytes(b"half")
    # b: the index already names the .gz, which was never renamed into place
    rec = latest(state)[b]
    archive.append_index(sessions_folder(state), [replace(rec, file=f"{b}.jsonl.gz")])
    rel = f"agents/main/sessions/archive/{b}.jsonl.gz"
    assert read_history(state, rel, b, None, 5, True)[0]  # readers fall back to the plain file
    # c: the .gz is in place and indexed, the original not yet removed
    (arch / f"{c}.jsonl.gz").write_bytes(gzip.compress((arch / f"{c}.jsonl").read_bytes()))
    archive.append_index(sessions_folder(state), [replace(latest(state)[c], file=f"{c}.jsonl.gz")])
    p = plan(state, None, compress_after_days=365, retention_days=365, now_ms=now(), active=set())
    assert sorted(x.record.sessionId for x in p.archives) == sorted([b, c])
    assert [x.finish for x in p.archives if x.record.sessionId == c] == [True]
    assert [t.name for t in p.stale_temps] == [f".{a}.jsonl.gz.tmp-999999"]
    assert retention.execute(p, None).failed == []
    assert sorted(os.listdir(arch)) == sorted(
        ["index.jsonl", f"{a}.jsonl", f"{b}.jsonl.gz", f"{c}.jsonl.gz"]
    )
    for sid in (b, c):
        assert (
            hashlib.sha256(gzip.decompress((arch / f"{sid}.jsonl.gz").read_bytes())).hexdigest()
            == hashes[sid]
        )


def test_a_sweep_leaves_no_empty_mirror_folders_and_never_removes_a_file(
    tmp_path: Path,
) -> None:
    from test_backup import write_transcript  # a transcript of n numbered messages

    root = tmp_path / "bk"
    jobs = []
    for sid in ("s1", "s2", "s3"):
        t = tmp_path / "t" / f"{sid}.jsonl"
        write_transcript(t, 3)
        jobs.append(Job(sid, "main", "k", None, (t,), None, None))
    catch_up(root, jobs)
    retention.compress_backup(root, retention.BackupItem("s1", files.live_path(root, "s1"), 0))
    assert not (root / "s1").exists()  # compressing took its folder along
    assert files.last_record(root, "s1") is not None
    # As an older sweep left them: s2's folder emptied; s3's emptied but something put in it.
    for sid in ("s2", "s3"):
        retention.compress_backup(root, retention.BackupItem(sid, files.live_path(root, sid), 0))
        (root / sid).mkdir()
    (root / "s3" / "notes.txt").write_text("an operator's file\n")
    (root / "s4").mkdir()  # empty, but no compressed mirror: not a folder the sweep emptied
    retention.execute(retention.Plan(), root)
    assert not (root / "s2").exists()
    assert (root / "s3" / "notes.txt").read_text() == "an operator's file\n"
    assert (root / "s4").is_dir()
    assert all(files.compressed_segments(root, sid) for sid in ("s1", "s2", "s3"))


def test_a_mirror_keeps_growing_after_its_first_part_was_compressed(tmp_path: Path) -> None:
    from test_backup import write_transcript  # a transcript of n numbered messages

    t = tmp_path / "t" / "s1.jsonl"
    root = tmp_path / "bk"
    job = Job("s1", "main", "k", None, (t,), None, None)
    lines = write_transcript(t, 3)
    catch_up(root, [job])
    item = retention.BackupItem("s1", files.live_path(root, "s1"), 0)
    retention.compress_backup(root, item)
    assert files.last_record(root, "s1") is not None  # found in the .gz
    lines += write_transcript(t, 2, 3, header=False)
    assert catch_up(root, [job]).records == 2
    retention.compress_backup(root, item)
    assert [p.name for p in files.compressed_segments(root, "s1")] == [
        "history.jsonl.gz",
        "history.1.jsonl.gz",
    ]
    assert [files.line_of(r) for r in read_records(root, "s1")] == lines


@pytest.mark.anyio
async def test_the_command_refuses_while_a_daemon_holds_the_lock_and_dry_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "c.json5"
    cfg.write_text("{retention: {compressAfterDays: 0}, sessions: {backup: {retention_days: 0}}}")
    await make_archives(state, 2)
    args = ["retention", "--state-dir", str(state), "--config", str(cfg)]

    def tree() -> dict[str, str]:
        return {
            str(p): sha(p) for p in state.rglob("*") if p.is_file() and p.name != "sessiond.lock"
        }

    before = tree()
    lock = StateLock(state)
    lock.acquire()
    try:
        assert main(args) == 1
        assert "holds the lock" in capsys.readouterr().err
        assert main([*args, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "would compress" in out and "nothing was changed" in out
    finally:
        lock.release()
    assert tree() == before
    assert main([*args, "--json"]) == 0
    res = orjson.loads(capsys.readouterr().out)
    assert res["archivesCompressed"] == 2 and res["backupsCompressed"] == 2
    assert verify(state, state / "backup").ok

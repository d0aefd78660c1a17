"""`sessiond doctor [--repair]`: every kind of damage is reported with what would be done, nothing
changes without --repair, and the repairs lose no byte (they move, adopt and append)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_retention import make_archives, running

from daemon.cli import main
from daemon.doctor import run_doctor
from daemon.lock import StateLock
from daemon.store import archive
from daemon.store.store import Store
from daemon.store.transcript import custom_line, header_line, message_line
from daemon.verify import verify


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def transcript(sid: str, key: str, n: int, *, closed: str | None = None) -> bytes:
    lines = [header_line(sid, key, 1_795_000_000_000, "/w")]
    parent = None
    for i in range(n):
        eid = f"{i + 1:08x}"
        msg = {"role": "user", "content": [{"type": "text", "text": f"m{i}"}], "timestamp": i}
        lines.append(message_line(eid, parent, "2026-11-22T09:15:00.209Z", msg))
        parent = eid
    if closed is not None:
        data = {"reason": closed, "successor": None}
        lines.append(
            custom_line(f"{n + 1:08x}", parent, "2026-11-22T09:16:00.000Z", archive.CLOSED, data)
        )
    return b"".join(line + b"\n" for line in lines)


def by_check(report: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for f in report.findings:
        out.setdefault(f.check, []).append(f)
    return out


async def damaged_folder(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A state folder with a torn tail, an orphan transcript, a registry entry without a file,
    a closed transcript that never reached archive/ and an archived file without its index line."""
    state = tmp_path / "state"
    await make_archives(state, 1, {"session": {"dmScope": "per-channel-peer"}})
    async with running(state, {"session": {"dmScope": "per-channel-peer"}}) as (_store, p, m):
        from test_retention import ingest, mirrored

        torn = await ingest(p, "2", "this session gets a torn tail")
        lost = await ingest(p, "3", "this transcript gets lost")
        await ingest(p, "3", "and its second message")
        await mirrored(m)
    folder = state / "agents" / "main" / "sessions"
    info: dict[str, Any] = {}
    # 1. a crash in the middle of a write
    t = folder / f"{torn['sessionId']}.jsonl"
    t.write_bytes(t.read_bytes() + b'{"type":"message","id":"0000')
    info["torn"] = (t, t.read_bytes())
    # 2. a transcript nobody's registry names
    orphan = folder / "0b0b0b0b-0000-4000-8000-000000000001.jsonl"
    orphan.write_bytes(transcript(orphan.stem, "agent:main:t:direct:2", 3))
    os.chmod(orphan, 0o600)
    info["orphan"] = (orphan, sha(orphan))
    # 3. a registry entry whose transcript is gone (its mirror is not)
    gone = folder / f"{lost['sessionId']}.jsonl"
    info["lost"] = (gone, sha(gone))
    gone.rename(tmp_path / "lost.jsonl")
    # 4. a session closed by a reset whose move into archive/ never happened
    closed = folder / "0c0c0c0c-0000-4000-8000-000000000002.jsonl"
    closed.write_bytes(transcript(closed.stem, "agent:main:t:direct:9", 2, closed="idle"))
    os.chmod(closed, 0o600)
    info["closed"] = (closed, sha(closed))
    # 5. an archived file whose index line was never written
    unindexed = folder / "archive" / "0d0d0d0d-0000-4000-8000-000000000003.jsonl"
    unindexed.write_bytes(transcript(unindexed.stem, "agent:main:t:direct:8", 2, closed="daily"))
    os.chmod(unindexed, 0o644)  # and too open
    info["unindexed"] = (unindexed, sha(unindexed))
    return state, info


@pytest.mark.anyio
async def test_doctor_reports_each_problem_and_changes_nothing_without_repair(
    tmp_path: Path,
) -> None:
    state, info = await damaged_folder(tmp_path)
    before = tree(state)
    report = run_doctor(state, None, repair=False)
    assert not report.ok
    found = by_check(report)
    torn_path = info["torn"][0]
    (torn,) = [f for f in found["torn-tail"] if f.level == "error"]
    assert torn_path.name in torn.message and "torn-" in torn.action
    (orphan,) = [f for f in found["orphan"] if f.level == "warning"]
    assert info["orphan"][0].name in orphan.message and "reason orphan" in orphan.action
    (lost,) = [f for f in found["registry"] if f.level == "error"]
    assert info["lost"][0].name in lost.message and "backup mirror" in lost.action
    moves = {f.message.split()[0]: f for f in found["half-done-move"] if f.level == "warning"}
    assert f"agents/main/sessions/{info['closed'][0].name}" in moves
    assert f"agents/main/sessions/archive/{info['unindexed'][0].name}" in moves
    assert any(f.level == "warning" for f in found["permissions"])
    assert found["fts5"][0].level in ("ok", "warning")
    assert tree(state) == before
    text = report.render()
    assert "would: " in text and "doctor --repair" in text


@pytest.mark.anyio
async def test_doctor_repair_loses_no_byte_and_leaves_a_healthy_folder(tmp_path: Path) -> None:
    state, info = await damaged_folder(tmp_path)
    folder = state / "agents" / "main" / "sessions"
    report = run_doctor(state, None, repair=True)
    assert report.ok, report.render()
    assert all(f.outcome == "repaired" for f in report.findings if f.fix is not None)
    # the torn fragment is beside the transcript, which keeps every complete line
    t, damaged = info["torn"]
    (side,) = folder.glob(f"{t.name}.torn-*")
    assert t.read_bytes() + side.read_bytes() == damaged
    # the orphan and the closed transcript are in archive/, byte for byte, with index lines
    index = {r.sessionId: r for r in archive.read_index(folder)}
    for name, reason in (("orphan", "orphan"), ("closed", "idle"), ("unindexed", "daily")):
        path, digest = info[name]
        moved = folder / "archive" / path.name
        assert sha(moved) == digest and not (folder / path.name).exists()
        assert index[path.stem].reason == reason and index[path.stem].sha256 == digest
    # the lost transcript is back from the mirror
    gone, digest = info["lost"]
    assert sha(gone) == digest
    assert (
        oct(os.stat(info["unindexed"][0].parent / info["unindexed"][0].name).st_mode & 0o777)
        == "0o600"
    )
    # ... and everything is healthy: doctor finds nothing, the mirror agrees, the store opens
    assert run_doctor(state, None, repair=False).ok
    assert verify(state, state / "backup").ok
    store = Store(state, dedup_max=10, dedup_window_ms=1000)
    counts = store.open()
    store.close()
    assert counts["tornTails"] == 0 and counts["archivesIndexed"] == 0
    assert counts["archivesCompleted"] == 0


@pytest.mark.anyio
async def test_repair_is_refused_while_a_daemon_holds_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _info = await damaged_folder(tmp_path)
    cfg = tmp_path / "c.json5"
    cfg.write_text("{}")
    before = tree(state)
    lock = StateLock(state)
    lock.acquire()
    try:
        args = ["doctor", "--state-dir", str(state), "--config", str(cfg)]
        assert main([*args, "--repair"]) == 1
        assert "holds the lock" in capsys.readouterr().err
        assert main([*args, "--json"]) == 1
        out = orjson.loads(capsys.readouterr().out)
        assert out["ok"] is False and not out["repair"]
        lock_finding = next(f for f in out["findings"] if f["check"] == "lock")
        assert "a daemon is running" in lock_finding["message"]
    finally:
        lock.release()
    after = tree(state)
    after.pop("sessiond.lock")
    before.pop("sessiond.lock", None)
    assert after == before


@pytest.mark.anyio
async def test_a_registry_that_names_archived_sessions_and_a_missing_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (archived,) = await make_archives(state, 1)
    folder = state / "agents" / "main" / "sessions"
    reg = orjson.loads((folder / "sessions.json").read_bytes())
    reg["agent:main:stale"] = {"sessionId": archived, "sessionFile": f"{archived}.jsonl"}
    (folder / "sessions.json").write_bytes(orjson.dumps(reg))
    shutil.copy(folder / "sessions.json", tmp_path / "copy.json")
    report = run_doctor(state, None, repair=True)
    assert report.ok, report.render()
    assert "agent:main:stale" not in orjson.loads((folder / "sessions.json").read_bytes())
    assert not (folder / f"{archived}.jsonl").exists()  # not begun again beside its archive


def test_an_invalid_config_and_a_missing_registry_are_reported(tmp_path: Path) -> None:
    state = tmp_path / "state"
    folder = state / "agents" / "main" / "sessions"
    folder.mkdir(parents=True)
    (folder / "s1.jsonl").write_bytes(transcript("s1", "agent:main:main", 2))
    os.chmod(folder / "s1.jsonl", 0o600)
    for p in (state, state / "agents", state / "agents" / "main", folder):
        os.chmod(p, 0o700)
    cfg = tmp_path / "c.json5"
    cfg.write_text("{session: {reset: {atHour: 25}}}")
    report = run_doctor(state, cfg, repair=False)
    found = by_check(report)
    assert found["config"][0].level == "error" and "atHour" in found["config"][0].message
    (reg,) = [f for f in found["registry"] if f.level != "ok"]
    assert "is missing" in reg.message and "rebuild" in reg.action
    assert not [f for f in found["orphan"] if f.level != "ok"]  # the rebuild will name s1
    cfg.write_text("{}")
    assert run_doctor(state, cfg, repair=True).ok
    doc = orjson.loads((folder / "sessions.json").read_bytes())
    assert doc["agent:main:main"]["sessionId"] == "s1"

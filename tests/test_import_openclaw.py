"""`sessiond import-openclaw`: both OpenClaw eras come across whole, and the source never changes.

Every test imports from a temporary copy of a fixture folder (tests/fixtures/, written by OpenClaw
itself) and checks the result against that folder's manifest.json: every session, message and
archive accounted for. The end-to-end test then starts the real daemon on the imported folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.cli import main
from daemon.client import Client, ConnectError
from daemon.importers.events import (
    EventMeta,
    iso_to_ms,
    parse_archive_name,
    split_windows,
    suffix_time_ms,
)
from daemon.importers.openclaw import lineage_index
from daemon.importers.plan import Progress
from daemon.lock import StateLock
from daemon.store.archive import read_index

FIXTURES = Path(__file__).parent / "fixtures"
JSONL_ERA = "openclaw-2026.6"
SQLITE_ERA = "openclaw-2026.9"
CONFIG = '{session: {dmScope: "per-channel-peer", reset: {mode: "none"}}}\n'


# ---------------------------------------------------------------------------------------------
# Helpers


def manifest(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((FIXTURES / name / "manifest.json").read_bytes())
    return data


def source_copy(tmp_path: Path, name: str) -> Path:
    """A private copy of a fixture (mtimes kept), so a faulty import cannot damage the repo."""
    dest = tmp_path / "src" / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


def snapshot(folder: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple[str, int, int]]:
    """Every file and folder below `folder`: sha256 (files), mtime_ns and mode."""
    out: dict[str, tuple[str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if rel in ignore:
                continue
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            out[rel] = (digest, st.st_mtime_ns, st.st_mode)
    return out


def run_import(
    capsys: pytest.CaptureFixture[str], src: Path, state: Path, *extra: str
) -> tuple[int, dict[str, Any]]:
    """Run the real command line in-process with --json; return exit code and report."""
    code = main(["import-openclaw", str(src), "--state-dir", str(state), "--json", *extra])
    out = capsys.readouterr().out
    report: dict[str, Any] = orjson.loads(out) if out.strip() else {}
    return code, report


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def transcripts(state: Path, agent: str) -> Iterator[Path]:
    folder = state / "agents" / agent / "sessions"
    yield from sorted(folder.glob("*.jsonl"))
    yield from sorted(p for p in (folder / "archive").glob("*.jsonl") if p.name != "index.jsonl")


def message_ids_by_key(state: Path, agent: str) -> dict[str | None, Counter[tuple[str, str]]]:
    """(entryId, role) of every message in the agent's transcripts, by the key they belong to."""
    folder = state / "agents" / agent / "sessions"
    key_of: dict[str, str | None] = {}
    registry = orjson.loads((folder / "sessions.json").read_bytes())
    for key, entry in registry.items():
        key_of[Path(entry["sessionFile"]).name] = key
    for rec in read_index(folder):
        key_of[rec.file] = rec.sessionKey
    out: dict[str | None, Counter[tuple[str, str]]] = {}
    for path in transcripts(state, agent):
        key = key_of[path.name]
        for obj in lines_of(path):
            if obj.get("type") == "message":
                out.setdefault(key, Counter())[(obj["id"], obj["message"]["role"])] += 1
    return out


def expected_ids_by_key(
    m: dict[str, Any], agent: str, keyless: frozenset[str] = frozenset()
) -> dict[str | None, Counter[tuple[str, str]]]:
    """The manifest's messages by key; sessions in `keyless` are expected under no key."""
    out: dict[str | None, Counter[tuple[str, str]]] = {}
    for s in m["sessions"]:
        if s["agentId"] == agent:
            key = None if s["sessionId"] in keyless else s["sessionKey"]
            c = out.setdefault(key, Counter())
            for entry_id, role, _text in s["messages"]:
                c[(entry_id, role)] += 1
    return out


class Daemon:
    """The real daemon on a state folder, started as a process and stopped with SIGTERM."""

    def __init__(self, state: Path, config: Path) -> None:
        self.state = state
        self.socket = state / "sessiond.sock"
        self.log = open(state.parent / "daemon.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daemon",
                "run",
                "--state-dir",
                str(state),
                "--config",
                str(config),
                "--log-format",
                "json",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self.log.close()
                log = (state.parent / "daemon.log").read_text()
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{log}")
            try:
                with Client(self.socket, timeout=5) as c:
                    c.call("status")
                return
            except (ConnectError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("daemon did not start listening in 30 s") from None
                time.sleep(0.05)

    def client(self) -> Client:
        return Client(self.socket, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# The pure parts


def test_archive_names_give_reason_time_and_the_active_name() -> None:
    an = parse_archive_name(
        "6120f99d-1354-4381-bf8d-f995d25a32b4.jsonl.reset.2026-11-17T07-45-00.013Z"
    )
    assert an is not None
    assert (an.base, an.reason, an.compressed) == (
        "6120f99d-1354-4381-bf8d-f995d25a32b4.jsonl",
        "reset",
        False,
    )
    assert an.archived_at == iso_to_ms("2026-11-17T07:45:00.013Z") == 1794901500013
    zst = parse_archive_name(
        "d08cb61e.jsonl.deleted.2026-11-22T00-58-20.704Z.00ee2d9db1834c5589f8282ddd606eed.zst"
    )
    assert zst is not None and zst.compressed and zst.reason == "deleted"
    assert zst.generation == "00ee2d9db1834c5589f8282ddd606eed"
    topic = parse_archive_name("abc-topic-42.jsonl.deleted.2026-11-22T00-33-29.552Z")
    assert topic is not None and topic.base == "abc-topic-42.jsonl"
    assert parse_archive_name("abc.jsonl") is None
    assert parse_archive_name("abc.trajectory.jsonl") is None
    assert suffix_time_ms("2026-11-22T00-33-29.552Z") == 1795307609552


def test_reset_markers_end_the_window_they_close() -> None:
    kinds = ["message", "message", "reset", "message", "reset", "message", "message"]
    reasons = [None, None, "idle", None, "reset", None, None]
    events = [EventMeta(i, k, r, None) for i, (k, r) in enumerate(zip(kinds, reasons, strict=True))]
    windows = split_windows(events)
    assert [(w.start, w.stop, w.reason) for w in windows] == [
        (0, 3, "idle"),
        (3, 5, "reset"),
        (5, 7, None),
    ]
    # A reset as the very last event leaves an empty live window, not a lost one.
    tail = split_windows(
        [EventMeta(0, "message", None, None), EventMeta(1, "reset", "reset", None)]
    )
    assert [(w.start, w.stop) for w in tail] == [(0, 2), (2, 2)]


def test_usage_families_give_archived_sessions_their_key_and_neighbours() -> None:
    registry = {
        "agent:main:main": {"sessionId": "b", "usageFamilySessionIds": ["a", "b"]},
        "agent:main:x": {
            "sessionId": "d",
            "compactionCheckpoints": [{"sessionKey": "agent:main:x", "sessionId": "c"}],
        },
    }
    idx = lineage_index(registry)
    assert idx["a"].key == "agent:main:main" and idx["a"].successor == "b"
    assert idx["b"].predecessor == "a"
    assert idx["c"].key == "agent:main:x"


# ---------------------------------------------------------------------------------------------
# JSONL era


def test_jsonl_era_is_imported_whole_and_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    before = snapshot(src)
    state = tmp_path / "state"
    m = manifest(JSONL_ERA)

    code, report = run_import(capsys, src, state)

    assert code == 0, report["notImported"]
    assert snapshot(src) == before, "the source folder changed"
    totals = m["totals"]
    assert report["imported"] == {
        "sessions": totals["active"],
        "archives": totals["archived"],
        "missingTranscripts": totals["missingTranscript"],
        "messages": totals["messages"],
        "memoryFiles": sum(1 for f in m["workspaceFiles"] if f["memory"]),
    }
    for s in m["sessions"]:
        folder = state / "agents" / s["agentId"] / "sessions"
        if s["status"] == "active":
            path = folder / s["fileName"]
            registry = orjson.loads((folder / "sessions.json").read_bytes())
            entry = registry[s["sessionKey"]]
            assert entry["sessionId"] == s["sessionId"]
            assert Path(entry["sessionFile"]) == path
            for field in ("updatedAt", "sessionStartedAt", "chatType", "totalTokens"):
                assert entry[field] == s["entry"][field]
        else:
            (rec,) = [r for r in read_index(folder) if r.sessionId == s["sessionId"]]
            assert rec.reason == s["archiveReason"]
            assert rec.archivedAt == iso_to_ms(s["archivedAt"])
            assert rec.messages == s["messageCount"]
            assert rec.sha256 == s["sha256"]
            assert rec.sessionKey in (s["sessionKey"], None)
            if s["archiveReason"] == "reset":  # recovered from usageFamilySessionIds
                assert rec.sessionKey == s["sessionKey"]
                assert rec.successor is not None
            path = folder / "archive" / rec.file
        assert sha(path) == s["sha256"], f"{path.name} is not byte-identical"
        assert path.stat().st_mode & 0o777 == 0o600
    # Nothing in the folder names the key of the deleted session (the manifest knows it).
    deleted = frozenset(
        s["sessionId"] for s in m["sessions"] if s.get("archiveReason") == "deleted"
    )
    for agent in ("main", "work"):
        assert message_ids_by_key(state, agent) == expected_ids_by_key(m, agent, deleted)
    for f in m["workspaceFiles"]:
        if f["memory"]:
            assert sha(state / f["path"]) == f["sha256"]
    for dirpath, _dirs, _files in os.walk(state):
        assert Path(dirpath).stat().st_mode & 0o777 == 0o700, dirpath


def test_orphans_are_archived_and_side_files_are_not_transcripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    sessions = src / "agents" / "main" / "sessions"
    orphan_id = "0c0c0c0c-1111-4222-8333-444444444444"
    orphan = sessions / f"{orphan_id}.jsonl"
    orphan.write_bytes(
        b'{"type":"session","version":3,"id":"%s","timestamp":"2026-11-16T10:00:00.000Z",'
        b'"cwd":"/x"}\n{"type":"message","id":"0000000a","parentId":null,'
        b'"timestamp":"2026-11-16T10:00:01.000Z","message":{"role":"user","content":"hi"}}\n'
        % orphan_id.encode()
    )
    (sessions / "70de30ac-307c-4f24-8026-fe134613daac.trajectory.jsonl").write_bytes(b'{"t":1}\n')
    (sessions / "skills-prompts").mkdir()
    (sessions / "skills-prompts" / "abc.txt").write_text("prompt")
    state = tmp_path / "state"

    code, report = run_import(capsys, src, state)

    assert code == 0, report["notImported"]
    folder = state / "agents" / "main" / "sessions"
    (rec,) = [r for r in read_index(folder) if r.sessionId == orphan_id]
    assert rec.reason == "orphan" and rec.messages == 1
    assert (folder / "archive" / rec.file).read_bytes() == orphan.read_bytes()
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert (
        "trajectory"
        in skipped["agents/main/sessions/70de30ac-307c-4f24-8026-fe134613daac.trajectory.jsonl"]
    )
    assert "agents/main/sessions/skills-prompts" in skipped
    assert not list(folder.rglob("*trajectory*"))
    assert report["imported"]["archives"] == manifest(JSONL_ERA)["totals"]["archived"] + 1


def test_agent_option_imports_only_that_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    state = tmp_path / "state"
    code, report = run_import(capsys, src, state, "--agent", "work")
    assert code == 0
    assert report["agents"] == ["work"]
    assert sorted(p.name for p in (state / "agents").iterdir()) == ["work"]
    assert report["imported"]["sessions"] == 4
    assert (state / "workspace-work" / "memory" / "2026-11-17.md").is_file()
    assert not (state / "workspace").exists()

    code = main(["import-openclaw", str(src), "--state-dir", str(state), "--agent", "nobody"])
    assert code == 2
    assert "no agent 'nobody'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# SQLite era


def test_sqlite_era_is_rebuilt_with_every_event_and_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, SQLITE_ERA)
    before = snapshot(src)
    state = tmp_path / "state"
    m = manifest(SQLITE_ERA)

    code, report = run_import(capsys, src, state)

    assert code == 0, report["notImported"]
    assert snapshot(src) == before, "the source folder changed (or -wal/-shm files appeared)"
    markers = sum(len(s["resetMarkers"]) for s in m["sessions"])
    assert report["imported"] == {
        "sessions": m["totals"]["activeWindows"],
        "archives": m["totals"]["archived"] + markers,  # each reset closes a window
        "missingTranscripts": 0,
        "messages": m["totals"]["messages"],
        "memoryFiles": 1,
    }
    assert message_ids_by_key(state, "main") == expected_ids_by_key(m, "main")

    folder = state / "agents" / "main" / "sessions"
    registry = orjson.loads((folder / "sessions.json").read_bytes())
    index = read_index(folder)
    db = sqlite3.connect(
        f"file:{src}/agents/main/agent/openclaw-agent.sqlite?immutable=1", uri=True
    )
    for s in m["sessions"]:
        key, sid = s["sessionKey"], s["sessionId"]
        if s["status"] == "archived":
            (rec,) = [r for r in index if r.sessionId == sid]
            assert (rec.reason, rec.sessionKey, rec.messages) == ("deleted", key, s["messageCount"])
            body = (folder / "archive" / rec.file).read_bytes().split(b"\n", 1)[1]
            continue
        assert registry[key]["sessionId"] == sid
        assert registry[key]["lastInteractionAt"] > 0
        # The windows of this key, oldest first, joined: the events exactly as stored.
        chain = [r for r in index if r.sessionKey == key]
        assert [r.reason for r in chain] == [mk["reason"] for mk in s["resetMarkers"]]
        parts = [folder / "archive" / r.file for r in chain] + [folder / f"{sid}.jsonl"]
        successors = [r.sessionId for r in chain[1:]] + [sid]
        assert [r.successor for r in chain] == successors[: len(chain)]
        body = b""
        for p in parts:
            header, rest = p.read_bytes().split(b"\n", 1)
            h = orjson.loads(header)
            assert (h["type"], h["version"], h["sessionKey"]) == ("session", 3, key)
            body += rest
        (first,) = db.execute(
            "SELECT event_json FROM transcript_events WHERE session_id = ? AND seq = 0", (sid,)
        ).fetchone()
        export = first.encode() + b"\n" + body
        assert hashlib.sha256(export).hexdigest() == s["jsonlExportSha256"]
        assert len(body.splitlines()) == s["eventCount"] - 1
    db.close()
    assert sha(state / "workspace" / "memory" / "2026-11-22.md") == next(
        f["sha256"] for f in m["workspaceFiles"] if f["memory"]
    )


def test_a_wal_file_is_read_through_a_private_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenClaw killed mid-run leaves committed events in -wal: they are imported, and the
    source (database and -wal) stays byte-identical, with no -shm appearing beside it."""
    src = source_copy(tmp_path, SQLITE_ERA)
    db_path = src / "agents" / "main" / "agent" / "openclaw-agent.sqlite"
    work = tmp_path / "wal"
    work.mkdir()
    shutil.copy2(db_path, work / db_path.name)
    conn = sqlite3.connect(work / db_path.name)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    # The CHECK on navigation_json needs octet_length(), newer than some systems' SQLite.
    conn.execute("PRAGMA ignore_check_constraints = ON")
    sid = "0be6b7fc-34f2-41d3-904e-fc958ea624da"
    event = (
        b'{"type":"message","id":"wal00001","parentId":"3747d71b-bddb-4135-ad66-cf0263189ab0",'
        b'"timestamp":"2026-11-22T01:00:00.000Z",'
        b'"message":{"role":"user","content":"from the wal"}}'
    )
    with conn:
        conn.execute(
            "INSERT INTO transcript_events (session_id, seq, event_json, created_at) "
            "VALUES (?, 91, ?, 1795309200000)",
            (sid, event.decode()),
        )
    wal = work / (db_path.name + "-wal")
    assert wal.stat().st_size > 0
    shutil.copy2(wal, db_path.with_name(db_path.name + "-wal"))
    conn.close()
    before = snapshot(src)
    state = tmp_path / "state"

    code, report = run_import(capsys, src, state)

    assert code == 0, report["notImported"]
    assert snapshot(src) == before
    assert report["imported"]["messages"] == manifest(SQLITE_ERA)["totals"]["messages"] + 1
    last = (state / "agents" / "main" / "sessions" / f"{sid}.jsonl").read_bytes().splitlines()[-1]
    assert last == event
    assert any("private copy" in n for n in report["notes"])


def test_compressed_events_and_cold_archives_read_back_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events stored as zstd (`event_zstd`) or moved into a cold archive rebuild the very same
    transcript as when they are plain rows."""
    from backports import zstd

    sid = "0be6b7fc-34f2-41d3-904e-fc958ea624da"
    name = f"agents/main/sessions/{sid}.jsonl"
    plain = source_copy(tmp_path / "plain", SQLITE_ERA)
    code, _ = run_import(capsys, plain, tmp_path / "plain-state")
    assert code == 0
    expected = (tmp_path / "plain-state" / name).read_bytes()

    src = source_copy(tmp_path, SQLITE_ERA)
    conn = sqlite3.connect(src / "agents" / "main" / "agent" / "openclaw-agent.sqlite")
    conn.execute("PRAGMA ignore_check_constraints = ON")
    with conn:
        rows = conn.execute(
            "SELECT seq, event_json FROM transcript_events WHERE session_id = ? AND seq <= 40 "
            "ORDER BY seq",
            (sid,),
        ).fetchall()
        blob = zstd.compress("".join(text + "\n" for _seq, text in rows).encode())
        conn.execute(
            "INSERT INTO session_transcript_cold_archives (session_id, generation, archive_name, "
            "archive_sha256, event_count, raw_bytes, archive_bytes, last_seq, archived_at, "
            "storage, archive_blob) VALUES (?, 'g1', 'cold.zst', ?, ?, 0, ?, 40, 0, 'sqlite', ?)",
            (sid, hashlib.sha256(blob).hexdigest(), len(rows), len(blob), blob),
        )
        conn.execute("DELETE FROM transcript_events WHERE session_id = ? AND seq <= 40", (sid,))
        (text,) = conn.execute(
            "SELECT event_json FROM transcript_events WHERE session_id = ? AND seq = 50", (sid,)
        ).fetchone()
        conn.execute(
            "UPDATE transcript_events SET event_json = NULL, event_zstd = ?, event_utf8_bytes = ?,"
            " navigation_json = '{}' WHERE session_id = ? AND seq = 50",
            (zstd.compress(text.encode()), len(text.encode()), sid),
        )
    conn.close()
    state = tmp_path / "state"

    code, report = run_import(capsys, src, state)

    assert code == 0, report["notImported"]
    assert (state / name).read_bytes() == expected


def test_unreadable_parts_are_reported_and_the_rest_is_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without zstd the deleted session cannot be read: it is named in the report (exit 1),
    never skipped silently, and everything else is imported."""
    import daemon.importers.events as events

    def no_zstd(data: bytes) -> bytes:
        raise ValueError("zstd not available (install backports.zstd)")

    monkeypatch.setattr(events, "zstd_decompress", no_zstd)
    for mod in ("daemon.importers.openclaw", "daemon.importers.openclaw_db"):
        monkeypatch.setattr(sys.modules[mod], "zstd_decompress", no_zstd)
    src = source_copy(tmp_path, SQLITE_ERA)
    state = tmp_path / "state"

    code, report = run_import(capsys, src, state)

    assert code == 1
    reasons = [p["reason"] for p in report["notImported"]]
    assert reasons and all("zstd not available" in r for r in reasons)
    assert report["imported"]["sessions"] == 10
    assert report["imported"]["messages"] == manifest(SQLITE_ERA)["totals"]["messages"] - 4


def test_a_registry_row_without_its_transcript_is_kept_as_an_archived_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    sid = "73e5d64d-b910-430c-991f-950974eb6ffc"
    (src / "agents" / "work" / "sessions" / f"{sid}.jsonl").unlink()
    row = orjson.loads((src / "agents/work/sessions/sessions.json").read_bytes())["agent:work:main"]
    state = tmp_path / "state"
    code, report = run_import(capsys, src, state)
    assert code == 0, report["notImported"]
    assert report["notImported"] == []
    (warning,) = report["warnings"]
    assert warning["path"].endswith("sessions.json#agent:work:main")
    assert "missing" in warning["reason"] and "missing-transcript" in warning["reason"]
    assert report["imported"]["missingTranscripts"] == 1
    assert report["imported"]["sessions"] == manifest(JSONL_ERA)["totals"]["active"] - 1
    (rec,) = [r for r in read_index(state / "agents/work/sessions") if r.sessionId == sid]
    assert (rec.reason, rec.sessionKey, rec.messages) == (
        "missing-transcript",
        "agent:work:main",
        0,
    )
    assert rec.registry == row, "every registry field is kept"
    assert rec.startedAt == row["sessionStartedAt"]
    # Exactly once: a second import finds it present.
    code, again = run_import(capsys, src, state)
    assert code == 0 and again["alreadyPresent"]["missingTranscripts"] == 1
    assert len([r for r in read_index(state / "agents/work/sessions") if r.sessionId == sid]) == 1
    # The daemon shows it among the archived sessions.
    config = tmp_path / "config.json5"
    config.write_text(CONFIG)
    daemon = Daemon(state, config)
    try:
        with daemon.client() as c:
            shown = c.call("sessions.archived", {"sessionKey": "agent:work:main"})["sessions"]
            assert [(a["sessionId"], a["reason"]) for a in shown] == [(sid, "missing-transcript")]
            assert shown[0]["registry"] == row
    finally:
        daemon.stop()
    # doctor (after the daemon caught its mirror up) does not take it for a lost archive.
    assert main(["doctor", "--state-dir", str(state)]) == 0, capsys.readouterr().out


def test_an_empty_transcript_is_copied_for_the_daemon_to_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    path = src / "agents" / "work" / "sessions" / "73e5d64d-b910-430c-991f-950974eb6ffc.jsonl"
    path.write_bytes(b"")
    state = tmp_path / "state"
    code, report = run_import(capsys, src, state)
    assert code == 0, report["notImported"]
    assert (state / "agents" / "work" / "sessions" / path.name).read_bytes() == b""


def test_a_folder_that_is_not_openclaw_is_bad_usage(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    state = str(tmp_path / "state")
    for src in (tmp_path / "empty", tmp_path / "missing"):
        proc = subprocess.run(
            [sys.executable, "-m", "daemon", "import-openclaw", str(src), "--state-dir", state],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "OpenClaw folder" in proc.stderr or "not a folder" in proc.stderr
    assert not (tmp_path / "state").exists()
    inside = tmp_path / "src" / JSONL_ERA
    shutil.copytree(FIXTURES / JSONL_ERA, inside)
    assert main(["import-openclaw", str(inside), "--state-dir", str(inside / "state")]) == 2
    assert not (inside / "state").exists()


def test_the_text_report_names_counts_and_what_was_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    code = main(["import-openclaw", str(src), "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert code == 0
    assert "imported: 12 sessions, 4 archives, 286 messages, 3 memory files" in out
    assert "openclaw.json: not session data" in out
    assert "everything readable was accounted for" in out


def test_progress_is_shown_only_on_a_terminal() -> None:
    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    for tty in (True, False):
        stream = Stream(tty)
        p = Progress(stream)
        p.show("reading agent main")
        p.done()
        assert ("reading agent main" in stream.getvalue()) is tty


# ---------------------------------------------------------------------------------------------
# Dry run, re-runs, the lock


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for era in (JSONL_ERA, SQLITE_ERA):
        src = source_copy(tmp_path, era)
        before = snapshot(src)
        state = tmp_path / f"state-{era}"
        code, report = run_import(capsys, src, state, "--dry-run")
        assert code == 0
        assert report["dryRun"] is True
        assert report["imported"]["messages"] == manifest(era)["totals"]["messages"]
        assert not state.exists()
        assert snapshot(src) == before
        assert {t["outcome"] for t in report["transcripts"]} == {"would-import"}
        state.mkdir()
        code, _ = run_import(capsys, src, state, "--dry-run")
        assert code == 0 and not any(state.iterdir())


@pytest.mark.parametrize("era", [JSONL_ERA, SQLITE_ERA])
def test_a_second_import_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], era: str
) -> None:
    src = source_copy(tmp_path, era)
    state = tmp_path / "state"
    code, first = run_import(capsys, src, state)
    assert code == 0
    after_first = snapshot(state, ignore=("sessiond.lock",))

    code, second = run_import(capsys, src, state)

    assert code == 0
    assert snapshot(state, ignore=("sessiond.lock",)) == after_first
    assert second["imported"] == {
        "sessions": 0,
        "archives": 0,
        "missingTranscripts": 0,
        "messages": 0,
        "memoryFiles": 0,
    }
    assert second["alreadyPresent"] == first["imported"]


def test_refuses_while_a_daemon_holds_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    lock = StateLock(state)
    lock.acquire()
    try:
        code = main(["import-openclaw", str(src), "--state-dir", str(state)])
        err = capsys.readouterr().err
        assert code == 1
        assert "holds the lock" in err
        assert sorted(p.name for p in state.iterdir()) == ["sessiond.lock"]
        code, report = run_import(capsys, src, state, "--dry-run")
        assert code == 0 and any("holds the state folder's lock" in n for n in report["notes"])
    finally:
        lock.release()


def test_a_key_that_already_has_a_session_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The target's live session of a key is not displaced: the imported one is archived."""
    src = source_copy(tmp_path, JSONL_ERA)
    state = tmp_path / "state"
    folder = state / "agents" / "main" / "sessions"
    folder.mkdir(parents=True)
    key = "agent:main:telegram:direct:123456789"
    mine = folder / "mine.jsonl"
    mine.write_bytes(b'{"type":"session","version":3,"id":"mine","timestamp":"x","cwd":""}\n')
    (folder / "sessions.json").write_bytes(
        orjson.dumps({key: {"sessionId": "mine", "sessionFile": str(mine)}})
    )

    code, report = run_import(capsys, src, state)

    assert code == 0, report["notImported"]
    registry = orjson.loads((folder / "sessions.json").read_bytes())
    assert registry[key]["sessionId"] == "mine"
    (rec,) = [
        r for r in read_index(folder) if r.sessionId == "70de30ac-307c-4f24-8026-fe134613daac"
    ]
    assert (rec.reason, rec.sessionKey) == ("import", key)


# ---------------------------------------------------------------------------------------------
# The daemon reads what was imported


@pytest.mark.parametrize("era", [JSONL_ERA, SQLITE_ERA])
def test_the_daemon_serves_and_continues_imported_sessions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], era: str
) -> None:
    src = source_copy(tmp_path, era)
    state = tmp_path / "state"
    config = tmp_path / "config.json5"
    config.write_text(CONFIG)
    m = manifest(era)
    code, _ = run_import(capsys, src, state)
    assert code == 0
    key = "agent:main:telegram:direct:123456789"
    (live,) = [s for s in m["sessions"] if s["sessionKey"] == key and s["status"] == "active"]
    path = state / "agents" / "main" / "sessions" / f"{live['sessionId']}.jsonl"
    original = path.read_bytes()
    last_id = lines_of(path)[-1]["id"]

    daemon = Daemon(state, config)
    try:
        # The running daemon holds the folder: the import refuses and changes nothing.
        before = snapshot(state / "agents")
        assert main(["import-openclaw", str(src), "--state-dir", str(state)]) == 1
        assert "holds the lock" in capsys.readouterr().err
        assert snapshot(state / "agents") == before
        with daemon.client() as c:
            listed = {s["sessionKey"] for s in c.call("sessions.list", {})["sessions"]}
            assert listed == {s["sessionKey"] for s in m["sessions"] if s["status"] == "active"}
            history = c.call("sessions.history", {"sessionKey": key, "limit": 1000})
            assert history["sessionId"] == live["sessionId"]
            got = [e["id"] for e in reversed(history["entries"]) if e["type"] == "message"]
            assert got == [mid for mid, _role, _text in live["messages"]]
            first_user = next(e for e in reversed(history["entries"]) if e["type"] == "message")
            content = first_user["message"]["content"]
            text = content if isinstance(content, str) else content[0]["text"]
            assert text.startswith(live["messages"][0][2])
            if era == SQLITE_ERA:
                # The windows before a 2026.9 reset marker are the key's earlier sessions.
                whatsapp = "agent:main:whatsapp:direct:+819012345678"
                earlier = c.call(
                    "sessions.history", {"sessionKey": whatsapp, "previous": 1, "limit": 100}
                )
                assert earlier["entries"][0] == {
                    "type": "reset",
                    "id": "84787e80",
                    "parentId": "46234428-9f07-4607-a425-d124609a6574",
                    "timestamp": "2026-11-22T00:57:48.889Z",
                    "reason": "reset",
                }
            ack = c.call(
                "message.ingest",
                {
                    "channel": "telegram",
                    "chatType": "direct",
                    "peer": "123456789",
                    "text": "back after the import",
                    "messageId": "import-test-1",
                },
            )
        assert (ack["sessionKey"], ack["sessionId"], ack["created"]) == (
            key,
            live["sessionId"],
            False,
        )
    finally:
        daemon.stop()
    data = path.read_bytes()
    assert data.startswith(original), "the imported transcript was rewritten"
    new = lines_of(path)[-1]
    assert (new["id"], new["parentId"]) == (ack["entryId"], last_id)
    assert new["message"]["content"] in (
        "back after the import",
        [{"type": "text", "text": "back after the import"}],
    )
    # Importing again after the daemon appended: nothing is added or duplicated.
    code, again = run_import(capsys, src, state)
    assert code == 0
    assert again["imported"]["sessions"] == again["imported"]["archives"] == 0
    assert path.read_bytes() == data


def test_imported_archives_form_a_chain_per_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = source_copy(tmp_path, JSONL_ERA)
    # Usage families that name each archive's key but not what followed it: the key and the
    # time order give the chain.
    reg_path = src / "agents/main/sessions/sessions.json"
    reg = orjson.loads(reg_path.read_bytes())
    for entry in reg.values():
        if entry.get("usageFamilySessionIds"):
            entry["usageFamilySessionIds"] = entry["usageFamilySessionIds"][:1]
    reg_path.write_bytes(orjson.dumps(reg))
    state = tmp_path / "state"
    code, _ = run_import(capsys, src, state)
    assert code == 0
    m = manifest(JSONL_ERA)
    active = {s["sessionKey"]: s["sessionId"] for s in m["sessions"] if s["status"] == "active"}
    chained = 0
    for agent in ("main", "work"):
        for rec in read_index(state / "agents" / agent / "sessions"):
            if rec.sessionKey is None:
                continue
            # Each key here has one archive: the key's active session follows it.
            assert (rec.predecessor, rec.successor) == (None, active.get(rec.sessionKey))
            chained += rec.successor is not None
    assert chained == 3

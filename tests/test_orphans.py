"""Orphan transcripts, OpenClaw's side files and zero-filled fragments (issue 12, item 8).

A transcript no `sessions.json` entry names is served from the first start (adopted into
archive/ with reason orphan, as `doctor --repair` does); OpenClaw's `.trajectory.jsonl` files
are not sessions; `doctor --repair` succeeds on its first run when it both adopts a loose-mode
orphan and tightens its mode; fragments of zero bytes are reported, never removed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
from test_doctor import by_check, transcript

from daemon.doctor import run_doctor
from daemon.store import archive
from daemon.store.store import Store

KEY = "agent:main:telegram:direct:1"
LIVE = "0a0a0a0a-0000-4000-8000-000000000001"
ORPHAN = "0b0b0b0b-0000-4000-8000-000000000002"


def openclaw_folder(state: Path) -> Path:
    """An agent folder as OpenClaw leaves it: one registered session, one transcript whose key
    moved on (an orphan), and a trajectory side file beside each."""
    folder = state / "agents" / "main" / "sessions"
    folder.mkdir(parents=True)
    (folder / f"{LIVE}.jsonl").write_bytes(transcript(LIVE, KEY, 2))
    (folder / f"{ORPHAN}.jsonl").write_bytes(transcript(ORPHAN, KEY, 3))
    for sid in (LIVE, ORPHAN):
        (folder / f"{sid}.trajectory.jsonl").write_bytes(b'{"type":"step","n":1}\n')
    entry = {
        "sessionId": LIVE,
        "sessionFile": str(folder / f"{LIVE}.jsonl"),
        "updatedAt": int(time.time() * 1000),
    }
    (folder / "sessions.json").write_bytes(orjson.dumps({KEY: entry}))
    return folder


def test_start_up_adopts_an_orphan_and_leaves_trajectory_files_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    folder = openclaw_folder(state)
    store = Store(state, dedup_max=100, dedup_window_ms=86_400_000)
    try:
        counts = store.open()
    finally:
        store.close()
    assert counts["sessions"] == 1
    adopted = store.archived_by_id[ORPHAN]
    assert adopted.reason == "orphan" and adopted.session_key == KEY
    assert (state / adopted.rel_path).read_bytes() == transcript(ORPHAN, KEY, 3)
    assert not (folder / f"{ORPHAN}.jsonl").exists()
    # trajectory files stay where OpenClaw put them, and no index line names them
    for sid in (LIVE, ORPHAN):
        assert (folder / f"{sid}.trajectory.jsonl").is_file()
    assert [r.sessionId for r in archive.read_index(folder)] == [ORPHAN]


def test_doctor_repair_adopts_a_loose_orphan_and_tightens_it_in_one_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    folder = openclaw_folder(state)
    os.chmod(folder / f"{ORPHAN}.jsonl", 0o644)
    found = by_check(run_doctor(state, None, repair=False))
    orphans = [f for f in found["orphan"] if f.level == "warning"]
    assert len(orphans) == 1 and ORPHAN in orphans[0].message  # not the trajectory files
    report = run_doctor(state, None, repair=True)
    failed = [f for f in report.findings if f.outcome and f.outcome.startswith("failed")]
    assert not failed, [(f.check, f.outcome) for f in failed]
    moved = folder / archive.ARCHIVE_DIR / f"{ORPHAN}.jsonl"
    assert moved.stat().st_mode & 0o777 == 0o600


def test_doctor_reports_zero_filled_fragments_and_keeps_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    folder = openclaw_folder(state)
    zero = folder / f"{LIVE}.jsonl.torn-2026-11-22T09-15-00.000Z"
    zero.write_bytes(b"\0" * 4096)
    real = folder / f"{LIVE}.jsonl.torn-2026-11-22T09-16-00.000Z"
    real.write_bytes(b'{"type":"mess')
    found = by_check(run_doctor(state, None, repair=False))
    zeroed = [f for f in found["torn-tail"] if "only zero bytes" in f.message]
    assert len(zeroed) == 1 and zero.name in zeroed[0].message
    assert real.name not in zeroed[0].message and "4096 bytes" in zeroed[0].message
    run_doctor(state, None, repair=True)
    assert zero.read_bytes() == b"\0" * 4096 and real.is_file()

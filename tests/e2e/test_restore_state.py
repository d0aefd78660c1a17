"""`backup restore` gives back each session's state as it was (issue 13): active, archived with
its reason and lineage, deleted. Folders made by our own resets, by OpenClaw archives the daemon
adopted, and by imports of both OpenClaw eras; `sessions.list` and `sessions.archived` are
compared before and after, and `backup verify` notices a mirror that misstates a session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from e2e.conftest import Launch
from e2e.harness import Daemon
from e2e.test_backup import PER_PEER, config, sessiond, traffic, wait_backup

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def states(d: Daemon) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Active sessions (key, id) and archived ones (id, key, reason, predecessor, successor)."""
    listed = d.call("sessions.list", {"limit": 1000})["sessions"]
    archived = d.call("sessions.archived", {"limit": 1000})["sessions"]
    return (
        {(s["sessionKey"], s["sessionId"]) for s in listed},
        {
            (
                a["sessionId"],
                a.get("sessionKey"),
                a["reason"],
                a.get("predecessor"),
                a.get("successor"),
            )
            for a in archived
        },
    )


def settled_states(d: Daemon) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """The states of a stopped daemon's folder, as a new run shows them (resets that a run
    does at its start or stop, e.g. daily ones of imported sessions, are behind it)."""
    d.start()
    wait_backup(d)
    out = states(d)
    assert d.stop() == 0
    return out


def restore_and_compare(
    launch: Launch, d: Daemon, bk: Path, tmp_path: Path, before: Any, cfg: dict[str, Any]
) -> Daemon:
    new = tmp_path / "restored"
    r = sessiond("backup", "restore", "--from", str(bk), "--state-dir", str(new), *config(d))
    assert r.returncode == 0, r.stdout + r.stderr
    r = sessiond("backup", "verify", "--from", str(bk), "--state-dir", str(new), *config(d))
    assert r.returncode == 0, r.stdout + r.stderr
    d2 = launch(cfg, state_dir=new)
    after = states(d2)
    assert after[0] == before[0], "active sessions differ after the restore"
    assert after[1] == before[1], "archived sessions differ after the restore"
    return d2


def test_a_restore_of_our_own_resets_gives_back_the_same_sessions(
    launch: Launch, tmp_path: Path
) -> None:
    bk = tmp_path / "mirror"
    cfg = {**PER_PEER, "sessions": {"backup": {"path": str(bk)}}}
    d = launch(cfg)
    traffic(d)
    wait_backup(d)
    assert d.stop() == 0
    before = settled_states(d)
    assert before[0] and before[1]
    d2 = restore_and_compare(launch, d, bk, tmp_path, before, cfg)
    assert d2.stop() == 0


def test_a_restore_of_adopted_openclaw_archives_keeps_them_archived(
    launch: Launch, tmp_path: Path
) -> None:
    # OpenClaw's `.jsonl.reset.<ts>` and `.jsonl.deleted.<ts>` files, adopted at start-up: no
    # closing entry says they ended, only the mirror's state records do.
    bk = tmp_path / "mirror"
    cfg = {"sessions": {"backup": {"path": str(bk)}}}
    d = launch(cfg, start=False)
    shutil.copytree(FIXTURES / "openclaw-2026.6" / "agents", d.state_dir / "agents")
    d.start()
    wait_backup(d)
    assert d.stop() == 0
    before = settled_states(d)
    assert {a[2] for a in before[1]} >= {"reset", "deleted"}
    d2 = restore_and_compare(launch, d, bk, tmp_path, before, cfg)
    assert d2.stop() == 0


@pytest.mark.parametrize("era", ["openclaw-2026.6", "openclaw-2026.9"])
def test_a_restore_after_an_import_gives_back_the_same_sessions(
    launch: Launch, tmp_path: Path, era: str
) -> None:
    bk = tmp_path / "mirror"
    cfg = {"sessions": {"backup": {"path": str(bk)}}}
    d = launch(cfg, start=False)
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / era, src)
    r = sessiond("import-openclaw", str(src), "--state-dir", str(d.state_dir), *config(d))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "backup mirror:" in r.stdout
    # The import filled the mirror: a restore from it needs no daemon run first.
    r = sessiond("doctor", "--state-dir", str(d.state_dir), "--json", *config(d))
    assert r.returncode == 0, r.stdout
    d.start()
    wait_backup(d)
    assert d.stop() == 0
    before = settled_states(d)
    assert before[0] or before[1]
    d2 = restore_and_compare(launch, d, bk, tmp_path, before, cfg)
    assert d2.stop() == 0


def test_verify_notices_a_mirror_that_misstates_a_session(launch: Launch, tmp_path: Path) -> None:
    bk = tmp_path / "mirror"
    d = launch({**PER_PEER, "sessions": {"backup": {"path": str(bk)}}})
    traffic(d)
    wait_backup(d)
    archived = d.call("sessions.archived", {"limit": 1})["sessions"][0]
    active = d.call("sessions.list", {"limit": 1})["sessions"][0]
    assert d.stop() == 0
    r = sessiond("backup", "verify", "--from", str(bk), "--state-dir", str(d.state_dir), *config(d))
    assert r.returncode == 0, r.stdout + r.stderr
    # An archived session recorded with another reason, and an active one recorded archived.
    state = bk / archived["sessionId"] / "state.json"
    rec = orjson.loads(state.read_bytes())
    state.write_bytes(orjson.dumps({**rec, "reason": "deleted"}))
    (bk / active["sessionId"] / "state.json").write_text(
        json.dumps({**rec, "sessionId": active["sessionId"]})
    )
    r = sessiond(
        "backup", "verify", "--from", str(bk), "--state-dir", str(d.state_dir), "--json", *config(d)
    )
    assert r.returncode == 1, r.stdout + r.stderr
    found = orjson.loads(r.stdout)["states"]
    assert len(found) == 2
    assert any(archived["sessionId"] in f and "deleted" in f for f in found)
    assert any(active["sessionId"] in f and "active" in f for f in found)

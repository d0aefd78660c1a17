"""Adopting an OpenClaw folder (daemon/adoption.py): the first start applies no missed scheduled
reset, every session of the fixture's manifest stays listed with its whole history, and each
session is judged on its next message, as OpenClaw judges it.

The fixtures' sessions ended in November 2026, many 04:00 boundaries ago: under a daily policy
every one of them is stale now, which is what made the first start a purge before.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params, read_transcript

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DAILY = {"mode": "daily", "atHour": 4, "deferWhileActiveMinutes": 0}


def config(fixture: str) -> dict[str, Any]:
    src = json.loads((FIXTURES / fixture / "openclaw.json").read_text())
    agents = src["agents"].get("list") or src["agents"].get("entries")
    return {
        "daemon": {"timezone": "UTC"},
        "agents": {"list": agents},
        "session": {"dmScope": "per-channel-peer", "reset": DAILY},
    }


def manifest(fixture: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / fixture / "manifest.json").read_text())
    return doc


def wait_for_first_job(d: Daemon) -> None:
    """The start-up expiry job has run once it saved the scheduler's state."""
    deadline = time.monotonic() + 60
    while not (d.state_dir / "scheduler.json").exists():
        assert time.monotonic() < deadline, "the start-up job never ran"
        time.sleep(0.05)


def message_count(d: Daemon, key: str, previous: int | None = None) -> int:
    params: dict[str, Any] = {"sessionKey": key, "limit": 1000}
    if previous:
        params["previous"] = previous
    hist = d.client().call("sessions.history", params)
    assert hist["before"] is None
    return sum(1 for e in hist["entries"] if e.get("type") == "message")


def full_history(d: Daemon, session: dict[str, Any]) -> int:
    """Messages of the session, with the earlier windows its reset markers split off (the
    SQLite era keeps one session across in-place resets; the import splits it, chained)."""
    windows = 1 + len(session.get("resetMarkers") or [])
    return sum(message_count(d, session["sessionKey"], n) for n in range(windows))


def check_every_active_session_listed(d: Daemon, fixture: str) -> None:
    active = [s for s in manifest(fixture)["sessions"] if s["status"] == "active"]
    listed = d.client().call("sessions.list", {"limit": 1000})["sessions"]
    assert sorted(s["sessionKey"] for s in listed) == sorted(s["sessionKey"] for s in active)
    by_key = {s["sessionKey"]: s for s in listed}
    for s in active:
        if not s.get("resetMarkers"):
            assert by_key[s["sessionKey"]]["sessionId"] == s["sessionId"]
        assert full_history(d, s) == s["messageCount"], s["sessionKey"]


def test_adopting_a_folder_in_place_archives_nothing(launch: Launch, tmp_path: Path) -> None:
    fixture = "openclaw-2026.6"
    state = tmp_path / "oc"
    shutil.copytree(FIXTURES / fixture, state)
    d = launch(config(fixture), state_dir=state)
    wait_for_first_job(d)
    check_every_active_session_listed(d, fixture)
    adopted = [e for e in d.logs() if e["event"] == "state.adopted"]
    assert len(adopted) == 1
    assert adopted[0]["sessions"] == 12 and adopted[0]["staleJudgedOnNextMessage"] == 12
    assert adopted[0]["archives"] == 4
    assert not [e for e in d.logs() if e["event"] == "job.run" and e.get("archived")]
    marker = orjson.loads((state / "adopted.json").read_bytes())
    # OpenClaw's archives form a chain per key: each is followed by the key's active session.
    archived = d.client().call("sessions.archived", {"limit": 100})["sessions"]
    links = {a["sessionId"]: (a["sessionKey"], a["predecessor"], a["successor"]) for a in archived}
    assert links == {
        "fccd19f9-c7f3-4884-bccc-0b75fac2dc1f": (
            "agent:main:main",
            None,
            "07f14acd-9d09-4ec5-860c-924620213170",
        ),
        "6120f99d-1354-4381-bf8d-f995d25a32b4": (
            "agent:main:telegram:direct:123456789",
            None,
            "70de30ac-307c-4f24-8026-fe134613daac",
        ),
        "57509858-2d6d-492a-a424-a2b316c12dec": (
            "agent:main:whatsapp:direct:+819012345678",
            None,
            "a12bf8a1-f6cb-40d8-af56-b78449e83e75",
        ),
        "01ebda3d-2b0f-48ee-bed4-a70be5d4a675": (None, None, None),
    }
    assert marker["adoptedAt"] == adopted[0]["adoptedAt"]
    # A later start keeps the adoption time: still nothing archived, no second adoption.
    assert d.stop() == 0
    d.start()
    wait_for_first_job(d)
    check_every_active_session_listed(d, fixture)
    assert not [e for e in d.logs() if e["event"] == "state.adopted"]
    assert orjson.loads((state / "adopted.json").read_bytes()) == marker
    # The next message judges the session as OpenClaw would: its day ended, a new one begins,
    # and the new transcript names the one it replaced.
    key = "agent:main:telegram:direct:123456789"
    ack = d.client().call("message.ingest", ingest_params("123456789", "good morning"))
    assert ack["sessionKey"] == key and ack["created"]
    assert ack["reset"] == {
        "reason": "daily",
        "previousSessionId": "70de30ac-307c-4f24-8026-fe134613daac",
    }
    assert d.stop() == 0
    header = read_transcript(state / "agents/main/sessions" / f"{ack['sessionId']}.jsonl")[0]
    assert header["predecessor"] == "70de30ac-307c-4f24-8026-fe134613daac"


@pytest.mark.timeout(600)  # two imports and two starts: over 120 s at load 20 on 2 cores
def test_the_first_start_after_an_import_archives_nothing(launch: Launch, tmp_path: Path) -> None:
    for fixture in ("openclaw-2026.6", "openclaw-2026.9"):
        src = tmp_path / "src" / fixture
        shutil.copytree(FIXTURES / fixture, src)
        state = tmp_path / f"state-{fixture}"
        cmd = [sys.executable, "-m", "daemon", "import-openclaw", str(src)]
        done = subprocess.run(
            [*cmd, "--state-dir", str(state)],
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode()
        d = launch(config(fixture), state_dir=state)
        wait_for_first_job(d)
        check_every_active_session_listed(d, fixture)
        adopted = [e for e in d.logs() if e["event"] == "state.adopted"]
        assert len(adopted) == 1 and adopted[0]["sessions"] == len(
            [s for s in manifest(fixture)["sessions"] if s["status"] == "active"]
        )
        assert not [e for e in d.logs() if e["event"] == "job.run" and e.get("archived")]
        assert d.stop() == 0


def test_a_scheduled_daily_reset_is_named_by_the_next_session_of_its_key(
    launch: Launch,
) -> None:
    """Under faketime: adopted (a fresh folder) at 03:00, the 04:00 daily job ends the session,
    the next message begins its successor: index and header name each other."""
    cfg = {
        "daemon": {"timezone": "UTC"},
        "session": {"dmScope": "per-channel-peer", "reset": DAILY},
    }
    d = launch(cfg, start=False)
    d.env["TZ"] = "UTC"
    d.wrapper = ["faketime", "-f", "@2026-01-10 03:00:00"]
    d.start()
    first = d.client().call("message.ingest", ingest_params("5", "late night"))
    assert d.stop() == 0
    d.wrapper = ["faketime", "-f", "@2026-01-10 04:10:00"]
    d.start()
    folder = d.sessions_dir()
    index = folder / "archive" / "index.jsonl"
    deadline = time.monotonic() + 60
    while not index.exists():
        assert time.monotonic() < deadline, "the daily job never archived the session"
        time.sleep(0.05)
    second = d.client().call("message.ingest", ingest_params("5", "good morning"))
    assert second["created"] and second["sessionKey"] == first["sessionKey"]
    archived = d.client().call("sessions.archived", {"sessionKey": first["sessionKey"]})
    assert [(a["sessionId"], a["reason"], a["successor"]) for a in archived["sessions"]] == [
        (first["sessionId"], "daily", second["sessionId"])
    ]
    assert d.stop() == 0
    lines = [orjson.loads(x) for x in index.read_bytes().splitlines()]
    assert [(r["sessionId"], r["successor"]) for r in lines] == [
        (first["sessionId"], None),
        (first["sessionId"], second["sessionId"]),
    ], "append-only: the archiving's line, then the one naming the successor"
    header = read_transcript(folder / f"{second['sessionId']}.jsonl")[0]
    assert header["predecessor"] == first["sessionId"]

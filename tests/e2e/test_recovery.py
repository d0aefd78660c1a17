"""Start-up recovery around archived sessions (issue 12, items 1 and 2).

The journal may still hold the newest lines of a session that a reset has already archived. A
restart must recognise them as stored (in the archive, compressed or not): no second, partial copy
of the session, and their message ids still known, so that a resend is a duplicate.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import orjson

from daemon.failpoints import EXIT_CODE
from e2e.conftest import Launch
from e2e.harness import Daemon, daemon_env, ingest_params

# No checkpoint while a test sends: the journal holds everything since the daemon started. A clean
# stop checkpoints and empties it, so a test decides exactly which lines a crash leaves in it.
NO_CHECKPOINTS = {
    "session": {"dmScope": "per-channel-peer"},
    "daemon": {"checkpointIntervalMs": 3_600_000},
    "retention": {"compressAfterDays": 0},
}


def sessiond(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=120,
        check=False,
    )


def index_lines(d: Daemon) -> list[dict[str, Any]]:
    path = d.sessions_dir() / "archive" / "index.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def wait_archived(d: Daemon, session_id: str, timeout: float = 30.0) -> None:
    """Until the archive index names `session_id` (the move runs after the batch's ack)."""
    deadline = time.monotonic() + timeout
    path = d.sessions_dir() / "archive" / "index.jsonl"
    while not (path.exists() and any(r["sessionId"] == session_id for r in index_lines(d))):
        assert time.monotonic() < deadline, f"{session_id} was never archived"
        time.sleep(0.02)


def history_texts(d: Daemon, session_id: str) -> list[str]:
    texts: list[str] = []
    before = None
    while True:
        params: dict[str, Any] = {"sessionId": session_id, "limit": 200}
        if before is not None:
            params["before"] = before
        page = d.call("sessions.history", params)
        for e in page["entries"]:
            msg = e.get("message") or {}
            for part in msg.get("content") or []:
                if part.get("type") == "text" and msg.get("role") == "user":
                    texts.append(part["text"])
        before = page["before"]
        if before is None:
            return texts


def test_a_compressed_archive_with_its_newest_lines_in_the_journal_is_served_whole(
    launch: Launch,
) -> None:
    d = launch(NO_CHECKPOINTS)
    first = None
    with d.client() as c:
        for i in range(20):
            if i == 10:
                # The first half is checkpointed: only the newest lines stay in the journal.
                c.close()
                assert d.stop() == 0
                d.restart()
                c = d.client()
            a = c.call("message.ingest", ingest_params("P", f"message {i} to P", messageId=f"p{i}"))
            first = first or a
            c.call("message.ingest", ingest_params("Q", f"filler {i}", messageId=f"q{i}"))
        reset = c.call("message.ingest", ingest_params("P", "/new", messageId="p-new"))
    assert first is not None
    sid = first["sessionId"]
    assert reset["sessionId"] != sid
    wait_archived(d, sid)
    d.kill()

    r = sessiond("retention", "--state-dir", str(d.state_dir), "--config", str(d.config_path),
                 "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    d.restart()

    texts = history_texts(d, sid)
    assert sorted(texts) == sorted(f"message {i} to P" for i in range(20)), texts
    # One copy of the session: no live transcript for it, one archive file, and the index's
    # newest line for it names that file.
    folder = d.sessions_dir()
    assert not (folder / f"{sid}.jsonl").exists()
    copies = sorted(p.name for p in (folder / "archive").glob(f"{sid}.jsonl*"))
    assert len(copies) == 1, copies
    newest = [rec for rec in index_lines(d) if rec["sessionId"] == sid][-1]
    assert newest["file"] == copies[0]
    assert newest["messages"] >= 20


def test_a_resent_message_of_a_session_closed_by_a_reset_is_a_duplicate_after_a_crash(
    launch: Launch,
) -> None:
    # m0 is checkpointed (a clean stop); then no checkpoint until the daemon stops again: the
    # one at SIGTERM writes sessions.json (which no longer names the session the reset closed)
    # and dies right after, before the message-id snapshot. Only the journal still knows X,
    # and not the header of X's session.
    d = launch(NO_CHECKPOINTS)
    d.call("message.ingest", ingest_params("P", "m0", messageId="m0"))
    assert d.stop() == 0
    d.env["SESSIOND_FAILPOINTS"] = "registry.renamed=exit@1"
    d.start()
    with d.client() as c:
        c.call("message.ingest", ingest_params("Q", "filler", messageId="f0"))
        x = c.call("message.ingest", ingest_params("P", "X", messageId="X"))
        reset = c.call("message.ingest", ingest_params("P", "/reset", messageId="r0"))
    assert reset["sessionId"] != x["sessionId"]
    assert d.stop() == EXIT_CODE
    d.env.pop("SESSIOND_FAILPOINTS")
    d.restart()

    again = d.call("message.ingest", ingest_params("P", "X", messageId="X"))
    assert again["duplicate"] is True, again
    assert again["entryId"] == x["entryId"] and again["sessionId"] == x["sessionId"]
    stored = 0
    for path in d.sessions_dir().rglob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            obj = orjson.loads(line)
            if (obj.get("origin") or {}).get("messageId") == "X":
                stored += 1
    assert stored == 1


def test_a_daemon_started_on_an_openclaw_folder_serves_an_orphan_at_once(launch: Launch) -> None:
    from test_orphans import KEY, LIVE, ORPHAN, openclaw_folder

    d = launch(start=False)
    folder = openclaw_folder(d.state_dir)
    d.start()
    page = d.call("sessions.history", {"sessionId": ORPHAN})
    assert page["sessionId"] == ORPHAN and len(page["entries"]) == 3
    assert d.call("sessions.get", {"sessionKey": KEY})["sessionId"] == LIVE
    for sid in (LIVE, ORPHAN):
        assert (folder / f"{sid}.trajectory.jsonl").is_file()

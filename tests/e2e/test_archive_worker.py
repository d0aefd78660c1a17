"""The moves into archive/ run in worker processes (daemon/archiving.py). A move that fails
there fails for its session only: the daemon goes on, says so (`archive.failed`), and the next
start indexes the file the worker moved (store/archive.py `missing_index_entries`)."""

from __future__ import annotations

import os
import time

import orjson

from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params

CONFIG = {"session": {"dmScope": "per-channel-peer"}}


def wait_for_event(d: Daemon, name: str, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in d.logs():
            if e.get("event") == name:
                return e
        time.sleep(0.05)
    raise AssertionError(f"no {name} within {timeout}s:\n{d.output()}")


def test_a_move_that_fails_in_the_worker_is_indexed_at_the_next_start(launch: Launch) -> None:
    d = launch(CONFIG, start=False)
    d.env = {"SESSIOND_FAILPOINTS": "archive.after_move=eio"}
    d.start()
    c = d.client()
    first = c.call("message.ingest", ingest_params("7", "remember the number 4711"))
    sid = first["sessionId"]
    c.call("sessions.reset", {"sessionKey": first["sessionKey"]})
    failed = wait_for_event(d, "archive.failed")
    assert failed["sessionId"] == sid and "Input/output error" in str(failed["error"])
    # The daemon goes on: the same chat gets its next message stored.
    again = c.call("message.ingest", ingest_params("7", "still here"))
    assert again["sessionId"] != sid and not again["duplicate"]
    assert d.stop() == 0
    # Stopped after the rename, before the index line: in archive/, in one place only.
    folder = d.sessions_dir()
    moved = folder / "archive" / f"{sid}.jsonl"
    assert moved.is_file() and not (folder / moved.name).exists()
    index = folder / "archive" / "index.jsonl"
    lines = index.read_bytes().splitlines() if index.exists() else []
    assert sid not in {orjson.loads(line)["sessionId"] for line in lines}

    d.env = {}
    d.start()
    archived = d.call("sessions.archived", {"sessionKey": first["sessionKey"]})["sessions"]
    assert [a["sessionId"] for a in archived] == [sid]
    assert archived[0]["file"] == moved.name


def test_moves_and_reset_flushes_are_logged_a_line_per_group(launch: Launch) -> None:
    d = launch(CONFIG)
    c = d.client()
    sids = []
    for peer in ("1", "2", "3"):
        text = f"We decided to book room {peer} at the Hiiragiya in Kyoto for 2026-04-03."
        first = c.call("message.ingest", ingest_params(peer, text))
        c.call("sessions.reset", {"sessionKey": first["sessionKey"]})
        sids.append(first["sessionId"])

    def logged(name: str) -> set[str]:
        return {
            str(sid)
            for e in d.logs()
            if e.get("event") == name
            for sid in e["sessionIds"]  # type: ignore[attr-defined]
        }

    deadline = time.monotonic() + 60
    while not (
        set(sids) <= logged("archive.group_moved") and set(sids) <= logged("memory.group_flushed")
    ):
        assert time.monotonic() < deadline, d.output()
        time.sleep(0.05)
    lines = d.logs()
    # Each reset still says which session ended and why, at info level.
    resets = [e for e in lines if e.get("event") == "session.reset"]
    assert {e["previousSessionId"] for e in resets} == set(sids)
    assert all(e["reason"] and e["level"] == "info" for e in resets)
    # The groups' lines carry the counts; each session's own lines are at debug level.
    archived = [e for e in lines if e.get("event") == "archive.group_moved"]
    assert sum(int(e["sessions"]) for e in archived) == 3  # type: ignore[call-overload]
    flushed = [e for e in lines if e.get("event") == "memory.group_flushed"]
    assert all(e["reason"] == "reset" and e["files"] for e in flushed)
    assert not [
        e
        for e in lines
        if e.get("event") in ("session.archived", "memory.flushed") and e["level"] != "debug"
    ]
    # The moves and the flushes ran in workers of the SCHED_IDLE class (they use only CPU the
    # daemon's event loop does not want); the index's worker and the daemon itself did not.
    assert d.pid is not None
    workers = worker_policies(d.pid)
    for pool in ("archive", "memory-flush"):
        assert workers.get(pool) == {os.SCHED_IDLE}, workers
    assert workers.get("search") == {os.SCHED_OTHER}, workers
    assert os.sched_getscheduler(d.pid) == os.SCHED_OTHER
    assert d.stop() == 0


def worker_policies(daemon_pid: int) -> dict[str, set[int]]:
    """The scheduling policies of the daemon's live worker processes, by pool name (the
    worker's argv: `-m daemon.worker_entry <nice> <pool> [idle]`)."""
    out: dict[str, set[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != daemon_pid:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0")]
            policy = os.sched_getscheduler(int(name))
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        if "daemon.worker_entry" in argv:
            pool = argv[argv.index("daemon.worker_entry") + 2]
            out.setdefault(pool, set()).add(policy)
    return out

"""The index worker end to end: passes run in a worker process of the daemon's (its one worker
mechanism), below its priority; a worker that dies, even mid-pass, is started again while
searches go on answering, and loses nothing; the index deleted under a running daemon is built
again; and however the daemon ends, no worker is left behind."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

from ops_harness import log_lines, wait_for

from daemon.search import rebuild
from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params


def search(d: Daemon, query: str) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = d.call("memory.search", {"query": query, "limit": 100})["hits"]
    return hits


def worker_pid(d: Daemon) -> int | None:
    pid: int | None = d.call("status")["search"]["workerPid"]
    return pid


def proc_field(pid: int, name: str) -> str | None:
    """A field of /proc/<pid>/status; None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def gone(pid: int) -> bool:
    """No such process, not even a zombie waiting to be reaped."""
    return proc_field(pid, "State") is None


def test_the_index_worker_is_a_child_process_below_the_daemons_priority(launch: Launch) -> None:
    d = launch()
    d.call("message.ingest", ingest_params("7", "hello zeppelin"))
    assert len(search(d, "zeppelin")) == 1
    status = d.call("status")["search"]
    assert status["state"] == "ok" and status["workerStarts"] == 1 and status["passes"] >= 1
    pid = status["workerPid"]
    assert isinstance(pid, int) and pid != d.pid
    assert proc_field(pid, "PPid") == str(d.pid)
    # 10 below the daemon, as far as there is room (a suite run under `nice -n 19` has none).
    assert d.pid is not None and nice_of(pid) == min(nice_of(d.pid) + 10, 19)
    # It gets the daemon's environment: the tests' delete guard (and failpoints, if armed).
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert any(e.startswith(b"SESSIOND_DELETE_GUARD=") for e in environ)


def test_a_killed_worker_is_restarted_and_searches_go_on(launch: Launch) -> None:
    d = launch()
    c = d.client()
    c.call("message.ingest", ingest_params("7", "the zeppelin docks at noon"))
    assert len(search(d, "zeppelin")) == 1
    first = worker_pid(d)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    # The index as it is keeps answering, also for writes the dead worker cannot index yet.
    assert len(search(d, "zeppelin")) == 1
    c.call("message.ingest", ingest_params("7", "a walrus while the worker is down"))
    assert len(search(d, "zeppelin")) == 1
    [exited] = wait_for("search.worker_exited", lambda: log_lines(d, "search.worker_exited"))
    assert exited["pid"] == first and exited["code"] == -signal.SIGKILL
    assert exited["level"] == "error"
    second = wait_for("a new worker", lambda: (p := worker_pid(d)) not in (None, first) and p)
    assert proc_field(second, "PPid") == str(d.pid)
    assert gone(first)  # reaped by the daemon
    wait_for("the walrus indexed", lambda: search(d, "walrus"))
    c.call("message.ingest", ingest_params("7", "an albatross after the restart"))
    assert len(search(d, "albatross")) == 1  # right after the answer, as always
    assert d.call("status")["search"]["workerStarts"] == 2
    assert d.stop() == 0
    assert gone(second)


def test_sigterm_stops_the_worker_and_leaves_no_process_behind(launch: Launch) -> None:
    d = launch()
    d.call("message.ingest", ingest_params("7", "hello"))
    pid = worker_pid(d)
    assert pid is not None
    assert d.stop() == 0
    assert gone(pid)
    assert log_lines(d, "search.worker_exited") == []  # asked to stop, not died


def test_sigkill_of_the_daemon_ends_the_worker_too(launch: Launch) -> None:
    d = launch()
    d.call("message.ingest", ingest_params("7", "hello"))
    pid = worker_pid(d)
    assert pid is not None
    d.kill()
    # Its stdin closes with the daemon: it ends (and init reaps it).
    wait_for("the worker to end", lambda: proc_field(pid, "State") in (None, "Z (zombie)"))
    d.start()  # and the next daemon's worker opens the same index
    assert len(search(d, "hello")) == 1


def test_the_index_deleted_under_a_running_daemon_is_built_again(launch: Launch) -> None:
    d = launch()
    c = d.client()
    for i in range(5):
        c.call("message.ingest", ingest_params(str(i), f"harbour number {i}"))
    assert len(search(d, "harbour")) == 5
    shutil.rmtree(d.state_dir / "index")
    # The worker notices at its next pass, starts a new file, and the daemon's readers follow.
    wait_for("the index built again", lambda: len(search(d, "harbour")) == 5)
    c.call("message.ingest", ingest_params("9", "harbour number 9"))
    # Waited for: a search waits at most 2 s for the pass (SPEC), which a niced worker on a
    # loaded machine can take longer for; what is proved here is that the new file is followed.
    wait_for("the new message in the new index", lambda: len(search(d, "harbour")) == 6)
    [missing] = wait_for("the worker's log line", lambda: log_lines(d, "search.index_missing"))
    assert missing["process"] == "search-worker"  # its logs are the daemon's lines, on stdout


def test_an_index_installed_under_a_running_daemon_is_followed(launch: Launch) -> None:
    d = launch()
    c = d.client()
    for i in range(3):
        c.call("message.ingest", ingest_params(str(i), f"lighthouse number {i}"))
    assert len(search(d, "lighthouse")) == 3
    old = os.stat(d.state_dir / "index" / "search.sqlite3").st_ino
    # What `sessiond reindex` does (it refuses while a daemon runs, so this does it in place).
    rebuild(d.state_dir, lambda agent: d.state_dir / "workspace", ["main"])
    assert os.stat(d.state_dir / "index" / "search.sqlite3").st_ino != old
    wait_for("the worker to open the new file", lambda: log_lines(d, "search.index_missing"))
    c.call("message.ingest", ingest_params("9", "lighthouse number 9"))
    hits = search(d, "lighthouse")
    assert len(hits) == 4 and len({h["entryId"] for h in hits}) == 4


def test_a_worker_killed_mid_pass_loses_nothing(launch: Launch) -> None:
    d = launch()
    c = d.client()
    c.call("message.ingest", ingest_params("7", "the first heron"))
    assert len(search(d, "heron")) == 1
    pid = worker_pid(d)
    assert pid is not None
    # Holding the index's write lock: the passes that follow read and parse the new lines (the
    # bytes the daemon hands over) but cannot commit them.
    lock = sqlite3.connect(d.state_dir / "index" / "search.sqlite3", timeout=60)
    try:
        lock.execute("BEGIN IMMEDIATE")
        for i in range(2, 22):
            c.call("message.ingest", ingest_params("7", f"heron number {i}"))
        # A search waits (at most 2 s) for a pass that cannot end: one is under way by now.
        search(d, "heron")
        os.kill(pid, signal.SIGKILL)
    finally:
        lock.rollback()
        lock.close()
    wait_for("every heron indexed", lambda: len(search(d, "heron")) == 21)
    [exited] = wait_for("search.worker_exited", lambda: log_lines(d, "search.worker_exited"))
    assert exited["pid"] == pid and exited["code"] == -signal.SIGKILL
    c.call("message.ingest", ingest_params("7", "a heron after the restart"))
    hits = search(d, "heron")
    assert len(hits) == 22 and len({h["entryId"] for h in hits}) == 22
    assert d.stop() == 0


def test_passes_index_the_lines_the_daemon_hands_over_without_reading_the_transcript(
    launch: Launch,
) -> None:
    d = launch({"daemon": {"logLevel": "debug"}})
    c = d.client()
    c.call("message.ingest", ingest_params("7", "the first cormorant"))
    assert len(search(d, "cormorant")) == 1  # the first pass lists and reads the files
    for i in range(2, 6):
        c.call("message.ingest", ingest_params("7", f"cormorant number {i}"))
        assert len(search(d, "cormorant")) == i  # right after the answer, as always
    passes = [p for p in log_lines(d, "search.synced") if p["docs"]]
    # After the first, the passes took the new lines from the daemon: no transcript read again.
    assert any(p["handed"] >= 1 and p["read"] == 0 for p in passes[1:]), passes
    assert d.stop() == 0

"""Compaction in worker processes (daemon/workers.py): a killed worker is a failed attempt, a hot
session ends each compaction well below the threshold, one compaction per session at a time, and
a stop cancels a running one at once. The real daemon; checked from outside."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from e2e.conftest import Launch
from e2e.harness import RawConnection, ingest_params
from e2e.test_compaction import (
    KEY,
    entries,
    log_events,
    note,
    registry_entry,
    small,
    subscribe,
    summarizer_script,
    transcript_path,
    wait_for,
)


def test_a_worker_killed_mid_compaction_writes_nothing_and_the_retry_succeeds(
    launch: Launch, tmp_path: Path
) -> None:
    """The summarizer runs in a worker process (its parent): SIGKILL that worker while the
    compaction waits on it. Nothing is written, the daemon goes on answering, and the retry
    (with backoff, in a new worker) compacts."""
    parent_file, killed = tmp_path / "worker.pid", tmp_path / "killed"
    script = summarizer_script(
        tmp_path,
        "req = json.load(sys.stdin)\n"
        f"if req['task'] == 'compaction' and not os.path.exists({str(killed)!r}):\n"
        f"    open({str(parent_file)!r}, 'w').write(str(os.getppid()))\n"
        "    ppid = os.getppid()\n"
        "    while os.getppid() == ppid: time.sleep(0.05)\n"  # until the worker is gone
        "    sys.exit(1)\n"
        "print('## Notes\\n- Alice Martin booked the Hiiragiya.')\n",
    )
    d = launch(small(script, keepRecentTokens=150))
    c = d.client()
    for i in range(5):
        c.call("message.ingest", ingest_params("1", note(i)))
    path = transcript_path(d)
    waiting = RawConnection(d.socket)
    rid = waiting.send_request("sessions.compact", {"sessionKey": KEY})
    wait_for(parent_file.exists, what="the summarizer to start in its worker")
    worker = int(parent_file.read_text())
    assert worker != d.pid
    before = path.read_bytes()
    killed.write_text("")
    os.kill(worker, signal.SIGKILL)
    answer = waiting.read()
    waiting.close()
    assert answer["id"] == rid
    result = answer["result"]
    assert result["compacted"] is False
    assert "worker" in result["reason"] and "retryInSeconds" in result
    # Nothing of the compaction was written; the daemon answers as before.
    assert not [e for e in entries(path) if e["type"] == "compaction"]
    assert path.read_bytes().startswith(before)
    assert c.call("message.ingest", ingest_params("1", note(5)))["sessionId"]
    failed = log_events(d, "compaction.failed")
    assert failed and "killed by signal 9" in failed[0]["reason"]
    # The retry runs in a new worker and compacts.
    wait_for(lambda: registry_entry(d)["compactionCount"] == 1, what="the retried compaction")
    done = wait_for(lambda: [e for e in entries(path) if e["type"] == "compaction"], what="entry")
    assert done[0]["summary"] == "## Notes\n- Alice Martin booked the Hiiragiya."
    assert path.read_bytes().startswith(before)


def test_a_hot_session_ends_each_compaction_well_below_the_threshold(launch: Launch) -> None:
    """Messages arrive on one session from four clients at once, crossing the threshold many
    times: every compaction leaves its summary plus kept tail at most half the threshold (the
    kept tail is capped at a quarter of it), and compactions of the session never overlap
    (each one's count follows the previous one's, entry after entry)."""
    # keepRecentTokens above a quarter of the threshold: the cap is what keeps tokensAfter low.
    d = launch(small(keepRecentTokens=2000))
    compact_at = 3600
    sub = subscribe(d)
    errors: list[BaseException] = []

    def send(client: str) -> None:
        try:
            c = d.client()
            for i in range(150):
                c.call("message.ingest", ingest_params("1", f"{client}: {note(i)}"))
        except BaseException as e:  # reported by the test thread below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(f"client-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    path = transcript_path(d)
    # It keeps compacting, without another message, until it is below the threshold.
    wait_for(lambda: registry_entry(d)["totalTokens"] < compact_at, what="the compactions")
    count = registry_entry(d)["compactionCount"]
    compactions = wait_for(
        lambda: [e for e in entries(path) if e["type"] == "compaction"][count - 1 :],
        what="the entries",
    )
    compactions = [e for e in entries(path) if e["type"] == "compaction"]
    assert compactions
    assert [e["details"]["compactionCount"] for e in compactions] == list(
        range(1, len(compactions) + 1)
    )
    done = log_events(d, "compaction.done")
    assert len(done) == len(compactions)
    for info in done:
        assert info["tokensAfter"] <= compact_at // 2, info
        assert info["totalTokens"] >= info["tokensAfter"]
    sub.close()


def test_compactions_of_one_session_never_overlap(launch: Launch, tmp_path: Path) -> None:
    """Three sessions.compact calls at once, and messages crossing the threshold meanwhile:
    the summarizer of the session never runs twice at the same time (it would find the lock
    file of the other), and each compaction follows the previous one."""
    lock, overlap = tmp_path / "lock", tmp_path / "overlap"
    script = summarizer_script(
        tmp_path,
        "json.load(sys.stdin)\n"
        "try:\n"
        f"    fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
        "except FileExistsError:\n"
        f"    open({str(overlap)!r}, 'w').write('two at once')\n"
        "    sys.exit(3)\n"
        "time.sleep(0.2)\n"
        f"os.close(fd); os.unlink({str(lock)!r})\n"
        "print('## Notes\\n- Alice Martin booked the Hiiragiya.')\n",
    )
    d = launch(small(script, keepRecentTokens=150))
    c = d.client()
    for i in range(5):
        c.call("message.ingest", ingest_params("1", note(i)))
    conns = [RawConnection(d.socket) for _ in range(3)]
    ids = [conn.send_request("sessions.compact", {"sessionKey": KEY}) for conn in conns]
    for i in range(5, 60):
        c.call("message.ingest", ingest_params("1", note(i)))
    for conn, rid in zip(conns, ids, strict=True):
        answer = conn.read()
        conn.close()
        assert answer["id"] == rid and "result" in answer
    wait_for(lambda: registry_entry(d)["totalTokens"] < 3600, what="the compactions")
    assert not overlap.exists()
    assert not log_events(d, "compaction.failed") and not log_events(d, "memory.flush_failed")
    path = transcript_path(d)
    count = registry_entry(d)["compactionCount"]
    compactions = wait_for(
        lambda: [e for e in entries(path) if e["type"] == "compaction"][count - 1 :],
        what="the entries",
    )
    compactions = [e for e in entries(path) if e["type"] == "compaction"]
    assert [e["details"]["compactionCount"] for e in compactions] == list(range(1, count + 1))

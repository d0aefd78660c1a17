"""Disk faults injected into the real daemon with libfiu (issue 8, "Fault injection").

The daemon runs under `fiu-run -x` (libfiu's POSIX preload); faults are switched on and off while
it runs with `fiu-ctrl`, narrowly (one call, one errno: wildcards would break Python itself):

- fdatasync / fsync fail with EIO: the batch is not acknowledged (1004), and the store stops
  taking writes even once the disk works again (a failed sync is never retried and then
  acknowledged: the kernel may have dropped the pages);
- pwrite fails with ENOSPC (the journal's write): no acknowledgement, no garbage left in the
  journal, and writes resume by themselves once space is free, without a restart.

After each run the daemon restarts without faults, the adapters retry, and every acknowledged
message is in its transcript exactly once. `write(2)` is not injected here: stdout (the logs)
uses it too; a transcript write's ENOSPC is covered in-process by tests/test_power_loss.py.

Tests skip, saying why, when fiu-run is missing (CI installs fiu-utils).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from reliability import tally

from daemon.store.journal import decode_file, salt_of
from e2e.conftest import Launch
from e2e.harness import (
    Daemon,
    PipelinedSender,
    RawConnection,
    check_v3,
    ingest_params,
    message_ids,
)

EIO, ENOSPC = 5, 28
STORAGE_UNAVAILABLE = 1004
CONFIG = {
    "session": {"dmScope": "per-channel-peer"},
    "daemon": {"checkpointIntervalMs": 200, "dedupMaxPerAgent": 1_000_000},
}


def fiu_works(tmp_path: Path) -> str | None:
    """None when fiu-run can inject a pwrite failure into Python here; else why not."""
    if shutil.which("fiu-run") is None or shutil.which("fiu-ctrl") is None:
        return "libfiu is not installed (CI installs it: apt-get install fiu-utils)"
    target = str(tmp_path / "fiu-probe")
    probe = (
        f"import os;fd=os.open({target!r},os.O_RDWR|os.O_CREAT)\n"
        "try:\n os.pwrite(fd,b'x',0);print('no fault')\n"
        "except OSError as e:\n print(e.errno)"
    )
    cmd = ["fiu-run", "-x", "-c", f"enable name=posix/io/rw/pwrite,failinfo={ENOSPC}"]
    try:
        out = subprocess.run([*cmd, sys.executable, "-c", probe], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"fiu-run does not run here: {e}"
    if out.stdout.strip() != str(ENOSPC).encode():
        return f"fiu-run did not inject into Python here: {out.stdout!r} {out.stderr[:200]!r}"
    return None


@pytest.fixture
def fiu_ok(tmp_path: Path) -> None:
    reason = fiu_works(tmp_path)
    if reason is not None:
        pytest.skip(reason)


class Faulty:
    """A daemon under fiu-run, with its faults switched by fiu-ctrl."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.ctrl = d.workdir / "fiu-ctrl"
        d.wrapper = ["fiu-run", "-x", "-f", str(self.ctrl)]

    def command(self, command: str) -> None:
        assert self.d.pid is not None
        subprocess.run(
            ["fiu-ctrl", "-f", str(self.ctrl), "-c", command, str(self.d.pid)],
            check=True,
            timeout=10,
        )

    def enable(self, name: str, errno: int, probability: float | None = None) -> None:
        if probability is None:
            self.command(f"enable name={name},failinfo={errno}")
        else:
            self.command(f"enable_random name={name},probability={probability},failinfo={errno}")

    def disable(self, name: str) -> None:
        self.command(f"disable name={name}")


class OrderedSender(PipelinedSender):
    """A pipelined adapter sending at a steady trickle: many small batches."""

    def __init__(self, socket_path: Path, name: str) -> None:
        super().__init__(socket_path, name, peers=6, window=16)

    def _run(self, conn: RawConnection) -> None:
        while True:
            while not self.stopping.is_set() and len(self.pending) < self.window:
                p = self.next_params()
                self.pending[p["messageId"]] = p
                self.sent[p["messageId"]] = p
                conn.send_request("message.ingest", p, rid=p["messageId"])
            if not self.pending:
                return
            a = conn.read()
            mid = a["id"]
            self.pending.pop(mid)
            if "result" in a:
                self.acked[mid] = a["result"]
            else:
                self.errors[mid] = a["error"]
            time.sleep(0.002)  # a steady trickle: many batches, not a few large ones

    def failed_since(self, n: int) -> list[dict[str, Any]]:
        return [e for mid, e in list(self.errors.items())[n:]]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def retry_all(d: Daemon, params: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with RawConnection(d.socket, timeout=30) as conn:
        for p in params:
            conn.send_request("message.ingest", p, rid=p["messageId"])
        for _ in params:
            a = conn.read()
            assert "result" in a, f"a retry failed: {a}"
            out[a["id"]] = a["result"]
    return out


def finish_and_check(d: Daemon, senders: list[OrderedSender]) -> int:
    """Restart without faults, retry everything unacknowledged, check exactly-once. Returns the
    number of acknowledged messages checked."""
    acked: dict[str, dict[str, Any]] = {}
    unacked: list[dict[str, Any]] = []
    for s in senders:
        acked.update(s.acked)
        unacked += [s.sent[m] for m in s.errors] + list(s.pending.values())
    d.wrapper = []
    d.restart()
    for mid, answer in retry_all(d, unacked).items():
        assert mid not in acked
        acked[mid] = answer
    assert d.stop() == 0
    counts: Counter[str] = Counter()
    where: dict[str, tuple[str, str]] = {}
    for path, lines in d.transcripts().items():
        check_v3(path, lines)
        counts.update(message_ids(lines))
        for e in lines[1:]:
            mid = (e.get("origin") or {}).get("messageId")
            if mid is not None:
                where[mid] = (lines[0]["id"], e["id"])
    assert not [m for m, n in counts.items() if n > 1], "a message was stored twice"
    assert not [m for m in acked if counts[m] != 1], "an acknowledged message was lost"
    for mid, answer in acked.items():
        assert where[mid] == (answer["sessionId"], answer["entryId"]), mid
    return len(acked)


def journal_has_no_garbage(d: Daemon) -> None:
    """Each journal file begins with intact frames, CRC-checked as replay checks them (the
    header plain, the frames after it with the header's salt), and the file the failed batches
    went to was cut back to its last whole frame: it ends there. (A ready file reused in place
    may go on after its frames with zeros written ahead or an older generation's bytes, where
    replay stops: not garbage, and not decidable from outside, so only one file must end at its
    frames.)"""
    ends = []
    for p in sorted((d.state_dir / "journal").glob("*.wal")):
        data = p.read_bytes()
        pos = 0
        salt = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            head = data[pos:nl].split(b"\t") if nl >= 0 else []
            if len(head) != 3 or head[0] != b"B" or not head[2].isdigit():
                break
            body = data[nl + 1 : nl + 1 + int(head[2])]
            if len(body) != int(head[2]) or head[1] != b"%08x" % zlib.crc32(body, salt):
                break
            if pos == 0:
                salt = salt_of(next(decode_file(data[: nl + 1 + len(body)])))
            pos = nl + 1 + len(body)
        assert pos > 0, f"{p.name}: no intact header"
        ends.append(pos == len(data))
    assert any(ends), "no journal file ends at its last whole frame: a failed batch was left"


def failures_logged(d: Daemon) -> int:
    """Failed batches and checkpoints, as the logs count them: a repeated write failure is
    logged once per 10 s with the number left out, and `store.write_resumed` counts a streak."""
    logs = d.logs()
    checkpoints = ("store.checkpoint_failed", "store.checkpoint_deferred")
    written = sum(
        1 + int(e.get("failuresNotLogged", 0))
        for e in logs
        if e.get("event") == "store.write_failed"
    )
    streaks = sum(int(e["failedBatches"]) for e in logs if e.get("event") == "store.write_resumed")
    return max(written, streaks) + sum(1 for e in logs if e.get("event") in checkpoints)


def start(launch: Launch) -> tuple[Daemon, Faulty, list[OrderedSender]]:
    d = launch(CONFIG, start=False)
    faulty = Faulty(d)
    d.start()
    senders = [OrderedSender(d.socket, f"s{i}") for i in range(2)]
    for s in senders:
        s.start()
    wait_until(lambda: all(len(s.acked) > 20 for s in senders), 20, "the first acks")
    return d, faulty, senders


def stop(senders: list[OrderedSender]) -> None:
    for s in senders:
        s.stopping.set()
    for s in senders:
        s.join(30)
        assert not s.is_alive()
        assert s.failure is None, s.failure


@pytest.mark.slow
@pytest.mark.usefixtures("fiu_ok")
@pytest.mark.parametrize("call", ["fdatasync", "fsync"])
def test_a_failed_sync_is_never_acknowledged_and_stops_the_store(launch: Launch, call: str) -> None:
    """fdatasync fails in the journal's sync (or a checkpoint's); fsync in a checkpoint's
    registry write or folder sync. Either way the store stops, also once the disk recovers."""
    d, faulty, senders = start(launch)
    name = f"posix/io/sync/{call}"
    faulty.enable(name, EIO)
    wait_until(lambda: any(s.errors for s in senders), 20, "a 1004 after the failed sync")
    faulty.disable(name)
    status = d.call("status")
    assert status["storage"] != "ok" and "sync failed" in status["storage"], status
    # From the moment the store says so, nothing is acknowledged any more, although the disk
    # works again: a failed sync is never retried and then trusted. (A batch whose own journal
    # sync succeeded just before may still be answered after another one's 1004: that answer is
    # true.)
    with RawConnection(d.socket, timeout=30) as late:
        for i in range(20):
            late.send_request("message.ingest", ingest_params("late", f"after {i}"))
        answers = [late.read() for _ in range(20)]
    assert all(a.get("error", {}).get("code") == STORAGE_UNAVAILABLE for a in answers), answers
    time.sleep(0.3)
    acked_before = {id(s): len(s.acked) for s in senders}
    time.sleep(0.5)
    assert {id(s): len(s.acked) for s in senders} == acked_before, "acknowledged while stopped"
    stop(senders)
    for s in senders:
        assert all(e["code"] == STORAGE_UNAVAILABLE for e in s.errors.values()), s.errors
    faults = failures_logged(d)
    assert faults >= 1
    assert d.stop() == 0
    checked = finish_and_check(d, senders)
    tally("injected faults (libfiu)", faults, test=f"{call} EIO")
    print(f"[reliability] {call} EIO: {checked} acknowledged messages checked")


@pytest.mark.slow
@pytest.mark.usefixtures("fiu_ok")
def test_a_full_disk_is_not_acknowledged_leaves_no_garbage_and_passes_by_itself(
    launch: Launch,
) -> None:
    d, faulty, senders = start(launch)
    name = "posix/io/rw/pwrite"
    before = [len(s.errors) for s in senders]
    faulty.enable(name, ENOSPC)
    wait_until(lambda: any(s.errors for s in senders), 20, "a 1004 while the disk is full")
    time.sleep(1.0)  # several failed batches, and a checkpoint attempt (its journal switch)
    journal_has_no_garbage(d)
    for s, n in zip(senders, before, strict=True):
        assert all(e["code"] == STORAGE_UNAVAILABLE for e in s.failed_since(n))
    acked_while_full = sum(len(s.acked) for s in senders)
    faulty.disable(name)
    # Space is free again: writes resume without a restart.
    wait_until(
        lambda: sum(len(s.acked) for s in senders) > acked_while_full + 50,
        20,
        "acknowledgements once space is free",
    )
    assert d.call("status")["storage"] == "ok"
    stop(senders)
    faults = failures_logged(d)
    assert faults >= 1
    # Every batch failed while the disk was full, but the log says so once per 10 s (with how
    # many lines it left out) and once more when writes resume.
    lines = [e for e in d.logs() if e.get("event") == "store.write_failed"]
    [resumed] = [e for e in d.logs() if e.get("event") == "store.write_resumed"]
    assert 1 <= len(lines) <= 3
    assert resumed["failedBatches"] >= len(lines)
    events = Counter(e.get("event") for e in d.logs())
    print(f"[reliability] pwrite ENOSPC events: {events}")
    assert d.stop() == 0
    checked = finish_and_check(d, senders)
    tally("injected faults (libfiu)", faults, test="pwrite ENOSPC")
    print(f"[reliability] pwrite ENOSPC: {checked} acknowledged messages checked")


@pytest.mark.slow
@pytest.mark.usefixtures("fiu_ok")
def test_random_write_failures_under_load_lose_and_double_nothing(launch: Launch) -> None:
    """One pwrite in five fails with ENOSPC for two seconds: some batches fail, others pass,
    checkpoints are deferred and retried; in the end every acknowledged message is there once."""
    d, faulty, senders = start(launch)
    name = "posix/io/rw/pwrite"
    faulty.enable(name, ENOSPC, probability=0.2)
    time.sleep(2.0)
    faulty.disable(name)
    acked = sum(len(s.acked) for s in senders)
    wait_until(lambda: sum(len(s.acked) for s in senders) > acked + 50, 20, "writes to resume")
    assert d.call("status")["storage"] == "ok"
    stop(senders)
    faults = failures_logged(d)
    assert d.stop() == 0
    checked = finish_and_check(d, senders)
    tally("injected faults (libfiu)", faults, test="random pwrite ENOSPC")
    print(f"[reliability] random pwrite ENOSPC: {faults} faults, {checked} messages checked")

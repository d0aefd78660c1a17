"""Durability (SPEC 2, 4.4): an acknowledgement never precedes the sync that covers it, and a torn
last line is cut off at start-up without losing a byte of any complete line."""

from __future__ import annotations

import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.conftest import Launch
from e2e.harness import RawConnection, check_v3, ingest_params, read_transcript

# Only the traced calls stop the daemon (seccomp-bpf), so strace barely slows anything else.
STRACE = ["strace", "--seccomp-bpf", "-f"]
# Long enough that a loaded machine (load 20 on 2 cores) answers `status` well within it: the
# tests check the order of the answers, not their times.
SYNC_DELAY_US = 2_000_000
SYNC_DELAY_S = SYNC_DELAY_US / 1e6


def strace_can_delay_syncs(tmp_path: Path) -> str | None:
    """None when strace can delay fdatasync here; else why not (the reason to skip)."""
    if shutil.which("strace") is None:
        return "strace is not installed (CI installs it: apt-get install strace)"
    target = str(tmp_path / "probe")
    probe = (
        f"import os,time;fd=os.open({target!r},os.O_WRONLY|os.O_CREAT);t=time.monotonic();"
        "os.fdatasync(fd);print(time.monotonic()-t)"
    )
    cmd = [
        *STRACE,
        "-o",
        "/dev/null",
        "-e",
        "trace=fdatasync",
        "-e",
        "inject=fdatasync:delay_enter=300000",
        sys.executable,
        "-c",
        probe,
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=20, text=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"strace does not run here: {e}"
    if out.returncode != 0:
        return f"strace cannot trace here (ptrace not permitted?): {out.stderr.strip()[:200]}"
    try:
        took = float(out.stdout.strip())
    except ValueError:
        return f"unexpected probe output {out.stdout!r}"
    if took < 0.25:
        return "this strace does not support inject=...:delay_enter"
    return None


def unanswered(conn: RawConnection) -> bool:
    """Whether nothing has arrived on `conn` yet (its request is still being handled)."""
    return not conn.buf and not select.select([conn.sock], [], [], 0)[0]


@pytest.fixture
def strace_ok(tmp_path: Path) -> None:
    reason = strace_can_delay_syncs(tmp_path)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.usefixtures("strace_ok")
def test_an_ack_waits_for_a_slowed_sync_while_status_answers_at_once(launch: Launch) -> None:
    d = launch()
    first = d.call("message.ingest", ingest_params("42", "creates the session"))
    assert first["created"]
    assert d.stop() == 0
    # From now on every fdatasync of the daemon (all threads) takes 0.7 s longer.
    d.wrapper = [
        *STRACE,
        "-o",
        "/dev/null",
        "-e",
        "trace=fdatasync",
        "-e",
        f"inject=fdatasync:delay_enter={SYNC_DELAY_US}",
    ]
    d.restart()
    probe = d.raw(timeout=30)
    watcher = d.raw(timeout=30)
    for i in range(2):
        started = time.monotonic()
        rid = probe.send_request("message.ingest", ingest_params("42", f"probe {i}"))
        # While the ingest waits for its sync, another client is served: its answer comes
        # while the ingest is still unacknowledged.
        assert "result" in watcher.call("status")
        assert unanswered(probe), "status waited for another client's sync"
        answer = probe.read()
        acked_after = time.monotonic() - started
        assert answer["id"] == rid and "result" in answer, answer
        assert acked_after >= SYNC_DELAY_S, f"acknowledged after {acked_after:.3f}s"
    d.kill()


@pytest.mark.slow
@pytest.mark.usefixtures("strace_ok")
def test_status_answers_while_a_new_agent_folder_is_being_synced(launch: Launch) -> None:
    """No session's slow I/O holds the others: not even creating a new agent's folder."""
    d = launch()
    d.call("message.ingest", ingest_params("42", "an agent that exists"))
    assert d.stop() == 0
    # From now on every sync (files and folders) takes SYNC_DELAY_S longer.
    d.wrapper = [
        *STRACE,
        "-o",
        "/dev/null",
        "-e",
        "trace=fdatasync,fsync",
        "-e",
        f"inject=fdatasync,fsync:delay_enter={SYNC_DELAY_US}",
    ]
    d.restart()
    probe = d.raw(timeout=60)
    watcher = d.raw(timeout=60)
    probe.send_request("message.ingest", ingest_params("42", "first", agentId="fresh"))
    assert "result" in watcher.call("status")
    assert unanswered(probe), "status waited for a new agent's folder to be synced"
    assert "result" in probe.read()
    d.kill()


SYSCALL = re.compile(r"^(\d+)\s+(?:\d\d:\d\d:\d\d\.\d+\s+)?(.*)$")


@pytest.mark.slow
@pytest.mark.usefixtures("strace_ok")
def test_the_ack_is_written_after_the_journal_sync_that_covers_it(launch: Launch) -> None:
    """Syscall order: the entry is written, then a sync of that file starts and completes, then
    the answer leaves on the socket."""
    d = launch(start=False)
    trace = d.workdir / "strace.txt"
    d.wrapper = [
        *STRACE,
        "-tt",
        "-y",
        "-s",
        "4096",
        "-o",
        str(trace),
        "-e",
        "trace=fdatasync,fsync,write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg",
        "-e",
        "inject=fdatasync,fsync:delay_enter=100000",
    ]
    d.start()
    d.call("message.ingest", ingest_params("42", "warm up"))
    probe = d.raw(timeout=30)
    answer = probe.call("message.ingest", ingest_params("42", "x", messageId="probe-7f3a9c"))
    assert "result" in answer
    assert d.stop() == 0
    entry_id = answer["result"]["entryId"]
    lines = trace.read_text(errors="replace").splitlines()

    # The answer on the socket: the first write to a socket that carries the probe's entry id.
    sent_at = next(
        (
            i
            for i, line in enumerate(lines)
            if re.search(r"\b(sendto|sendmsg|write|writev)\(\d+<(socket|UNIX)", line)
            and f'\\"entryId\\":\\"{entry_id}\\"' in line
        ),
        None,
    )
    assert sent_at is not None, "the answer was not found in the trace"
    # Every file of the state folder the probe's entry was written to before the answer.
    writes: dict[str, int] = {}
    for i, line in enumerate(lines[:sent_at]):
        if "probe-7f3a9c" in line and re.search(r"\bp?write(v|v2|64)?\(", line):
            m = re.search(r"\(\d+<([^>]+)>", line)
            if m and m.group(1).startswith(str(d.state_dir)):
                writes.setdefault(m.group(1), i)
    assert writes, "the probe's entry was not written to any file before its answer"
    # One of them was synced: a sync of that file began after the write and ended before the
    # answer was written.
    covered = []
    for path, written_at in writes.items():
        sync = re.compile(r"f(data)?sync\(\d+<" + re.escape(path) + ">")
        began: dict[str, bool] = {}
        for line in lines[written_at + 1 : sent_at]:
            m = SYSCALL.match(line)
            if not m:
                continue
            pid, call = m.groups()
            if sync.match(call):
                if "<unfinished" in call:
                    began[pid] = True
                elif re.search(r"= 0\b", call):
                    covered.append(path)
                    break
            elif (
                re.match(r"<\.\.\. f(data)?sync resumed>", call)
                and began.pop(pid, False)
                and re.search(r"= 0\b", call)
            ):
                covered.append(path)
                break
    assert covered, f"no file holding the entry was synced before the answer: {sorted(writes)}"


# ---------------------------------------------------------------------------------------------
# Torn tails

FRAGMENT = b'{"type":"message","id":"dead'


def test_a_torn_last_line_is_cut_off_and_kept_beside_the_transcript(launch: Launch) -> None:
    d = launch()
    with d.client() as c:
        acks = [c.call("message.ingest", ingest_params("42", f"m{i}")) for i in range(5)]
    assert d.stop() == 0
    path = d.sessions_dir() / f"{acks[0]['sessionId']}.jsonl"
    complete = path.read_bytes()
    with open(path, "ab") as f:
        f.write(FRAGMENT)
    d.restart()
    assert path.read_bytes() == complete, "every complete line is kept, byte for byte"
    torn = sorted(d.sessions_dir().glob(f"{path.name}.torn-*"))
    assert len(torn) == 1, sorted(p.name for p in d.sessions_dir().iterdir())
    assert torn[0].read_bytes() == FRAGMENT
    history = d.call("sessions.history", {"sessionKey": acks[0]["sessionKey"]})
    assert [e["id"] for e in history["entries"]] == [a["entryId"] for a in reversed(acks)]
    with d.client() as c:
        more = [c.call("message.ingest", ingest_params("42", f"n{i}")) for i in range(3)]
    assert d.stop() == 0
    data = path.read_bytes()
    assert data.startswith(complete)
    lines = read_transcript(path)
    check_v3(path, lines)
    assert [e["id"] for e in lines[1:]] == [a["entryId"] for a in acks + more]
    assert torn[0].read_bytes() == FRAGMENT, "the side file is left alone"


def test_a_torn_tail_in_several_transcripts_is_repaired_in_each(launch: Launch) -> None:
    d = launch({"session": {"dmScope": "per-peer"}})
    with d.client() as c:
        acks = [c.call("message.ingest", ingest_params(f"p{i}", "hello")) for i in range(3)]
    assert d.stop() == 0
    paths = [d.sessions_dir() / f"{a['sessionId']}.jsonl" for a in acks]
    before = {p: p.read_bytes() for p in paths}
    for n, p in enumerate(paths):
        with open(p, "ab") as f:
            f.write(FRAGMENT[: 5 + 7 * n])
    d.restart()
    for n, p in enumerate(paths):
        assert p.read_bytes() == before[p]
        (side,) = d.sessions_dir().glob(f"{p.name}.torn-*")
        assert side.read_bytes() == FRAGMENT[: 5 + 7 * n]


def test_a_clean_restart_leaves_transcripts_untouched(launch: Launch) -> None:
    d = launch()
    ack = d.call("message.ingest", ingest_params("42", "hello"))
    assert d.stop() == 0
    path = d.sessions_dir() / f"{ack['sessionId']}.jsonl"
    before = path.read_bytes()
    d.restart()
    assert d.stop() == 0
    assert path.read_bytes() == before
    assert not list(d.sessions_dir().glob("*.torn-*"))

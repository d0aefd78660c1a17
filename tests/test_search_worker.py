"""The index worker (daemon/search/worker.py): passes run as jobs of the daemon's one worker
mechanism (daemon/workers.py `Pool`), in a process of their own below the daemon's priority that
keeps the index open between passes; and the daemon's end of it (SearchService), which halts a
pass at a safe point when it stops (the pass commits first), reaps the worker however the
daemon's task group ends, and starts it again when it dies, losing nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from daemon import workers as workers_mod
from daemon.core.protocol import parse_search
from daemon.search import SearchIndex, SearchService, index_path
from daemon.search import service as service_mod
from daemon.search.worker import OpenFailed, PassRequest, index_pass, open_index
from daemon.store.store import Batch
from daemon.store.transcript import header_line, iso_ms, message_line
from daemon.workers import Pool

T0 = 1_795_000_000_000

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write_transcript(state: Path, sid: str, texts: list[str], agent: str = "main") -> Path:
    folder = state / "agents" / agent / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sid}.jsonl"
    lines = [header_line(sid, f"agent:{agent}:{sid}", T0, "/w")]
    for i, text in enumerate(texts):
        msg = {"role": "user", "content": [{"type": "text", "text": text}]}
        lines.append(message_line(f"{i + 1:08x}", None, iso_ms(T0 + i), msg))
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def docs_in_index(state: Path) -> tuple[int, int]:
    """(entries, distinct (file, offset) pairs): equal when nothing was indexed twice."""
    idx = SearchIndex(index_path(state), state, lambda a: state / "workspace")
    idx.open()
    try:
        assert idx.conn is not None
        (docs,) = idx.conn.execute("SELECT count(*) FROM docs").fetchone()
        (distinct,) = idx.conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT file_id, off FROM docs)"
        ).fetchone()
    finally:
        idx.close()
    return docs, distinct


def count(state: Path, word: str) -> int:
    """Entries in the index with this word (all of them: a search answers at most 200)."""
    path = index_path(state)
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (n,) = conn.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", (word,)).fetchone()
    finally:
        conn.close()
    return int(n)


def gone(pid: int) -> bool:
    """No such process, not even a zombie of ours waiting to be reaped."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return False


def proc_text(path: str) -> str:
    return Path(path).read_text()


def read_chars(pid: int) -> int:
    """Bytes the process has read so far (/proc/<pid>/io rchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def stopped(pid: int) -> bool:
    return "\nState:\tT" in proc_text(f"/proc/{pid}/status")


def pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits to be delivered to the (stopped) process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


async def eventually(check: Any, seconds: float = 60) -> None:
    """Poll `check`: what it looks at is another process's doing."""
    with anyio.fail_after(seconds):
        for _ in range(10_000_000):
            if check():
                return
            await anyio.sleep(0.01)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    root.mkdir()
    return root


def big_corpus(state: Path, sessions: int = 300, lines: int = 40) -> int:
    for n in range(sessions):
        write_transcript(state, f"s{n}", [f"walrus {i} in session {n}" for i in range(lines)])
    return sessions * lines


# ---------------------------------------------------------------------------------------------
# The jobs, in a real worker process


async def test_passes_run_in_one_worker_process_that_keeps_the_index_open(state: Path) -> None:
    write_transcript(state, "s1", ["the zeppelin docks", "a zeppelin again"])
    memory = state / "elsewhere" / "memory"
    memory.mkdir(parents=True)
    (memory / "2026-11-20.md").write_text("- zeppelin notes\n")
    pool = Pool("search", 1)
    try:
        with anyio.fail_after(60):
            db = await pool.run(open_index, str(state))
            st = os.stat(index_path(state))
            assert db == (st.st_dev, st.st_ino)
            # The workspace comes with the request (the daemon's reloadable config).
            req = PassRequest(str(state), ("main",), {"main": str(state / "elsewhere")})
            done = await pool.run(index_pass, req)
            assert done.db == db and done.stats is not None
            assert done.stats["docs"] == 3 and done.stats["files"] == 2
            [pid] = pool.pids
            assert pid != os.getpid()
            fds = f"/proc/{pid}/fd"
            held = {os.readlink(f"{fds}/{fd}") for fd in os.listdir(fds)}
            assert str(index_path(state)) in held  # open between passes
            again = await pool.run(index_pass, req)
            assert again.stats is not None and again.stats["docs"] == 0
            assert pool.started == 1 and pool.pids == [pid]
    finally:
        await pool.aclose()
    assert gone(pid)
    assert count(state, "zeppelin") == 3


async def test_the_worker_runs_below_the_daemons_priority(state: Path) -> None:
    write_transcript(state, "s1", ["hello"])
    pool = Pool("search", 1, nice=7)
    try:
        with anyio.fail_after(60):
            await pool.run(index_pass, PassRequest(str(state)))  # opens the index on first use
        [pid] = pool.pids
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        threads = os.listdir(f"/proc/{pid}/task")
        assert threads
        for t in threads:
            nice = int(proc_text(f"/proc/{pid}/task/{t}/stat").rsplit(")", 1)[1].split()[16])
            assert nice == min(mine + 7, 19), t
    finally:
        await pool.aclose()


async def test_a_worker_that_cannot_open_the_index_says_why(state: Path) -> None:
    (state / "index").write_text("a file where the folder should be")
    pool = Pool("search", 1)
    try:
        with anyio.fail_after(60), pytest.raises(OpenFailed, match="index"):
            await pool.run(open_index, str(state))
        with anyio.fail_after(60), pytest.raises(OpenFailed, match="index"):
            await pool.run(index_pass, PassRequest(str(state)))
    finally:
        await pool.aclose()


async def test_a_stop_during_a_pass_commits_what_it_did_and_the_next_worker_goes_on(
    state: Path,
) -> None:
    total = big_corpus(state)
    pool = Pool("search", 1)
    try:
        with anyio.fail_after(120):
            await pool.run(open_index, str(state))
            [pid] = pool.pids
            before = read_chars(pid)
            scope = anyio.CancelScope()

            async def one_pass() -> None:
                with scope:
                    await pool.run(index_pass, PassRequest(str(state)), halt_seconds=60)

            async with anyio.create_task_group() as tg:
                tg.start_soon(one_pass)
                # Mid-pass: it has begun reading the transcripts. Stopped there, it gets the
                # daemon's request to halt, and goes on only once that is pending.
                await eventually(lambda: read_chars(pid) > before + 4096)
                os.kill(pid, signal.SIGSTOP)
                await eventually(lambda: stopped(pid))  # (a signal sent before goes first)
                scope.cancel()
                await eventually(lambda: pending(pid, signal.SIGUSR2))
                os.kill(pid, signal.SIGCONT)
            # It committed what it had done, answered, and was let go (not killed).
            await eventually(lambda: gone(pid))
            assert pool.pids == []
            kept = count(state, "walrus")
            assert kept > 0
            done = await pool.run(index_pass, PassRequest(str(state)))
            assert done.stats is not None and done.stats["docs"] == total - kept
            assert pool.started == 2
    finally:
        await pool.aclose()
    assert docs_in_index(state) == (total, total)


async def test_a_worker_killed_mid_pass_loses_nothing_and_the_next_pass_catches_up(
    state: Path,
) -> None:
    total = big_corpus(state)
    pool = Pool("search", 1)
    try:
        with anyio.fail_after(120):
            await pool.run(open_index, str(state))
            [pid] = pool.pids
            before = read_chars(pid)
            died: list[BaseException] = []

            async def one_pass() -> None:
                try:
                    await pool.run(index_pass, PassRequest(str(state)))
                except workers_mod.WorkerDied as e:
                    died.append(e)

            async with anyio.create_task_group() as tg:
                tg.start_soon(one_pass)
                await eventually(lambda: read_chars(pid) > before + 4096)
                os.kill(pid, signal.SIGSTOP)  # mid-pass: nothing of it is committed yet
                os.kill(pid, signal.SIGKILL)
            [e] = died
            assert isinstance(e, workers_mod.WorkerDied) and e.code == -signal.SIGKILL
            assert count(state, "walrus") == 0  # its transaction never committed
            done = await pool.run(index_pass, PassRequest(str(state)))
            assert done.stats is not None and done.stats["docs"] == total
    finally:
        await pool.aclose()
    assert docs_in_index(state) == (total, total)


# ---------------------------------------------------------------------------------------------
# The daemon's end: SearchService in a task group


@dataclass
class Counters:
    batches: int = 0


async def test_cancelling_the_task_group_stops_and_reaps_the_worker(state: Path) -> None:
    write_transcript(state, "s1", ["hello zeppelin"])
    svc = SearchService(state, Counters(), lambda a: state / "workspace")
    async with anyio.create_task_group() as tg:
        await tg.start(svc.run)
        await eventually(lambda: svc.status()["passes"] >= 1)
        pid = svc.worker_pid
        assert pid is not None and pid != os.getpid()
        assert len((await svc.rpc(parse_search({"query": "zeppelin"})))["hits"]) == 1
        tg.cancel_scope.cancel()  # as when another of the daemon's tasks fails
    assert gone(pid)
    assert svc.status()["workerPid"] is None


async def test_a_worker_that_does_not_stop_in_time_is_killed_and_reaped(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers_mod, "GRACE_SECONDS", 0.5)
    svc = SearchService(state, Counters(), lambda a: state / "workspace")
    async with anyio.create_task_group() as tg:
        await tg.start(svc.run)
        await eventually(lambda: svc.status()["passes"] >= 1)
        pid = svc.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # hung: it cannot see its stdin close
        svc.stop()
    assert gone(pid)


async def test_a_killed_worker_is_started_again_and_searches_answer_meanwhile(
    state: Path,
) -> None:
    write_transcript(state, "s1", ["hello zeppelin"])
    counters = Counters()
    svc = SearchService(state, counters, lambda a: state / "workspace")
    async with anyio.create_task_group() as tg:
        await tg.start(svc.run)
        await eventually(lambda: svc.status()["passes"] >= 1)
        first = svc.worker_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert len((await svc.rpc(parse_search({"query": "zeppelin"})))["hits"]) == 1
        await eventually(lambda: svc.worker_pid not in (None, first))
        assert gone(first)
        assert svc.status()["workerStarts"] == 2
        write_transcript(state, "s2", ["a walrus after the restart"])
        counters.batches += 1  # as the pipeline counts a batch written
        await eventually(lambda: count(state, "walrus") == 1)
        svc.stop()


async def test_a_service_whose_worker_is_killed_mid_pass_finds_every_message_after(
    state: Path,
) -> None:
    write_transcript(state, "s-first", ["hello zeppelin"])
    counters = Counters()
    svc = SearchService(state, counters, lambda a: state / "workspace")
    async with anyio.create_task_group() as tg:
        await tg.start(svc.run)
        await eventually(lambda: svc.status()["passes"] >= 1)
        pid = svc.worker_pid
        assert pid is not None
        before = read_chars(pid)
        total = big_corpus(state)
        counters.batches += 1
        await eventually(lambda: read_chars(pid) > before + 4096)  # the pass reads them
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: svc.status()["workerStarts"] >= 2)
        await eventually(lambda: count(state, "walrus") == total)
        assert len((await svc.rpc(parse_search({"query": "zeppelin"})))["hits"]) == 1
        svc.stop()
    assert docs_in_index(state) == (total + 1, total + 1)


@dataclass
class Written:
    """What the service reads of a session a batch wrote to: its transcript's path."""

    rel_path: str


async def test_the_service_keeps_each_batchs_lines_per_transcript_for_the_next_pass(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = SearchService(state, Counters(), lambda a: state / "workspace")
    a, b = Written("agents/main/sessions/a.jsonl"), Written("agents/main/sessions/b.jsonl")
    svc.note(Batch(touched={1: (a, 100, [b"x1", b"x2"]), 2: (b, 0, [b"y1"])}))
    svc.note(Batch(touched={1: (a, 106, [b"x3"])}))  # a again before the pass
    svc.note(Batch(touched={1: (a, 109, [b"x4"])}))
    handed, runs = svc._take_handed()
    appended = PassRequest(str(state), handed=handed, runs=runs).appended()
    # b, written by one batch: its lines are handed over. a, written by several: the pass reads
    # them from its file (several lines per read), and none of them is kept.
    assert appended == {b.rel_path: (0, b"y1\n")}
    assert svc._take_handed() == (b"", {})
    svc.note(Batch(touched={1: (a, 112, [b"x5"])}))  # after the pass: kept again
    handed, runs = svc._take_handed()
    assert PassRequest(str(state), handed=handed, runs=runs).appended() == {
        a.rel_path: (112, b"x5\n")
    }
    monkeypatch.setattr(service_mod, "MAX_HANDED_BYTES", 8)
    svc.note(Batch(touched={1: (a, 115, [b"x6", b"x7", b"x8"])}))
    svc.note(Batch(touched={2: (b, 3, [b"y2"])}))
    assert svc._take_handed() == (b"", {})  # too much waited: that pass reads the files
    svc.note(Batch(touched={1: (a, 121, [b"x8"])}))  # and the next pass gets what follows
    handed, runs = svc._take_handed()
    assert PassRequest(str(state), handed=handed, runs=runs).appended() == {
        a.rel_path: (121, b"x8\n")
    }

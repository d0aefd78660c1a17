"""The index worker (daemon/search/worker.py): a process of its own, below the daemon's priority,
that runs every pass and answers over a pipe, one JSON object per line; and the daemon's end of
it (daemon/search/child.py, SearchService), which stops and reaps it however the daemon's task
group ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from daemon.core.protocol import parse_search
from daemon.search import SearchIndex, SearchService, index_path
from daemon.search import child as child_mod
from daemon.search.worker import PassRequest, parse_request
from daemon.store.transcript import header_line, iso_ms, message_line

T0 = 1_795_000_000_000


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


def count(state: Path, query: str) -> int:
    from daemon.core.protocol import parse_search

    idx = SearchIndex(index_path(state), state, lambda a: state / "workspace")
    try:
        return len(idx.readers.search(parse_search({"query": query, "limit": 200})))
    finally:
        idx.close()


# ---------------------------------------------------------------------------------------------
# The requests (pure)


def test_a_pass_request_carries_the_agents_their_workspaces_and_the_log_settings() -> None:
    req = parse_request(
        {"op": "pass", "n": 3, "agents": ["main", "ops"], "workspaces": {"main": "/w"},
         "log": ["debug", "console"]}
    )  # fmt: skip
    assert req == PassRequest(3, ("main", "ops"), {"main": "/w"}, ("debug", "console"))
    assert parse_request({"op": "stop"}) is None


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"op": "build"},
        {"op": "pass", "n": "1", "agents": [], "workspaces": {}},
        {"op": "pass", "n": True, "agents": [], "workspaces": {}},
        {"op": "pass", "n": 1, "agents": [1], "workspaces": {}},
        {"op": "pass", "n": 1, "agents": [], "workspaces": {"main": 2}},
        {"op": "pass", "n": 1, "agents": [], "workspaces": {}, "log": ["loud", "json"]},
    ],
)
def test_a_malformed_request_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_request(bad)


# ---------------------------------------------------------------------------------------------
# The worker process, spoken to directly


class Worker:
    def __init__(self, state: Path, nice: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.search.worker", "--state-dir", str(state),
             "--nice", str(nice)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.n = 0

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the worker ended: {self.stderr()}"
        reply = orjson.loads(line)
        assert isinstance(reply, dict)
        return reply

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(obj) + b"\n")
        self.proc.stdin.flush()

    def ask_pass(self, workspaces: dict[str, str] | None = None) -> None:
        self.n += 1
        self.send({"op": "pass", "n": self.n, "agents": ["main"], "workspaces": workspaces or {}})

    def run_pass(self, workspaces: dict[str, str] | None = None) -> dict[str, Any]:
        self.ask_pass(workspaces)
        return self.read()

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):  # a pipe already broken
                    f.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    root.mkdir()
    return root


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close()


def test_the_worker_opens_the_index_runs_passes_and_exits_when_asked(
    state: Path, workers: list[Worker]
) -> None:
    write_transcript(state, "s1", ["the zeppelin docks", "a zeppelin again"])
    memory = state / "elsewhere" / "memory"
    memory.mkdir(parents=True)
    (memory / "2026-11-20.md").write_text("- zeppelin notes\n")
    w = Worker(state)
    workers.append(w)
    opened = w.read()
    st = os.stat(index_path(state))
    assert opened == {"open": [st.st_dev, st.st_ino]}
    reply = w.run_pass({"main": str(state / "elsewhere")})  # the workspace comes with the request
    assert reply["n"] == 1 and reply["db"] == opened["open"]
    assert reply["stats"]["docs"] == 3 and reply["stats"]["files"] == 2
    assert w.run_pass({"main": str(state / "elsewhere")})["stats"]["docs"] == 0
    w.send({"op": "stop"})
    assert w.wait() == 0
    assert count(state, "zeppelin") == 3


def test_the_worker_runs_below_the_daemons_priority(state: Path, workers: list[Worker]) -> None:
    w = Worker(state, nice=7)
    workers.append(w)
    w.read()
    w.run_pass()  # every thread there is (main, requests) was started at that priority
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    threads = list(Path(f"/proc/{w.proc.pid}/task").iterdir())
    assert threads
    for t in threads:
        nice = int((t / "stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice == min(mine + 7, 19), t.name


def test_the_worker_exits_when_its_stdin_closes(state: Path, workers: list[Worker]) -> None:
    w = Worker(state)
    workers.append(w)
    w.read()
    assert w.proc.stdin is not None
    w.proc.stdin.close()  # the daemon is gone
    assert w.wait() == 0


def test_a_stop_during_a_pass_keeps_what_was_committed_and_the_next_worker_goes_on(
    state: Path, workers: list[Worker]
) -> None:
    for n in range(150):
        write_transcript(state, f"s{n}", [f"walrus {i} in session {n}" for i in range(40)])
    w = Worker(state)
    workers.append(w)
    w.read()
    w.ask_pass()
    w.send({"op": "stop"})  # while the pass reads: it commits what it did, then exits
    assert w.wait(30) == 0
    assert w.proc.stdout is not None and w.proc.stdout.read() == b""  # cut short: no answer
    assert count(state, "walrus") > 0
    again = Worker(state)
    workers.append(again)
    again.read()
    again.run_pass()
    again.send({"op": "stop"})
    assert again.wait() == 0
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
    assert docs == distinct == 150 * 40


def test_a_worker_that_cannot_open_the_index_says_why_and_exits(
    state: Path, workers: list[Worker]
) -> None:
    (state / "index").write_text("a file where the folder should be")
    w = Worker(state)
    workers.append(w)
    reply = w.read()
    assert "unavailable" in reply and "index" in reply["unavailable"]
    assert w.wait() == 1


def test_a_request_the_worker_does_not_understand_ends_it(
    state: Path, workers: list[Worker]
) -> None:
    w = Worker(state)
    workers.append(w)
    w.read()
    w.send({"op": "explode"})
    assert w.wait() == 0
    assert "search.worker_bad_request" in w.stderr()


# ---------------------------------------------------------------------------------------------
# The daemon's end: SearchService in a task group


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Counters:
    batches: int = 0


def reaped(pid: int) -> bool:
    """The process is gone and was waited for (not a zombie of ours)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return False


async def eventually(check: Any) -> None:
    """Poll `check` for up to 10 s: what it looks at is another process's doing."""
    with anyio.fail_after(10):
        for _ in range(100_000):
            if check():
                return
            await anyio.sleep(0.02)


@pytest.mark.anyio
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
    assert reaped(pid)
    assert svc.status()["workerPid"] is None


@pytest.mark.anyio
async def test_a_worker_that_does_not_stop_in_time_is_killed_and_reaped(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(child_mod, "STOP_SECONDS", 0.5)
    svc = SearchService(state, Counters(), lambda a: state / "workspace")
    async with anyio.create_task_group() as tg:
        await tg.start(svc.run)
        await eventually(lambda: svc.status()["passes"] >= 1)
        pid = svc.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # hung: it cannot read the request to stop
        svc.stop()
    assert reaped(pid)


@pytest.mark.anyio
async def test_a_killed_worker_is_started_again_and_searches_answer_meanwhile(
    state: Path, monkeypatch: pytest.MonkeyPatch
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
        assert reaped(first)
        assert svc.status()["workerStarts"] == 2
        write_transcript(state, "s2", ["a walrus after the restart"])
        counters.batches += 1  # as the pipeline counts a batch written
        assert len((await svc.rpc(parse_search({"query": "walrus"})))["hits"]) == 1
        svc.stop()

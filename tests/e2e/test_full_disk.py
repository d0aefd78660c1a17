"""Start-up on a really full disk (issue 12, item 7): the daemon starts, serves reads, says in
`status` that storage is unavailable, answers writes with 1004, and recovers on its own once
space returns. The state folder lives on a small tmpfs the test mounts (root only; skipped,
saying why, where mounting is not allowed)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.client import RpcError
from e2e.conftest import Launch
from e2e.harness import ingest_params, short_workdir

STORAGE_UNAVAILABLE = 1004


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = short_workdir(tmp_path) / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill the file system with one file outside the state folder; returns it."""
    filler = disk / "filler"
    chunk = b"\xff" * (64 << 10)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def wait_for(pred: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def search(d: Any, query: str) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = d.call("memory.search", {"query": query})["hits"]
    return hits


def search_when_open(d: Any, query: str) -> list[dict[str, Any]] | None:
    """Hits, or None while the index worker is still starting (a loaded machine) or cannot
    open the index for lack of space."""
    try:
        return search(d, query)
    except RpcError as e:
        if "still opening" in str(e) or "disk is full" in str(e):
            return None
        raise


def texts(d: Any, key: str) -> list[str]:
    """The texts of a session's messages, oldest first (`sessions.history` pages newest first)."""
    out = []
    for e in reversed(d.call("sessions.history", {"sessionKey": key})["entries"]):
        content = e.get("message", {}).get("content") if e.get("type") == "message" else None
        if isinstance(content, str):
            out.append(content)
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "text":
                out.append(part["text"])
    return out


@pytest.mark.parametrize("crash", [True, False], ids=["after-a-crash", "after-a-clean-stop"])
def test_start_up_on_a_full_disk_serves_reads_and_recovers_when_space_returns(
    launch: Launch, small_disk: Path, crash: bool
) -> None:
    d = launch(state_dir=small_disk / "state")
    sent = [f"m{i} harbour" for i in range(6)]
    acks = [d.call("message.ingest", ingest_params("p0", text)) for text in sent]
    key = acks[0]["sessionKey"]
    wait_for(lambda: search(d, "harbour"), "the search index to hold the messages")
    if crash:
        d.kill()  # the journal still holds the batches: start-up replays them and must write
    else:
        d.stop()
    filler = fill(small_disk)
    try:
        d.start()
        status = d.call("status")
        assert status["storage"].startswith("unavailable"), status["storage"]
        assert "No space left on device" in status["storage"]
        listed = d.call("sessions.list", {})
        assert {s["sessionKey"] for s in listed["sessions"]} == {a["sessionKey"] for a in acks}
        assert texts(d, key) == sent
        if not crash:
            assert wait_for(lambda: search_when_open(d, "harbour"), "search to answer")
        # After a crash SQLite must write to recover the index's WAL, so search says why it
        # is unavailable until there is space (then below it answers again).
        with pytest.raises(RpcError) as refused:
            d.call("message.ingest", ingest_params("p0", "while full"))
        assert refused.value.code == STORAGE_UNAVAILABLE
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()  # our own file, outside the state folder
    wait_for(lambda: d.call("status")["storage"] == "ok", "storage ok once space returned")
    d.call("message.ingest", ingest_params("p0", "after harbour"))
    assert texts(d, key) == [*sent, "after harbour"]
    wait_for(lambda: len(search_when_open(d, "harbour") or []) == 7, "search finds all again")
    assert d.stop() == 0


def test_status_says_storage_is_unavailable_while_writes_fail_and_ok_once_they_pass(
    launch: Launch, small_disk: Path
) -> None:
    d = launch(state_dir=small_disk / "state")
    key = d.call("message.ingest", ingest_params("p0", "before"))["sessionKey"]
    assert d.call("status")["storage"] == "ok"
    filler = fill(small_disk)
    try:
        with pytest.raises(RpcError) as refused:
            # Big enough that no page the journal or transcript already has can take it.
            d.call("message.ingest", ingest_params("p0", "x" * 20_000))
        assert refused.value.code == STORAGE_UNAVAILABLE
        storage = d.call("status")["storage"]
        assert storage.startswith("unavailable") and "No space left on device" in storage
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
    wait_for(lambda: d.call("status")["storage"] == "ok", "storage ok once space returned")
    d.call("message.ingest", ingest_params("p0", "after"))
    assert texts(d, key) == ["before", "after"]
    assert d.stop() == 0

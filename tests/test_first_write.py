"""A new session whose first write fails leaves no transcript behind (issue 13): not even an
empty one, which `doctor` and readers would take for a session without a header."""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from sim_disk import FaultyDisk
from test_backup import PER_PEER, call, msg, running

from daemon.core.protocol import parse_ingest
from daemon.errors import StorageUnavailable
from daemon.pipeline import Pipeline
from daemon.store import fileio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def transcripts(state: Path) -> dict[str, int]:
    folder = state / "agents" / "main" / "sessions"
    return {p.name: p.stat().st_size for p in folder.glob("*.jsonl")}


async def outcome(pipeline: Pipeline, params: dict[str, Any]) -> Any:
    done = anyio.Event()
    box: list[Any] = []

    def reply(o: Any) -> None:
        box.append(o)
        done.set()

    w = pipeline.ingest(parse_ingest(params), reply)
    if w is not None:
        await w
    await done.wait()
    return box[0]


@pytest.mark.anyio
async def test_a_failed_first_write_leaves_no_empty_transcript(tmp_path: Path) -> None:
    state = tmp_path / "state"
    disk = FaultyDisk(tmp_path, random.Random(1))
    old = fileio.install(disk)
    try:
        async with running(state, PER_PEER) as (_store, pipeline, _mirror):
            kept = await call(pipeline, "ingest", msg("1", "before the disk filled"))
            disk.faults = {"write": (errno.ENOSPC, 1.0)}  # transcripts are written with write()
            failed = await outcome(pipeline, msg("2", "a new session, disk full"))
            assert isinstance(failed, StorageUnavailable), failed
            assert disk.injected
            assert list(transcripts(state)) == [f"{kept['sessionId']}.jsonl"]
            assert all(size > 0 for size in transcripts(state).values())
            assert not [p for p in (state / "agents").rglob(".*tmp-*")], "temporary files left"
            disk.faults = {}
            again = await call(pipeline, "ingest", msg("2", "a new session, disk free"))
            assert again["created"] is True
            assert transcripts(state)[f"{again['sessionId']}.jsonl"] > 0
    finally:
        fileio.install(old)

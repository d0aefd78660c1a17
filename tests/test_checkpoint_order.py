"""The checkpoint's order of writes and syncs (Store.checkpoint_sync).

sessions.json rewrites and id-log lines are written before the transcripts' sync; when that sync
is one syncfs, it covers them, so they take no flush of their own, and their renames follow it.
When the transcripts are few (synced one by one), each file is synced by itself as before. A
sync that fails leaves no temporary file of ours and the old sessions.json in place.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from daemon.core.ids import next_entry_id, now_ms
from daemon.store import fileio
from daemon.store.fileio import FileIO, SyncFailed
from daemon.store.store import SYNCFS_ABOVE, Batch, Store
from daemon.store.transcript import message_line


class Recorder(FileIO):
    """The real calls, each noted with the file it acts on (relative to the state folder)."""

    def __init__(self, root: Path, fail_syncfs: bool = False) -> None:
        self.root = root
        self.fail_syncfs = fail_syncfs
        self.calls: list[tuple[str, str]] = []

    def _name(self, fd: int) -> str:
        path = os.readlink(f"/proc/self/fd/{fd}")
        return os.path.relpath(path, self.root)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.calls.append(("write", self._name(fd)))
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.calls.append(("fsync", self._name(fd)))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("fdatasync", self._name(fd)))
        super().fdatasync(fd)

    def syncfs(self, fd: int) -> bool:
        self.calls.append(("syncfs", ""))
        if self.fail_syncfs:
            raise SyncFailed(5, "Input/output error")
        return super().syncfs(fd)

    def replace(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        self.calls.append(("replace", os.path.relpath(dst, self.root)))
        super().replace(src, dst)

    def index(self, call: str, name_part: str = "") -> int:
        return next(i for i, (c, n) in enumerate(self.calls) if c == call and name_part in n)

    def synced(self, name_part: str) -> list[str]:
        return [c for c, n in self.calls if c in ("fsync", "fdatasync") and name_part in n]


def store_with_sessions(state: Path, count: int) -> Store:
    """A store with `count` new sessions written (one batch) and a message id remembered:
    everything a checkpoint writes is pending."""
    store = Store(state, dedup_max=10_000, dedup_window_ms=86_400_000)
    store.open()
    add_sessions(store, 0, count)
    return store


def add_sessions(store: Store, first: int, count: int) -> None:
    batch = Batch()
    for i in range(first, first + count):
        key = f"agent:main:telegram:direct:{i}"
        st, header = store.create_session("main", key, 1_000, {"chatType": "direct"})
        store.register(st)
        batch.created.append(st)
        store.add_line(batch, st, header, None)
        eid = next_entry_id(None)
        msg = {"role": "user", "content": "hi"}
        line = message_line(eid, None, "2026-01-01T00:00:00.000Z", msg)
        store.add_line(batch, st, line, eid)
    store.write_batch(batch)
    store.apply(batch)
    store.dedup.remember("main", ("telegram", "acct", f"m{first}"), now_ms(), {"sessionKey": "k"})


def checkpoint(store: Store, recorder: Recorder) -> None:
    registries = store.dirty_registries()
    dedup = store.dedup.snapshots()
    assert registries and dedup
    paths, dirs = store.switch_journal()
    old = fileio.install(recorder)
    try:
        store.checkpoint_sync(paths, dirs, registries, dedup)
    finally:
        fileio.install(old)


def registry_keys(state: Path) -> set[str]:
    data = (state / "agents" / "main" / "sessions" / "sessions.json").read_bytes()
    return set(orjson.loads(data))


def test_a_syncfs_checkpoint_covers_the_registry_and_id_log_written_before_it(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    store = store_with_sessions(state, SYNCFS_ABOVE + 4)
    rec = Recorder(state)
    checkpoint(store, rec)
    sync = rec.index("syncfs")
    # Written before the one syncfs ...
    assert rec.index("write", ".sessions.json.tmp-") < sync
    assert rec.index("write", "dedup/main.log") < sync
    # ... which made them durable: no flush of their own, and the rename after it.
    assert rec.synced(".sessions.json.tmp-") == []
    assert rec.synced("dedup/main.log") == []
    assert rec.index("replace", "sessions.json") > sync
    assert rec.index("fsync", "agents/main/sessions") > rec.index("replace", "sessions.json")
    # The journal's freed file is made ready last (journal invariant 2).
    assert rec.calls[-1][0] == "fdatasync" and rec.calls[-1][1].startswith("journal/")
    assert len(registry_keys(state)) == SYNCFS_ABOVE + 4
    assert not list(state.rglob(".*.tmp-*"))
    store.close()


def test_a_checkpoint_of_few_transcripts_syncs_each_file_itself(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = store_with_sessions(state, 2)
    rec = Recorder(state)
    checkpoint(store, rec)
    assert [c for c, _n in rec.calls if c == "syncfs"] == []
    assert rec.synced(".sessions.json.tmp-") == ["fsync"]
    assert rec.index("fsync", ".sessions.json.tmp-") < rec.index("replace", "sessions.json")
    assert rec.synced("dedup/main.log") == ["fdatasync"]
    assert len(registry_keys(state)) == 2
    store.close()


def test_a_failed_syncfs_leaves_no_temporary_file_and_the_old_registry(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = store_with_sessions(state, SYNCFS_ABOVE + 4)
    checkpoint(store, Recorder(state))
    before = (state / "agents" / "main" / "sessions" / "sessions.json").read_bytes()
    add_sessions(store, SYNCFS_ABOVE + 4, SYNCFS_ABOVE + 4)
    with pytest.raises(SyncFailed):
        checkpoint(store, Recorder(state, fail_syncfs=True))
    assert (state / "agents" / "main" / "sessions" / "sessions.json").read_bytes() == before
    assert not list(state.rglob(".*.tmp-*"))
    store.close()

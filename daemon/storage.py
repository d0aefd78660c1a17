"""A state folder on a full disk: start anyway, serve reads, refuse writes, recover by itself.

Opening the store writes (the journal replay, `sessions.json`, the idempotency snapshots, the
journal's fresh generation). On a full disk (ENOSPC, EDQUOT) that used to end start-up with a
traceback, so reads were down too. Now the daemon starts with what the failed open loaded (the
registries, archives: everything reads need), `status` says `storage: unavailable: ...`, and
every write is answered with 1004. A probe (a small temporary file of ours, written and synced)
also catches a disk that is full although start-up happened to write nothing.

`StorageWatch.run` then tries again with a growing pause (1 s doubling to 30 s): it opens the
state folder afresh in a new Store (exactly what a restart would do, so the journal replay stays
as idempotent as it is across restarts), and once that and the probe succeed, moves the new
store's state into the store every part of the daemon holds, and writes are taken again.

While running, a write that fails (the committer's batches, checkpoints) sets the store's
`write_error`, so `status` says storage is unavailable while writes fail; the probe clears it
once space is back (and the next write that succeeds does too).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon.errors import os_reason
from daemon.store.fsutil import FILE_MODE
from daemon.store.store import Store

log = structlog.get_logger("daemon.storage")

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
PROBE_BYTES = 64 << 10  # about one batch: less would pass on a disk that cannot take a batch
PAUSE_MIN = 1.0
PAUSE_MAX = 30.0


def is_space_error(e: OSError) -> bool:
    return e.errno in SPACE_ERRNOS


def probe(state_dir: Path) -> None:
    """Write and sync PROBE_BYTES into a temporary file of ours, then remove it (the only file
    ever removed here is this one). Raises OSError (ENOSPC on a full disk)."""
    tmp = state_dir / f".sessiond-space.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            view = memoryview(bytes(PROBE_BYTES))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class StorageWatch:
    """Opens the store, holding writes back while the disk is full, and takes them up again."""

    def __init__(self, store: Store, make_store: Callable[[], Store]) -> None:
        self.store = store
        self.make_store = make_store  # a new Store on the same folder, for the next try
        self.opened = False  # the store's open (replay, registries, journal) has completed

    async def open(self) -> dict[str, Any]:
        """`store.open()`; on a full disk, return with the store readable and marked unavailable
        (`run` finishes the job later). Raises OSError for any other failure."""
        try:
            counts = await anyio.to_thread.run_sync(self.store.open)
        except OSError as e:
            if not is_space_error(e):
                raise
            self._hold(e, "opening the state folder")
            return {"storageUnavailable": 1}
        self.opened = True
        try:
            await anyio.to_thread.run_sync(probe, self.store.state_dir)
        except OSError as e:
            if not is_space_error(e):
                raise
            self._hold(e, "the start-up probe")
        return counts

    def _hold(self, e: OSError, step: str) -> None:
        store = self.store
        store.broken = f"{os_reason(e)} ({step}); writes resume once there is space"
        store.recoverable = True
        log.error("store.unavailable", error=os_reason(e), errno=e.errno, step=step)

    def trouble(self) -> bool:
        s = self.store
        return (s.broken is not None and s.recoverable) or s.write_error is not None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Retry while storage is unavailable for lack of space; runs until cancelled."""
        task_status.started()
        pause = PAUSE_MIN
        while True:
            await anyio.sleep(pause)
            if not self.trouble():
                pause = PAUSE_MIN
                continue
            try:
                fresh = await anyio.to_thread.run_sync(self._try)
            except OSError as e:
                pause = min(pause * 2, PAUSE_MAX)
                if self.store.recoverable and not is_space_error(e):
                    log.warning("store.retry_failed", error=os_reason(e), errno=e.errno)
                continue
            pause = PAUSE_MIN
            if fresh is not None:
                self._adopt(fresh)
            if self.store.recoverable:
                self.store.broken = None
                self.store.recoverable = False
            self.store.write_error = None
            log.info("store.recovered")

    def _try(self) -> Store | None:
        """(worker thread) Open a new store when the first open did not complete (its writes
        are the test); else write the probe. Raises OSError while there is no space."""
        if self.opened:
            probe(self.store.state_dir)
            return None
        fresh = self.make_store()
        fresh.workspaces = dict(self.store.workspaces)
        try:
            fresh.open()
        except OSError:
            fresh.close()
            raise
        return fresh

    def _adopt(self, fresh: Store) -> None:
        """(event loop) Every part of the daemon holds `self.store`: give it the new state."""
        old = self.store
        state = dict(fresh.__dict__)
        state["workspaces"] = old.workspaces  # set by a reload meanwhile, maybe
        old.close()
        old.__dict__.update(state)
        self.opened = True

"""The few file-system primitives every store module shares: atomic writes, folder syncs, modes.

Every durable write in sessiond goes through here, so there is one place that knows the order
(temp file, fsync, rename, fsync of the folder) and one place a test can watch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection
from pathlib import Path

from daemon.failpoints import failpoint
from daemon.store import fileio

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_dir(path: Path) -> bool:
    """Create `path` (and parents) with mode 0700; return True when it did not exist before."""
    if path.is_dir():
        return False
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            fileio.mkdir(d, DIR_MODE)
        fsync_dir(d.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new, renamed files) durable."""
    fd = fileio.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fileio.fsync(fd)
    finally:
        fileio.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE, *, step: str = "file") -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file.

    Raises OSError when any step fails; the temporary file is then removed (it is ours).
    `step` names the failpoints on the way (`registry` for sessions.json: `registry.renamed`).
    """
    stage_atomic(path, data, mode, step=step).finish(())


class Staged:
    """A write a checkpoint begins before its sync and finishes after it (store.checkpoint_sync):
    one syncfs then makes it durable together with the transcripts, instead of a flush of its
    own. `finish(covered)` completes it, syncing whatever the syncfs of the devices in `covered`
    did not cover; `discard()` takes back what was begun (only our temporary files) when the
    checkpoint fails before `finish`."""

    def __init__(
        self,
        finish: Callable[[Collection[int]], None],
        discard: Callable[[], None] | None = None,
    ) -> None:
        self.finish = finish
        self.discard = discard or (lambda: None)


def stage_atomic(path: Path, data: bytes, mode: int = FILE_MODE, *, step: str = "file") -> Staged:
    """`atomic_write` in two halves: `data` goes into a temporary file beside `path` now, not
    synced; the Staged's `finish(covered)` fsyncs it (unless a syncfs of its device since then
    covered it), renames it over `path` and syncs the folder. The failpoints are atomic_write's
    (`<step>.temp_written` now, the others at `finish`). Raises OSError; the temporary file
    is then removed (it is ours)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = fileio.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data)
            dev = os.fstat(fd).st_dev
        finally:
            fileio.close(fd)
        failpoint(f"{step}.temp_written")
    except OSError:
        _remove_temp(tmp)
        raise

    def finish(covered: Collection[int]) -> None:
        try:
            if dev not in covered:
                sfd = fileio.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fileio.fsync(sfd)
                finally:
                    fileio.close(sfd)
            failpoint(f"{step}.temp_synced")
            fileio.replace(tmp, path)
        except OSError:
            _remove_temp(tmp)
            raise
        failpoint(f"{step}.renamed")
        fsync_dir(path.parent)
        failpoint(f"{step}.folder_synced")

    return Staged(finish, lambda: _remove_temp(tmp))


def _remove_temp(tmp: Path) -> None:
    # Only our own temporary file is ever removed.
    with contextlib.suppress(FileNotFoundError):
        fileio.unlink(tmp)


def write_new_file(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Create `path` holding `data` and fsync it; it must not exist (O_EXCL: nothing is ever
    overwritten). Raises FileExistsError when it does, OSError (SyncFailed for the sync) on a
    disk error. The caller syncs the folder when the new name must survive a crash too."""
    fd = fileio.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        fileio.fsync(fd)
    finally:
        fileio.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (regular files may write short on ENOSPC edges)."""
    view = memoryview(data)
    while view:
        n = fileio.write(fd, view)
        view = view[n:]


def sync_filesystem(folder: Path) -> bool:
    """syncfs(2) on the file system holding `folder`: one call instead of one fsync per file.

    Returns False when syncfs is not available (the caller then syncs file by file); raises
    OSError when the kernel reports a write-back error (Linux 5.8 and later report them).
    """
    fd = fileio.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return fileio.syncfs(fd)
    finally:
        fileio.close(fd)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; the daemon keeps many transcripts open."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft

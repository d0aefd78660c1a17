"""Importers: bring sessions kept by other programs into a sessiond state folder.

`import_openclaw` reads an OpenClaw state folder of either era (read-only: the source is never
changed), plans what to write (`openclaw.py`), and writes it verified (`writer.py`) while holding
the state folder's lock, so it never races a running daemon.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from daemon.importers.openclaw import OpenClawSource, SourceError
from daemon.importers.plan import Progress, Report
from daemon.importers.writer import apply_plan
from daemon.lock import LOCK_NAME, StateLock

__all__ = ["Progress", "Report", "SourceError", "import_openclaw"]


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def lock_is_held(state_dir: Path) -> bool:
    """Whether a daemon holds the state folder's lock, probed without creating anything."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def import_openclaw(
    source: Path,
    state_dir: Path,
    workspace_of: Callable[[str], Path],
    *,
    agent: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Import the OpenClaw folder `source` into `state_dir`.

    `workspace_of(agentId)` names an agent's workspace in the target (its memory files go to
    `<workspace>/memory/`). `agent` limits the import to that source agent; keys keep their
    agent id, so a source agent is never renamed. Raises SourceError when `source` is not an
    OpenClaw folder, names no such agent or overlaps the state folder, and StateLocked when a
    daemon holds the state folder; every other failure is a problem in the returned report.
    """
    progress = progress or Progress()
    src, dst = source.resolve(), state_dir.resolve()
    if _inside(src, dst) or _inside(dst, src):
        raise SourceError(
            f"the state folder {dst} and the source {src} overlap; import into another folder"
            " (a JSONL-era folder can also be used in place with `sessiond run --state-dir`)"
        )
    # The plan reads only the source, so a bad source is refused before anything is created;
    # the lock is probed first only to fail fast, and taken before the target is read.
    held_now = dst.is_dir() and lock_is_held(dst)
    if held_now and not dry_run:
        probe = StateLock(dst)
        probe.acquire()  # raises StateLocked naming the holder (unless it just let go)
        probe.release()
    with OpenClawSource(src, agent, progress) as reader:
        plan = reader.read()
        for m in plan.memory:
            ws = workspace_of(m.agent_id).resolve()
            if _inside(ws, src):
                raise SourceError(f"agent {m.agent_id}'s workspace {ws} is inside the source")
        if dry_run:
            report = apply_plan(plan, dst, workspace_of, dry_run=True, progress=progress)
        else:
            dst.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = StateLock(dst)
            lock.acquire()
            try:
                report = apply_plan(plan, dst, workspace_of, dry_run=False, progress=progress)
            finally:
                lock.release()
    if held_now:
        report.notes.append("a daemon holds the state folder's lock now: the import would refuse")
    return report

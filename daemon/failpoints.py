"""Failpoints: named steps where a test can make the daemon die or fail, to prove recovery.

    SESSIOND_FAILPOINTS="append.after_journal_sync=exit"        die there (os._exit(86))
    SESSIOND_FAILPOINTS="registry.renamed=exit@3"               die the 3rd time it is reached
    SESSIOND_FAILPOINTS="archive.after_move=eio,journal.after_switch=enospc"
                                                                 raise OSError(EIO / ENOSPC)

A crash test that kills the daemon at a random moment rarely lands between two particular system
calls; a failpoint lands there every time (as etcd's and TiKV's failpoints, or SQLite's crash
tests, do). `exit` ends the process without flushing or unwinding, as a power cut or SIGKILL
would, so whatever the step had not made durable is lost exactly as it would be.

Without the variable, `failpoint()` is a call that returns at once: production pays one global
lookup per step. The variable is read once, at import; an unknown name or action is an error
(a misspelt failpoint that never fires would make a test pass for the wrong reason).
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass
from typing import NoReturn

ENV = "SESSIOND_FAILPOINTS"
EXIT_CODE = 86

# Every failpoint, in the order the steps happen. Tests iterate over these.
NAMES = (
    # appending a batch (daemon/store/store.py write_batch, daemon/pipeline.py)
    "append.before_journal_write",
    "append.after_journal_write",
    "append.after_journal_sync",
    "append.after_transcript_write",
    "append.after_ack",
    # replacing sessions.json atomically (daemon/store/fsutil.py atomic_write)
    "registry.temp_written",
    "registry.temp_synced",
    "registry.renamed",
    "registry.folder_synced",
    # a checkpoint (daemon/store/store.py)
    "journal.after_switch",
    "checkpoint.after_sync",
    # archiving a closed session (daemon/store/archive.py)
    "archive.after_fsync",
    "archive.after_move",
    "archive.after_index",
    # the spool folder (daemon/spool.py)
    "spool.after_claim",
    "spool.after_results",
    "spool.after_move",
)
# Compressing an archive in the retention sweep (daemon/retention.py); run by `sessiond
# retention` or the daemon's hourly job, so they have a test of their own.
COMPRESSION = (
    "compress.temp_synced",
    "compress.indexed",
    "compress.installed",
    "compress.original_removed",
)
# Writing a mirror round (daemon/store/backup.py), in the mirror's worker process: after a
# session's records are written, before they are synced. `exit` kills the worker mid-round.
# `mirror.refill_kept`: a mirror with a hole moved aside, its refilled copy not yet in place.
MIRROR = ("mirror.after_write", "mirror.refill_kept")
KNOWN = NAMES + COMPRESSION + MIRROR
ACTIONS = {
    "exit": None,
    "eio": errno.EIO,
    "enospc": errno.ENOSPC,
}


@dataclass(slots=True)
class Armed:
    """One armed failpoint: what it does, and on which hit."""

    action: str
    on_hit: int = 1
    hits: int = 0


def parse(spec: str) -> dict[str, Armed]:
    """`name=action[@n]` items separated by commas. Raises ValueError naming a bad item."""
    out: dict[str, Armed] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = item.partition("=")
        action, _, nth = action.partition("@")
        if not sep or name not in KNOWN:
            raise ValueError(f"{ENV}: unknown failpoint {name!r} (known: {', '.join(KNOWN)})")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: {name}: unknown action {action!r} (exit, eio, enospc)")
        if nth and (not nth.isdigit() or int(nth) < 1):
            raise ValueError(f"{ENV}: {name}: @{nth} must be a positive hit number")
        out[name] = Armed(action, int(nth or 1))
    return out


_armed: dict[str, Armed] | None = parse(os.environ.get(ENV, "")) or None
_lock = threading.Lock()
_in_worker = False  # this process is a worker (daemon/workers.py): see `Fired`


class Fired(Exception):
    """An `exit` failpoint of the daemon's own steps (NAMES) reached in a worker process (the
    archive moves run in one). The job stops there, as the process would; the daemon, handed
    this as the job's error, exits at once (`exit_now`): a power cut ends both, and the crash
    tests read the failpoint's line on the daemon's stderr (a worker's goes to /dev/null)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def in_worker() -> None:
    """Called once by a worker process at its start (daemon/workers.py)."""
    global _in_worker
    _in_worker = True


def exit_now(name: str) -> NoReturn:
    """Say which failpoint fired and end the process at once (no cleanup, no flush)."""
    os.write(2, f"failpoint {name} fired: exiting with {EXIT_CODE}\n".encode())
    os._exit(EXIT_CODE)


def failpoint(name: str) -> None:
    """Do what SESSIOND_FAILPOINTS says for `name`, if anything (else return at once).

    `exit`: write one line to stderr and end the process at once (no cleanup, no flush).
    `eio` / `enospc`: raise that OSError, as the system call after this step might.
    """
    if _armed is None:
        return
    _hit(name)


def _hit(name: str) -> None:
    assert _armed is not None
    armed = _armed.get(name)
    if armed is None:
        return
    with _lock:
        armed.hits += 1
        if armed.hits != armed.on_hit:
            return
    code = ACTIONS[armed.action]
    if code is None:
        if _in_worker and name in NAMES:
            raise Fired(name)
        exit_now(name)
    raise OSError(code, f"{os.strerror(code)} (failpoint {name})")


__all__ = [
    "COMPRESSION",
    "ENV",
    "EXIT_CODE",
    "KNOWN",
    "MIRROR",
    "NAMES",
    "Fired",
    "exit_now",
    "failpoint",
    "in_worker",
    "parse",
]

"""The index worker's jobs: every write to the index happens in a worker process of the daemon's
one mechanism for them (daemon/workers.py `Pool`), never in the daemon.

A pass is mostly Python (parsing appended lines, building rows); run in the daemon it would
compete with the event loop for the GIL. The search service (daemon/search/service.py) keeps a
pool of one worker for the index, so every job runs in the same process while it lives, and that
process keeps the index open between jobs (`_indexes`): the open, the reading of every file's
row and the caches of folder listings are paid once per worker, not once per pass.

    open_index(state_dir)    open (or create, or replace an unusable) index; its identity
    index_pass(request)      one pass (SearchIndex.sync); a PassResult

A request hands the worker what the daemon knows: the transcripts written since the previous
pass (`touched`) and, for most of them, the bytes appended (`handed`, and per transcript where
they go: `runs`), which the pass indexes without opening the transcript again. What the bytes
do not cover (a gap after a failed or killed pass, a file that grew since, an unknown file) is
read from the file from the offset the index recorded: that catch-up is what makes a killed
worker lose nothing. `db` in each answer lets the daemon retire its read connections when the
file was replaced (deleted, or found unusable and built anew).

A worker killed mid-pass (SIGKILL, a crash) leaves the transaction in progress uncommitted,
which SQLite rolls back when the next worker opens the file; the service then starts a worker
again with back-off, and its next pass lists every folder. A daemon that stops asks the pass to
halt (`workers.halt_event()`): it commits what it did at its next safe point and returns.
"""

from __future__ import annotations

import atexit
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import heap, workers
from daemon.search.db import IndexUnavailable, index_path
from daemon.search.index import Halted, SearchIndex
from daemon.search.sources import DEFAULT_AGENTS

Identity = tuple[int, int]  # (device, inode) of the index file the worker has open


class OpenFailed(Exception):
    """The worker could not open (or create) the index: why."""


@dataclass(frozen=True, slots=True)
class PassRequest:
    """One pass: the daemon's agents and their workspaces (its reloadable config), and what it
    wrote since the previous pass."""

    state_dir: str
    agents: tuple[str, ...] = DEFAULT_AGENTS
    workspaces: dict[str, str] = field(default_factory=dict)
    # Keys of the active transcripts written since the previous pass; None: not known (the
    # pass lists every folder).
    touched: tuple[str, ...] | None = None
    # The bytes the daemon appended (complete lines, as it wrote them), and per transcript key
    # the offset they start at there and the (start, end) pieces of `handed` that follow it.
    handed: bytes = b""
    runs: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = field(default_factory=dict)

    def appended(self) -> dict[str, tuple[int, bytes]]:
        """Key -> (offset, bytes) appended there (SearchIndex.sync's `appended`)."""
        view = memoryview(self.handed)
        return {
            key: (start, b"".join(view[a:b] for a, b in pieces))
            for key, (start, pieces) in self.runs.items()
        }


@dataclass(frozen=True, slots=True)
class PassResult:
    """A pass's SyncStats (to_json), or the error that failed it (sqlite3.Error, OSError: the
    next may succeed), or that it halted; and the identity of the index file it wrote."""

    db: Identity | None
    stats: dict[str, Any] | None = None
    error: str | None = None
    halted: bool = False


class Agents:
    """The daemon's agents and their workspaces as of the latest request."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.listed: tuple[str, ...] = DEFAULT_AGENTS
        self.workspaces: dict[str, str] = {}

    def update(self, req: PassRequest) -> None:
        self.listed, self.workspaces = req.agents, req.workspaces

    def __call__(self) -> tuple[str, ...]:
        return self.listed

    def workspace_of(self, agent: str) -> Path:
        """The agent's workspace; an agent that only exists on disk gets OpenClaw's default,
        `<stateDir>/workspace-<id>` (as daemon/config_load.py `workspace_of` gives it)."""
        ws = self.workspaces.get(agent)
        return Path(ws) if ws else self.state_dir / f"workspace-{agent}"


# The open index of this worker process, per state folder (one in the daemon), with its agents.
_indexes: dict[str, tuple[SearchIndex, Agents]] = {}


def _index(state_dir: str) -> tuple[SearchIndex, Agents]:
    """This process's index, opened on first use. Raises OpenFailed."""
    got = _indexes.get(state_dir)
    if got is not None:
        return got
    root = Path(state_dir)
    agents = Agents(root)
    index = SearchIndex(index_path(root), root, agents.workspace_of, agents)
    try:
        index.open()
    except (IndexUnavailable, sqlite3.Error, OSError) as e:
        index.close()
        raise OpenFailed(str(e)) from None
    _indexes[state_dir] = (index, agents)
    if len(_indexes) == 1:
        # Closed when the worker exits (its stdin closed): SQLite folds the WAL back in.
        atexit.register(_close_all)
    return index, agents


def _close_all() -> None:
    while _indexes:
        _key, (index, _agents) = _indexes.popitem()
        index.close()


def open_index(state_dir: str) -> Identity | None:
    """Open the index in this worker (kept open for the passes). Raises OpenFailed."""
    index, _agents = _index(state_dir)
    return index.identity


def index_pass(req: PassRequest) -> PassResult:
    """One pass over the index in this worker. Raises OpenFailed when the index cannot be
    opened (a new worker after a death opens it here)."""
    index, agents = _index(req.state_dir)
    agents.update(req)
    try:
        stats = index.sync(workers.halt_event(), touched=req.touched, appended=req.appended())
    except Halted:
        return PassResult(index.identity, halted=True)
    except (sqlite3.Error, OSError) as e:
        return PassResult(index.identity, error=str(e))
    finally:
        heap.between_jobs()  # the rows of 100,000 files are not walked by every collection
    return PassResult(index.identity, stats=stats.to_json())

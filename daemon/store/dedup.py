"""Idempotency of `message.ingest`: a repeated (agent, channel, accountId, messageId) gets the first
answer back, flagged as a duplicate, also after a restart.

Each agent keeps its recent ids in memory, bounded by count (`dedupMaxPerAgent`) and age
(`dedupWindowHours`); an id is forgotten once it passes either bound. Persistence costs what was
added, not what is known: each checkpoint appends the ids remembered since the one before to
`<stateDir>/dedup/<agentId>.log` (one line, a JSON array of them, synced), and only once that
log has grown to several times what is known is it folded into a new snapshot `<agentId>.json`
(written whole, atomically; then the log is emptied). After a crash the journal's replayed
entries (whose `origin` carries the message id) add the ids since the last checkpoint. So
snapshot + log + journal always cover every acknowledged id; loading reads the snapshot, then
the log (a torn last line is skipped), oldest first, and applies the bounds.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE, Staged, ensure_dir, fsync_dir, stage_atomic

DedupKey = tuple[str, str, str]  # (channel, accountId, messageId)
Items = list[tuple[DedupKey, tuple[int, dict[str, Any]]]]
SNAPSHOT, LOG = ".json", ".log"
# The log is folded into a new snapshot once it holds this many times the ids known (at least
# FOLD_MIN records): rewriting everything known is then paid once per several windows' worth.
FOLD_FACTOR = 4
FOLD_MIN = 4096
# Records per orjson call when saving: one call holds the interpreter lock throughout (about
# 1.8 ms for the 10,000 ids of a fold here), and the event loop waits for it; a chunk is ~0.1 ms.
CHUNK = 512


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one checkpoint writes for an agent: `items` appended to its log, or (`whole`) a new
    snapshot of everything known, after which the log is emptied."""

    items: Items
    whole: bool


@dataclass(slots=True)
class AgentIds:
    """The recent message ids of one agent."""

    answers: OrderedDict[DedupKey, tuple[int, dict[str, Any]]] = field(default_factory=OrderedDict)
    fresh: Items = field(default_factory=list)  # remembered since the last checkpoint
    logged: int = 0  # records in the log (since the snapshot)
    whole: bool = False  # the next checkpoint writes a whole snapshot


class DedupIndex:
    """Recent message ids per agent. Not thread-safe: mutate from the event loop only."""

    def __init__(self, folder: Path, max_per_agent: int, window_ms: int) -> None:
        self.folder = folder
        self.max_per_agent = max_per_agent
        self.window_ms = window_ms
        self.agents: dict[str, AgentIds] = {}

    def load(self, now_ms: int) -> int:
        """Read every agent's snapshot and log; return the number of ids known. A damaged
        snapshot or line is ignored (the ids in it are forgotten, nothing else is lost) and
        the file kept for inspection."""
        ensure_dir(self.folder)
        names: set[str] = set()
        for entry in os.scandir(self.folder):
            for ext in (SNAPSHOT, LOG):
                if entry.name.endswith(ext) and not entry.name.startswith("."):
                    names.add(entry.name[: -len(ext)])
        total = 0
        for agent in sorted(names):
            ids = self._agent(agent)
            doc: Any = []
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                doc = orjson.loads((self.folder / f"{agent}{SNAPSHOT}").read_bytes())
            records = list(doc) if isinstance(doc, list) else []
            try:
                lines = (self.folder / f"{agent}{LOG}").read_bytes().splitlines()
            except OSError:
                lines = []
            logged = 0
            for line in lines:
                try:
                    batch = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line (a crash during an append): never acknowledged
                if isinstance(batch, list):
                    records.extend(batch)
                    logged += len(batch)
            ids.logged = logged
            for rec in records:
                parsed = parse_record(rec)
                if parsed is not None:
                    key, at, answer = parsed
                    ids.answers[key] = (at, answer)
            self._trim(ids, now_ms)
            total += len(ids.answers)
        return total

    def _agent(self, agent: str) -> AgentIds:
        ids = self.agents.get(agent)
        if ids is None:
            ids = self.agents[agent] = AgentIds()
        return ids

    def lookup(self, agent: str, key: DedupKey) -> dict[str, Any] | None:
        ids = self.agents.get(agent)
        if ids is None:
            return None
        hit = ids.answers.get(key)
        return None if hit is None else hit[1]

    def remember(self, agent: str, key: DedupKey, at_ms: int, answer: dict[str, Any]) -> None:
        """Record an answer; bounds are enforced by `trim_all`, once per batch."""
        ids = self._agent(agent)
        ids.answers[key] = (at_ms, answer)
        ids.fresh.append((key, (at_ms, answer)))

    def trim_all(self, now_ms: int) -> None:
        for ids in self.agents.values():
            self._trim(ids, now_ms)

    def _trim(self, ids: AgentIds, now_ms: int) -> None:
        answers = ids.answers
        excess = len(answers) - self.max_per_agent
        for _ in range(max(0, excess)):
            answers.popitem(last=False)
        oldest = now_ms - self.window_ms
        while answers:
            _k, (at, _a) = next(iter(answers.items()))
            if at >= oldest:
                break
            answers.popitem(last=False)

    def changed(self, agent_id: str) -> None:
        """Write a whole snapshot of the agent's ids at the next checkpoint (after a failed one,
        whose appended lines may be missing)."""
        self._agent(agent_id).whole = True

    def snapshots(self) -> list[tuple[str, Snapshot]]:
        """What the next checkpoint writes (event loop): per agent with new ids, those ids, or
        everything known when the log is due to be folded into a new snapshot. Costs what was
        remembered since the last call, except at a fold."""
        out = []
        for agent, ids in self.agents.items():
            if not (ids.fresh or ids.whole):
                continue
            logged = ids.logged + len(ids.fresh)
            if ids.whole or logged > max(FOLD_MIN, FOLD_FACTOR * len(ids.answers)):
                out.append((agent, Snapshot(list(ids.answers.items()), whole=True)))
                ids.logged = 0
                ids.whole = False
            else:
                out.append((agent, Snapshot(ids.fresh, whole=False)))
                ids.logged = logged
            ids.fresh = []
        return out

    def save(self, snapshots: list[tuple[str, Snapshot]]) -> None:
        """Append to the logs or write whole snapshots, each synced (worker thread). Raises
        OSError; the caller then marks the agents `changed` (a whole snapshot next time)."""
        for staged in self.stage(snapshots):
            staged.finish(())

    def stage(self, snapshots: list[tuple[str, Snapshot]]) -> list[Staged]:
        """`save` in two halves (store.checkpoint_sync): the bytes are written now (appended to
        the logs, snapshots into their temporary files), and each Staged's `finish` syncs what
        the checkpoint's syncfs did not cover, puts snapshots in place and empties their logs.
        Raises OSError, having discarded what it began."""
        out: list[Staged] = []
        try:
            for agent, snap in snapshots:
                data = dump_records(snap.items)
                log = self.folder / f"{agent}{LOG}"
                if snap.whole:
                    snapshot = stage_atomic(self.folder / f"{agent}{SNAPSHOT}", data)
                    out.append(Staged(_then_empty(snapshot, log), snapshot.discard))
                elif snap.items:
                    out.append(stage_append(log, data + b"\n"))
        except BaseException:
            for staged in out:
                staged.discard()
            raise
        return out


def _then_empty(snapshot: Staged, log: Path) -> Callable[[Collection[int]], None]:
    def finish(covered: Collection[int]) -> None:
        snapshot.finish(covered)
        # A crash between the two leaves the old log beside the new snapshot: loading both
        # gives the same ids.
        if log.exists():
            truncate_synced(log)

    return finish


def dump_records(items: Items) -> bytes:
    """A JSON array of records (arrays: no dict built per id), in chunks of CHUNK records, so
    the event loop gets the interpreter lock between them (worker thread)."""
    parts = [orjson.dumps(items[i : i + CHUNK])[1:-1] for i in range(0, len(items), CHUNK)]
    return b"[" + b",".join(parts) + b"]"


def parse_record(rec: Any) -> tuple[DedupKey, int, dict[str, Any]] | None:
    """One id: `[[channel, accountId, messageId], [at, answer]]`, or as snapshots before the
    log spelled it, `{"k": [...], "t": at, "r": answer}`."""
    if isinstance(rec, list) and len(rec) == 2 and isinstance(rec[1], list) and len(rec[1]) == 2:
        k, (t, r) = rec[0], rec[1]
    elif isinstance(rec, dict):
        k, t, r = rec.get("k"), rec.get("t"), rec.get("r")
    else:
        return None
    if not (isinstance(k, list) and len(k) == 3 and all(isinstance(x, str) for x in k)):
        return None
    if not isinstance(t, int) or not isinstance(r, dict):
        return None
    return (k[0], k[1], k[2]), t, r


def append_synced(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created when missing) and sync it. Raises OSError."""
    stage_append(path, data).finish(())


def stage_append(path: Path, data: bytes) -> Staged:
    """Append `data` to `path` (created when missing) now; `finish(covered)` syncs it, and the
    folder when the file is new, unless a syncfs of its device since covered them. Raises
    OSError."""
    created = not path.exists()
    fd = fileio.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[fileio.write(fd, view) :]
        dev = os.fstat(fd).st_dev
    finally:
        fileio.close(fd)

    def finish(covered: Collection[int]) -> None:
        if dev in covered:
            return
        sfd = fileio.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            fileio.fdatasync(sfd)
        finally:
            fileio.close(sfd)
        if created:
            fsync_dir(path.parent)

    return Staged(finish)


def truncate_synced(path: Path) -> None:
    """Empty `path` (its records are in the snapshot just written) and sync it."""
    fd = fileio.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fileio.ftruncate(fd, 0)
        fileio.fsync(fd)
    finally:
        fileio.close(fd)

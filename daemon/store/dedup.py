"""Idempotency of `message.ingest`: a repeated (agent, channel, accountId, messageId) gets the first
answer back, flagged as a duplicate, also after a restart.

Each agent keeps its recent ids in memory, bounded by count (`dedupMaxPerAgent`) and age
(`dedupWindowHours`); an id is forgotten once it passes either bound. Persistence costs nothing
per message and, per checkpoint, what changed: each checkpoint appends the ids remembered since
the last one to `<stateDir>/dedup/<agentId>.json.delta` (a change log in the format of
sessions.json's, store/registry_log.py: CRC frames on top of one version of the snapshot), and
the snapshot `<agentId>.json` is rewritten whole (the ids known then, within their bounds) only
when the log holds as many ids as it, so a busy agent's 10,000 ids are not written again every
second. After a crash the journal's replayed entries (whose `origin` carries the message id) add
the ids since the last checkpoint. So snapshot + log + journal always cover every acknowledged id.
Loading applies the log on top of the snapshot, then the bounds (ids leave only by the bounds,
so the log needs no record of an id forgotten).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.store.fsutil import atomic_write, ensure_dir
from daemon.store.registry_log import ChangeLog, identity, read_changes

DedupKey = tuple[str, str, str]  # (channel, accountId, messageId)
Remembered = tuple[DedupKey, tuple[int, dict[str, Any]]]
MIN_LOGGED = 256  # below this many ids an agent's snapshot may be rewritten rather than logged


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one checkpoint writes for one agent: every id (`full`: the snapshot rewritten), or
    the ids remembered since the last checkpoint (appended to its log)."""

    full: bool
    items: list[Remembered]


@dataclass(slots=True)
class AgentIds:
    """The recent message ids of one agent (event loop)."""

    answers: OrderedDict[DedupKey, tuple[int, dict[str, Any]]] = field(default_factory=OrderedDict)
    dirty: bool = False
    # Remembered since the last checkpoint took them; how many the log holds on top of the
    # snapshot; whether the next checkpoint must rewrite the snapshot (none written by this
    # daemon yet, or a write failed, which may have cut the log short).
    fresh: list[Remembered] = field(default_factory=list)
    logged: int = 0
    snapshot: int = 0  # ids in the snapshot last written
    full: bool = True


@dataclass(slots=True)
class _Files:
    """An agent's snapshot as last written and its change log (the checkpoint thread's)."""

    base: str | None = None  # identity of the snapshot on disk; None: none written yet
    log: ChangeLog | None = None


class DedupIndex:
    """Recent message ids per agent. Not thread-safe: mutate from the event loop only."""

    def __init__(self, folder: Path, max_per_agent: int, window_ms: int) -> None:
        self.folder = folder
        self.max_per_agent = max_per_agent
        self.window_ms = window_ms
        self.agents: dict[str, AgentIds] = {}
        self._files: dict[str, _Files] = {}

    def load(self, now_ms: int) -> int:
        """Read every agent's snapshot; return the number of ids known. A damaged snapshot is
        ignored (the ids in it are forgotten, nothing else is lost) and kept for inspection."""
        ensure_dir(self.folder)
        total = 0
        for entry in os.scandir(self.folder):
            if not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            ids = self._agent(entry.name[: -len(".json")])
            try:
                data = Path(entry.path).read_bytes()
                doc = orjson.loads(data)
            except (OSError, orjson.JSONDecodeError):
                continue
            records = doc if isinstance(doc, list) else []
            records += [rec for _key, rec in read_changes(Path(entry.path), data)]
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
        ids.answers[key] = hit = (at_ms, answer)
        ids.fresh.append((key, hit))
        ids.dirty = True

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
        """Write the agent's whole snapshot at the next checkpoint (after a failed one)."""
        ids = self.agents[agent_id]
        ids.dirty = ids.full = True

    def snapshots(self) -> list[tuple[str, Snapshot]]:
        """What the changed agents write at this checkpoint (event loop): the ids remembered
        since the last one, or every id (a copy, cheap), to be written by `save`. So each id is
        written at most about twice, however many ids an agent keeps."""
        out = []
        for agent, ids in self.agents.items():
            if not ids.dirty:
                continue
            fresh = len(ids.fresh)
            # Rewritten once the log would hold as many ids as the snapshot (each id is written
            # at most about twice), or when a checkpoint's new ids are half of all there are
            # anyway (a busy agent: the rewrite then costs at most twice what logging would).
            if ids.full or max(ids.logged + fresh, 2 * fresh) >= max(ids.snapshot, MIN_LOGGED):
                out.append((agent, Snapshot(True, list(ids.answers.items()))))
                ids.logged = 0
                ids.snapshot = len(ids.answers)
                ids.full = False
            else:
                out.append((agent, Snapshot(False, ids.fresh)))
                ids.logged += len(ids.fresh)
            ids.fresh = []
            ids.dirty = False
        return out

    def save(self, snapshots: list[tuple[str, Snapshot]]) -> None:
        """Write snapshots atomically, or append to their logs and sync them (worker thread,
        one checkpoint at a time). Raises OSError; the caller then marks the agent `changed`."""
        for agent, snap in snapshots:
            files = self._files.setdefault(agent, _Files())
            path = self.folder / f"{agent}.json"
            if snap.full:
                data = orjson.dumps([_record(k, v) for k, v in snap.items])
                atomic_write(path, data)
                files.base = identity(data)
                if files.log is not None:
                    files.log.rebase()
                continue
            if files.base is None:
                raise FileNotFoundError(2, f"no snapshot of {agent}'s ids to log on top of")
            if files.log is None:
                files.log = ChangeLog(path)
            files.log.append(files.base, [(k[2], _record(k, v)) for k, v in snap.items])

    def close(self) -> None:
        for files in self._files.values():
            if files.log is not None:
                files.log.close()


def _record(key: DedupKey, value: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    return {"k": list(key), "t": value[0], "r": value[1]}


def parse_record(rec: Any) -> tuple[DedupKey, int, dict[str, Any]] | None:
    if not isinstance(rec, dict):
        return None
    k, t, r = rec.get("k"), rec.get("t"), rec.get("r")
    if not (isinstance(k, list) and len(k) == 3 and all(isinstance(x, str) for x in k)):
        return None
    if not isinstance(t, int) or not isinstance(r, dict):
        return None
    return (k[0], k[1], k[2]), t, r

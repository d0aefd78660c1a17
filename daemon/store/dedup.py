"""Idempotency of `message.ingest`: a repeated (agent, channel, accountId, messageId) gets the first
answer back, flagged as a duplicate, also after a restart.

Each agent keeps its recent ids in memory, bounded by count (`dedupMaxPerAgent`) and age
(`dedupWindowHours`); an id is forgotten once it passes either bound. Persistence costs nothing
per message: each checkpoint writes a snapshot `<stateDir>/dedup/<agentId>.json` of the ids known
at its journal switch, and after a crash the journal's replayed entries (whose `origin` carries
the message id) add the ids since. So snapshot + journal always cover every acknowledged id.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.store.fsutil import atomic_write, ensure_dir

DedupKey = tuple[str, str, str]  # (channel, accountId, messageId)
Snapshot = list[tuple[DedupKey, tuple[int, dict[str, Any]]]]


@dataclass(slots=True)
class AgentIds:
    """The recent message ids of one agent."""

    answers: OrderedDict[DedupKey, tuple[int, dict[str, Any]]] = field(default_factory=OrderedDict)
    dirty: bool = False


class DedupIndex:
    """Recent message ids per agent. Not thread-safe: mutate from the event loop only."""

    def __init__(self, folder: Path, max_per_agent: int, window_ms: int) -> None:
        self.folder = folder
        self.max_per_agent = max_per_agent
        self.window_ms = window_ms
        self.agents: dict[str, AgentIds] = {}

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
                doc = orjson.loads(Path(entry.path).read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            for rec in doc if isinstance(doc, list) else []:
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
        """Write the agent's snapshot at the next checkpoint (again, after a failed one)."""
        self.agents[agent_id].dirty = True

    def snapshots(self) -> list[tuple[str, Snapshot]]:
        """Copies of the changed agents' ids (event loop; cheap), to be written by `save`."""
        out = []
        for agent, ids in self.agents.items():
            if ids.dirty:
                out.append((agent, list(ids.answers.items())))
                ids.dirty = False
        return out

    def save(self, snapshots: list[tuple[str, Snapshot]]) -> None:
        """Write snapshots atomically (worker thread). Raises OSError."""
        for agent, items in snapshots:
            doc = [{"k": list(k), "t": at, "r": answer} for k, (at, answer) in items]
            atomic_write(self.folder / f"{agent}.json", orjson.dumps(doc))


def parse_record(rec: Any) -> tuple[DedupKey, int, dict[str, Any]] | None:
    if not isinstance(rec, dict):
        return None
    k, t, r = rec.get("k"), rec.get("t"), rec.get("r")
    if not (isinstance(k, list) and len(k) == 3 and all(isinstance(x, str) for x in k)):
        return None
    if not isinstance(t, int) or not isinstance(r, dict):
        return None
    return (k[0], k[1], k[2]), t, r

"""Idempotency of `message.ingest`: a repeated (agent, channel, accountId, messageId) gets the first
answer back, flagged as a duplicate, also after a restart.

Each agent keeps its recent ids in memory (bounded by count and age) and in an append-only file
`<stateDir>/dedup/<agentId>.jsonl`. Records reach that file in the same batch as the entry they
describe (and the journal, so a crash cannot lose one); the file is synced at checkpoints and
compacted by an atomic rewrite when it grows past twice its bound.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.store.fsutil import FILE_MODE, atomic_write, ensure_dir, write_all

DedupKey = tuple[str, str, str]  # (channel, accountId, messageId)


@dataclass(slots=True)
class AgentIds:
    """The recent message ids of one agent and the file that keeps them."""

    path: Path
    answers: OrderedDict[DedupKey, tuple[int, dict[str, Any]]] = field(default_factory=OrderedDict)
    file_lines: int = 0
    fd: int | None = None


class DedupIndex:
    """Recent message ids per agent. Not thread-safe: mutate from the event loop only."""

    def __init__(self, folder: Path, max_per_agent: int, window_ms: int) -> None:
        self.folder = folder
        self.max_per_agent = max_per_agent
        self.window_ms = window_ms
        self.agents: dict[str, AgentIds] = {}

    def load(self, now_ms: int) -> int:
        """Read every agent's file (bounded by compaction); return the number of ids known."""
        ensure_dir(self.folder)
        total = 0
        for entry in os.scandir(self.folder):
            if not entry.name.endswith(".jsonl") or entry.name.startswith("."):
                continue
            agent = entry.name[: -len(".jsonl")]
            ids = self._agent(agent)
            with open(entry.path, "rb") as f:
                for line in f:
                    ids.file_lines += 1
                    rec = parse_record(line)
                    if rec is not None:
                        self._put(ids, *rec)
            self._trim(ids, now_ms)
            total += len(ids.answers)
        return total

    def _agent(self, agent: str) -> AgentIds:
        ids = self.agents.get(agent)
        if ids is None:
            ids = self.agents[agent] = AgentIds(self.folder / f"{agent}.jsonl")
        return ids

    def lookup(self, agent: str, key: DedupKey) -> dict[str, Any] | None:
        ids = self.agents.get(agent)
        if ids is None:
            return None
        hit = ids.answers.get(key)
        return None if hit is None else hit[1]

    def remember(self, agent: str, key: DedupKey, at_ms: int, answer: dict[str, Any]) -> None:
        ids = self._agent(agent)
        self._put(ids, key, at_ms, answer)
        self._trim(ids, at_ms)

    def _put(self, ids: AgentIds, key: DedupKey, at_ms: int, answer: dict[str, Any]) -> None:
        ids.answers[key] = (at_ms, answer)
        ids.answers.move_to_end(key)

    def _trim(self, ids: AgentIds, now_ms: int) -> None:
        answers = ids.answers
        while len(answers) > self.max_per_agent:
            answers.popitem(last=False)
        oldest = now_ms - self.window_ms
        while answers:
            _k, (at, _a) = next(iter(answers.items()))
            if at >= oldest:
                break
            answers.popitem(last=False)

    # --- file side (called from the committer's worker thread, one batch at a time) ---------

    def append_lines(self, agent: str, data: bytes, count: int) -> None:
        """Append records to the agent's file (durable via the journal, synced at checkpoints)."""
        ids = self._agent(agent)
        if ids.fd is None:
            ids.fd = os.open(ids.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        write_all(ids.fd, data)
        ids.file_lines += count

    def sync_all(self) -> None:
        """fsync every agent's file; compact the ones grown past twice their bound."""
        for agent, ids in list(self.agents.items()):
            if ids.fd is not None:
                os.fsync(ids.fd)
            if ids.file_lines > 2 * self.max_per_agent:
                self.compact(agent)

    def compact(self, agent: str) -> None:
        ids = self.agents[agent]
        data = b"".join(encode_record(k, at, a) for k, (at, a) in list(ids.answers.items()))
        atomic_write(ids.path, data)
        if ids.fd is not None:
            os.close(ids.fd)
            ids.fd = None
        ids.file_lines = len(ids.answers)

    def close(self) -> None:
        for ids in self.agents.values():
            if ids.fd is not None:
                os.close(ids.fd)
                ids.fd = None


def encode_record(key: DedupKey, at_ms: int, answer: dict[str, Any]) -> bytes:
    return orjson.dumps({"k": list(key), "t": at_ms, "r": answer}) + b"\n"


def parse_record(line: bytes) -> tuple[DedupKey, int, dict[str, Any]] | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    k, t, r = obj.get("k"), obj.get("t"), obj.get("r")
    if not (isinstance(k, list) and len(k) == 3 and all(isinstance(x, str) for x in k)):
        return None
    if not isinstance(t, int) or not isinstance(r, dict):
        return None
    return (k[0], k[1], k[2]), t, r

"""Which daemon owns an agent, when several share the work (`shards` in config).

Every daemon of a deployment has the same `shards` block except `index`; adapters compute the
same function to pick a daemon's socket or Redis stream. The hash is CRC-32 (IEEE, as zlib,
Python's `zlib.crc32`, Go's `hash/crc32.ChecksumIEEE` and Node's `zlib.crc32` compute it) of the
normalised agent id in UTF-8, modulo `count`: stable across processes, hosts and languages,
unlike Python's salted `hash()`. An explicit `agents` map wins over the hash, so an operator can
move one busy agent without moving the rest.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ShardMap:
    count: int
    index: int  # this daemon's shard
    agents: Mapping[str, int] = field(default_factory=dict)

    def owner(self, agent_id: str) -> int:
        """The shard that owns `agent_id` (already normalised)."""
        pinned = self.agents.get(agent_id)
        if pinned is not None:
            return pinned
        return zlib.crc32(agent_id.encode("utf-8")) % self.count

    def owns(self, agent_id: str) -> bool:
        return self.owner(agent_id) == self.index

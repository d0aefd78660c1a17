"""One `sessions.json` entry, as OpenClaw writes it, owned by the store.

Read as a mapping (every field, OpenClaw's own included, exactly as loaded); written only through
the typed properties below and `update`, each of which marks the agent's registry so that
sessions.json is written at the next checkpoint. Fields sessiond does not know (skillsSnapshot,
systemPromptReport, ...) are never touched: they are saved back as they were read.

    field                        property                        what sessiond does with it
    sessionId                    session_id (read only)          names the transcript
    updatedAt                    updated_at                      every stored entry moves it
    lastInteractionAt            last_interaction_at             user messages move it (idle)
    sessionStartedAt             started_at (read only)          the daily reset's reference
    totalTokens                  total_tokens                    the compaction check's count
    contextTokens                context_tokens                  the window it is measured against
    compactionCount              compaction_count                one more per compaction
    memoryFlushCompactionCount   memory_flush_compaction_count   the cycle the last flush covered
    sessiondRouteTo              route_to                        `/session <key>`: where this
                                                                 chat's messages go
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from daemon.core.ingest import ROUTE_FIELD


def _count(v: object) -> int:
    """A counter as stored, or 0 when it is missing or not a number."""
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v)
    return 0


def _int_or_none(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class SessionEntry(Mapping[str, Any]):
    """A registry entry: a read-only mapping plus typed setters that mark the registry changed."""

    __slots__ = ("_changed", "_data", "get", "key")

    # `entry.get(...)` is the entry's own dict's `get`, bound in __init__: the reset policy and
    # the planner read several fields of every message's entry, and a method of ours would add
    # a Python call to each read.
    get: Callable[..., Any]

    def __init__(self, data: dict[str, Any], changed: Callable[[str], None], key: str = "") -> None:
        """`data` is owned from now on; `changed(key)` marks this entry of its registry for the
        next checkpoint (the registry keeps `key` up to date when the session is renamed)."""
        self._data = data
        self.get = data.get
        self._changed = changed
        self.key = key

    # --- reading -------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"SessionEntry({self._data!r})"

    def document(self) -> dict[str, Any]:
        """The entry as sessions.json holds it (for serialising; not to be changed)."""
        return self._data

    @property
    def session_id(self) -> str | None:
        v = self._data.get("sessionId")
        return v if isinstance(v, str) else None

    @property
    def started_at(self) -> int | None:
        return _int_or_none(self._data.get("sessionStartedAt"))

    # --- typed fields --------------------------------------------------------------------------

    @property
    def updated_at(self) -> int:
        return _count(self._data.get("updatedAt"))

    @updated_at.setter
    def updated_at(self, ms: int) -> None:
        self._set("updatedAt", ms)

    @property
    def last_interaction_at(self) -> int | None:
        return _int_or_none(self._data.get("lastInteractionAt"))

    @last_interaction_at.setter
    def last_interaction_at(self, ms: int) -> None:
        self._set("lastInteractionAt", ms)

    @property
    def total_tokens(self) -> int:
        return _count(self._data.get("totalTokens"))

    @total_tokens.setter
    def total_tokens(self, n: int) -> None:
        self._set("totalTokens", n)

    @property
    def context_tokens(self) -> int | None:
        return _int_or_none(self._data.get("contextTokens"))

    @context_tokens.setter
    def context_tokens(self, n: int) -> None:
        self._set("contextTokens", n)

    @property
    def compaction_count(self) -> int:
        return _count(self._data.get("compactionCount"))

    @compaction_count.setter
    def compaction_count(self, n: int) -> None:
        self._set("compactionCount", n)

    @property
    def memory_flush_compaction_count(self) -> int | None:
        return _int_or_none(self._data.get("memoryFlushCompactionCount"))

    @memory_flush_compaction_count.setter
    def memory_flush_compaction_count(self, n: int) -> None:
        self._set("memoryFlushCompactionCount", n)

    @property
    def route_to(self) -> str | None:
        v = self._data.get(ROUTE_FIELD)
        return v if isinstance(v, str) else None

    @route_to.setter
    def route_to(self, key: str | None) -> None:
        if key is None:
            self.update({}, drop=(ROUTE_FIELD,))
        else:
            self._set(ROUTE_FIELD, key)

    # --- writing -------------------------------------------------------------------------------

    def update(self, fields: Mapping[str, Any], *, drop: tuple[str, ...] = ()) -> None:
        """Set (and drop) fields, as the pure planner lists them (daemon/core/ingest.py)."""
        data = self._data
        data.update(fields)
        for k in drop:
            data.pop(k, None)
        self._changed(self.key)

    def _set(self, key: str, value: object) -> None:
        self._data[key] = value
        self._changed(self.key)

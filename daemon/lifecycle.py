"""Session lifecycle glue: which policy applies to a session, what a new session inherits from the
one it replaces, and the replies to chat commands. Reads the store's in-memory state only; the
pipeline decides when to call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from daemon.config import SessionConfig
from daemon.core.policy import (
    Policy,
    Staleness,
    daily_boundary,
    effective_policy,
    evaluate,
    next_daily_boundary,
    next_reset,
    session_kind,
)
from daemon.store.registry import SessionState
from daemon.store.store import Store


def last_interaction(entry: Mapping[str, Any]) -> int:
    for k in ("lastInteractionAt", "updatedAt", "sessionStartedAt"):
        v = entry.get(k)
        if isinstance(v, int):
            return v
    return 0


def started_at(entry: Mapping[str, Any]) -> int:
    v = entry.get("sessionStartedAt")
    return v if isinstance(v, int) else last_interaction(entry)


class Policies:
    """Effective policies and daily boundaries, memoised: both change rarely, messages often."""

    def __init__(self, cfg: SessionConfig, tz: ZoneInfo) -> None:
        self.cfg = cfg
        self.rules = cfg.reset_rules()
        self.tz = tz
        self._policies: dict[tuple[str, str | None], Policy] = {}
        self._boundaries: dict[int, tuple[int, int]] = {}  # atHour -> (boundary, next boundary)

    def policy(self, st: SessionState) -> Policy:
        kind = session_kind(st.entry.get("chatType"), st.session_key)
        channel = st.entry.get("lastChannel") or st.entry.get("channel")
        ck = (kind, channel if isinstance(channel, str) else None)
        p = self._policies.get(ck)
        if p is None:
            p = self._policies[ck] = effective_policy(self.rules, kind, ck[1])
        return p

    def boundary(self, at_hour: int, now: int) -> int:
        cached = self._boundaries.get(at_hour)
        if cached is None or not cached[0] <= now < cached[1]:
            b = daily_boundary(now, at_hour, self.tz)
            cached = self._boundaries[at_hour] = (b, next_daily_boundary(b, at_hour, self.tz))
        return cached[0]

    def staleness(self, st: SessionState, now: int, not_before: int = 0) -> Staleness:
        """`not_before` (the scheduler passes the folder's adoption time, daemon/adoption.py)
        counts the session as begun and last used no earlier than then: no cause before it."""
        p = self.policy(st)
        if p.mode == "none":
            return Staleness(False)
        entry = st.entry
        b = self.boundary(p.at_hour, now) if p.daily else None
        started, last = started_at(entry), last_interaction(entry)
        if not_before:
            started, last = max(started, not_before), max(last, not_before)
        return evaluate(p, started, last, now, self.tz, b)

    def next_reset(self, st: SessionState, now: int) -> tuple[int, str] | None:
        entry = st.entry
        return next_reset(self.policy(st), started_at(entry), last_interaction(entry), now, self.tz)


def _when(ms: Any, tz: ZoneInfo) -> str:
    if not isinstance(ms, int):
        return "unknown"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def status_reply(st: SessionState, policies: Policies, now: int) -> str:
    e = st.entry
    lines = [
        f"Session {st.session_key}",
        f"id: {st.session_id}",
        f"started: {_when(e.get('sessionStartedAt'), policies.tz)}",
        f"last interaction: {_when(e.get('lastInteractionAt'), policies.tz)}",
        f"tokens: {e.get('totalTokens', 0)}",
    ]
    nxt = policies.next_reset(st, now)
    if nxt is None:
        lines.append("next reset: never (reset mode none)")
    else:
        why = "daily reset" if nxt[1] == "daily" else "idle expiry"
        lines.append(f"next reset: {_when(nxt[0], policies.tz)} ({why})")
    model = e.get("modelOverride")
    if model:
        lines.append(f"model: {e.get('providerOverride', '')}/{model}".replace(": /", ": "))
    return "\n".join(lines)


def sessions_reply(store: Store, agent_id: str, tz: ZoneInfo, limit: int = 10) -> str:
    reg = store.agents.get(agent_id)
    active = sorted(
        (reg.sessions.values() if reg else []),
        key=lambda s: -int(s.entry.get("updatedAt") or 0),
    )[:limit]
    lines = [f"Active sessions of {agent_id}:"]
    for s in active:
        lines.append(
            f"- {s.session_key} ({s.session_id[:8]}, {_when(s.entry.get('updatedAt'), tz)})"
        )
    archived = sorted(store.archives.get(agent_id, []), key=lambda a: -a.archived_at)[:limit]
    if archived:
        lines.append("Archived:")
        for a in archived:
            lines.append(
                f"- {a.session_key or '?'} ({a.session_id[:8]}, {a.reason}, "
                f"{_when(a.archived_at, tz)})"
            )
    return "\n".join(lines)

"""Reset policy: when a session has gone stale, and why. Pure: reset rules, times and a zone in.

Rules (SPEC 4.3, OpenClaw's documented behaviour):
- The effective policy for a session is `session.reset`, overridden key by key by
  `session.resetByType` (direct | group | thread; `dm` is an alias of direct), overridden in turn by
  `session.resetByChannel[<channel>]`.
- mode "daily" with `idleMinutes` set behaves as "both" (as in OpenClaw).
- daily: the boundary is the latest `atHour` (local time in the daemon's zone) at or before now.
  A session begun before the boundary is stale, but never while a conversation is in progress:
  it waits until the session has been quiet `deferWhileActiveMinutes` (a conversation that runs
  across 04:00 is reset once it has paused that long, not cut in the middle).
- idle: stale once quiet for `idleMinutes`.
- both: whichever comes first; the recorded reason is the earlier of the two.
- Only interaction counts: system events (heartbeat, cron) never move `lastInteractionAt` and never
  trigger a reset; the caller passes the last *interaction* time.

DST: a local `atHour` that does not exist on a day (spring forward) takes effect at the first valid
instant after the gap; a repeated hour (fall back) counts once, at its first occurrence. Both follow
from resolving the local time with fold=0, which is what `_local_instant` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Mode = Literal["daily", "idle", "both", "none"]
Reason = Literal["daily", "idle"]


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective reset policy for one session."""

    mode: Mode
    at_hour: int
    idle_minutes: int | None
    defer_minutes: int

    @property
    def daily(self) -> bool:
        return self.mode in ("daily", "both")

    @property
    def idle(self) -> bool:
        return self.idle_minutes is not None and self.mode in ("idle", "both")


@dataclass(frozen=True, slots=True)
class Staleness:
    """The verdict for one session at one moment."""

    stale: bool
    reason: Reason | None = None
    since_ms: int | None = None  # when it became stale (the recorded cause's time)


NOT_STALE = Staleness(False)


@dataclass(frozen=True, slots=True)
class Override:
    """One `resetByType` or `resetByChannel` entry: the keys it sets (None: inherited)."""

    mode: Mode | None = None
    at_hour: int | None = None
    idle_minutes: int | None = None
    defer_minutes: int | None = None


@dataclass(frozen=True, slots=True)
class ResetRules:
    """`session.reset` and its overrides (built by `SessionConfig.reset_rules()` in config.py).

    `by_type` is keyed by direct | dm | group | thread, `by_channel` by channel name.
    """

    base: Policy = Policy("daily", 4, None, 30)
    by_type: Mapping[str, Override] = field(default_factory=dict)
    by_channel: Mapping[str, Override] = field(default_factory=dict)


def _apply(base: Policy, o: Override | None) -> Policy:
    if o is None:
        return base
    return Policy(
        mode=o.mode if o.mode is not None else base.mode,
        at_hour=o.at_hour if o.at_hour is not None else base.at_hour,
        idle_minutes=o.idle_minutes if o.idle_minutes is not None else base.idle_minutes,
        defer_minutes=o.defer_minutes if o.defer_minutes is not None else base.defer_minutes,
    )


def session_kind(chat_type: str | None, session_key: str) -> str:
    """direct | group | thread, as resetByType names them."""
    if ":thread:" in session_key or ":topic:" in session_key:
        return "thread"
    if chat_type in (None, "direct", "dm"):
        return "direct"
    return "group"


def effective_policy(rules: ResetRules, kind: str, channel: str | None) -> Policy:
    """session.reset, then resetByType, then resetByChannel (the most specific wins)."""
    policy = rules.base
    by_type = rules.by_type
    if kind == "direct":
        policy = _apply(policy, by_type.get("dm"))
        policy = _apply(policy, by_type.get("direct"))
    elif kind in ("group", "thread"):
        policy = _apply(policy, by_type.get(kind))
    if channel is not None:
        policy = _apply(policy, rules.by_channel.get(channel))
    if policy.mode == "daily" and policy.idle_minutes is not None:
        policy = Policy("both", policy.at_hour, policy.idle_minutes, policy.defer_minutes)
    return policy


def _local_instant(day: datetime, hour: int, tz: ZoneInfo) -> datetime:
    """`hour`:00 local on `day`'s date as a UTC instant (fold=0: a gap maps past it, a repeated
    hour to its first occurrence)."""
    local = datetime(day.year, day.month, day.day, hour, 0, tzinfo=tz, fold=0)
    return local.astimezone(UTC)


def daily_boundary(now_ms: int, at_hour: int, tz: ZoneInfo) -> int:
    """The latest atHour boundary at or before `now_ms` (epoch ms)."""
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    local_day = now.astimezone(tz)
    for back in range(0, 3):
        d = local_day - timedelta(days=back)
        b = _local_instant(d, at_hour, tz)
        if b <= now:
            return int(b.timestamp() * 1000)
    raise AssertionError("unreachable: a boundary exists within three days")


def next_daily_boundary(now_ms: int, at_hour: int, tz: ZoneInfo) -> int:
    """The first atHour boundary strictly after `now_ms`."""
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    local_day = now.astimezone(tz)
    for ahead in range(0, 3):
        d = local_day + timedelta(days=ahead)
        b = _local_instant(d, at_hour, tz)
        if b > now:
            return int(b.timestamp() * 1000)
    raise AssertionError("unreachable: a boundary exists within three days")


def evaluate(
    policy: Policy,
    started_ms: int,
    last_interaction_ms: int,
    now_ms: int,
    tz: ZoneInfo,
    boundary_ms: int | None = None,
) -> Staleness:
    """Is a session begun at `started_ms`, last used at `last_interaction_ms`, stale at `now_ms`?

    `boundary_ms` may pass in `daily_boundary(now_ms, policy.at_hour, tz)` when the caller keeps
    it (it changes once a day; computing it per message would cost more than the rest).
    """
    # Evaluated for every message: no allocation unless the session is stale.
    found: tuple[int, Reason] | None = None
    quiet_ms = now_ms - last_interaction_ms
    if policy.daily:
        boundary = (
            boundary_ms if boundary_ms is not None else daily_boundary(now_ms, policy.at_hour, tz)
        )
        defer_ms = policy.defer_minutes * 60_000
        if started_ms < boundary and quiet_ms >= defer_ms:
            # Stale since the boundary, or since the deferral ran out if that was later.
            found = (max(boundary, last_interaction_ms + defer_ms), "daily")
    if policy.idle and policy.idle_minutes is not None:
        idle_ms = policy.idle_minutes * 60_000
        if quiet_ms >= idle_ms:
            idle: tuple[int, Reason] = (last_interaction_ms + idle_ms, "idle")
            if found is None or idle < found:
                found = idle
    if found is None:
        return NOT_STALE
    return Staleness(True, found[1], found[0])


def next_reset(
    policy: Policy, started_ms: int, last_interaction_ms: int, now_ms: int, tz: ZoneInfo
) -> tuple[int, Reason] | None:
    """When the session will go stale if nobody writes (for /status), and why; None for never."""
    candidates: list[tuple[int, Reason]] = []
    if policy.daily:
        defer_ms = policy.defer_minutes * 60_000
        boundary = daily_boundary(now_ms, policy.at_hour, tz)
        if started_ms >= boundary:
            boundary = next_daily_boundary(now_ms, policy.at_hour, tz)
        candidates.append((max(boundary, last_interaction_ms + defer_ms), "daily"))
    if policy.idle and policy.idle_minutes is not None:
        candidates.append((last_interaction_ms + policy.idle_minutes * 60_000, "idle"))
    return min(candidates) if candidates else None


def all_at_hours(rules: ResetRules) -> set[int]:
    """Every atHour some session may use: the daily job fires at each."""
    hours = {rules.base.at_hour}
    for o in (*rules.by_type.values(), *rules.by_channel.values()):
        if o.at_hour is not None:
            hours.add(o.at_hour)
    return hours

"""Reset policy, table-driven: which session is stale when, and why; daily boundaries across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from daemon.config import ResetOverride, SessionConfig
from daemon.core.policy import (
    Policy,
    all_at_hours,
    daily_boundary,
    effective_policy,
    evaluate,
    next_daily_boundary,
    next_reset,
    session_kind,
)

UTCZ = ZoneInfo("UTC")


def ms(s: str, tz: ZoneInfo = UTCZ) -> int:
    """'2026-03-29 02:30' local in tz -> epoch ms."""
    dt = datetime.fromisoformat(s).replace(tzinfo=tz)
    return int(dt.timestamp() * 1000)


def local(epoch_ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M")


DAILY4 = Policy("daily", 4, None, 30)
DAILY4_NODEFER = Policy("daily", 4, None, 0)
IDLE60 = Policy("idle", 4, 60, 30)
BOTH = Policy("both", 4, 120, 30)


@pytest.mark.parametrize(
    ("name", "policy", "started", "last", "now", "stale", "reason", "since"),
    [
        (
            "fresh session is not stale",
            DAILY4,
            "2026-01-10 05:00",
            "2026-01-10 05:00",
            "2026-01-10 09:00",
            False,
            None,
            None,
        ),
        (
            "yesterday's session is stale after 4:00",
            DAILY4,
            "2026-01-09 20:00",
            "2026-01-09 23:00",
            "2026-01-10 05:00",
            True,
            "daily",
            "2026-01-10 04:00",
        ),
        (
            "before 4:00 yesterday's session is not stale",
            DAILY4,
            "2026-01-09 20:00",
            "2026-01-10 03:00",
            "2026-01-10 03:59",
            False,
            None,
            None,
        ),
        (
            "a conversation across 4:00 is not cut",
            DAILY4,
            "2026-01-10 03:00",
            "2026-01-10 03:58",
            "2026-01-10 04:05",
            False,
            None,
            None,
        ),
        (
            "it is reset once quiet for 30 minutes",
            DAILY4,
            "2026-01-10 03:00",
            "2026-01-10 04:05",
            "2026-01-10 04:40",
            True,
            "daily",
            "2026-01-10 04:35",
        ),
        (
            "without deferral the reset is at 4:00",
            DAILY4_NODEFER,
            "2026-01-10 03:00",
            "2026-01-10 03:58",
            "2026-01-10 04:01",
            True,
            "daily",
            "2026-01-10 04:00",
        ),
        (
            "idle resets after idleMinutes",
            IDLE60,
            "2026-01-10 08:00",
            "2026-01-10 09:00",
            "2026-01-10 10:00",
            True,
            "idle",
            "2026-01-10 10:00",
        ),
        (
            "idle does not reset before",
            IDLE60,
            "2026-01-10 08:00",
            "2026-01-10 09:00",
            "2026-01-10 09:59",
            False,
            None,
            None,
        ),
        (
            "idle mode ignores the day",
            IDLE60,
            "2026-01-09 23:50",
            "2026-01-10 03:59",
            "2026-01-10 04:30",
            False,
            None,
            None,
        ),
        (
            "both: idle came first",
            BOTH,
            "2026-01-09 20:00",
            "2026-01-09 21:00",
            "2026-01-10 05:00",
            True,
            "idle",
            "2026-01-09 23:00",
        ),
        (
            "both: daily came first",
            BOTH,
            "2026-01-10 03:00",
            "2026-01-10 03:00",
            "2026-01-10 05:30",
            True,
            "daily",
            "2026-01-10 04:00",
        ),
        (
            "none never resets",
            Policy("none", 4, None, 30),
            "2020-01-01 00:00",
            "2020-01-01 00:00",
            "2026-01-10 05:00",
            False,
            None,
            None,
        ),
    ],
)
def test_staleness(
    name: str,
    policy: Policy,
    started: str,
    last: str,
    now: str,
    stale: bool,
    reason: str | None,
    since: str | None,
) -> None:
    v = evaluate(policy, ms(started), ms(last), ms(now), UTCZ)
    assert v.stale is stale, name
    assert v.reason == reason, name
    assert (None if v.since_ms is None else local(v.since_ms, UTCZ)) == since, name


def test_daily_with_idle_minutes_behaves_as_both() -> None:
    cfg = SessionConfig.model_validate({"reset": {"mode": "daily", "idleMinutes": 90}})
    assert effective_policy(cfg.reset_rules(), "direct", None).mode == "both"


def test_overrides_by_type_then_by_channel() -> None:
    cfg = SessionConfig.model_validate(
        {
            "reset": {"mode": "daily", "atHour": 4},
            "resetByType": {"group": {"mode": "idle", "idleMinutes": 30}, "dm": {"atHour": 6}},
            "resetByChannel": {"discord": {"mode": "none"}},
        }
    )
    assert (
        effective_policy(cfg.reset_rules(), "direct", "telegram").at_hour == 6
    )  # dm is an alias of direct
    assert effective_policy(cfg.reset_rules(), "group", "telegram").mode == "idle"
    assert effective_policy(cfg.reset_rules(), "group", "discord").mode == "none"
    assert effective_policy(cfg.reset_rules(), "direct", "discord").mode == "none"
    assert effective_policy(cfg.reset_rules(), "thread", "slack").mode == "daily"
    assert all_at_hours(cfg.reset_rules()) == {4, 6}
    cfg2 = cfg.model_copy(
        update={
            "resetByType": cfg.resetByType.model_copy(update={"direct": ResetOverride(atHour=7)})
        }
    )
    assert (
        effective_policy(cfg2.reset_rules(), "direct", None).at_hour == 7
    )  # direct wins over its alias


def test_session_kinds() -> None:
    assert session_kind("direct", "agent:main:main") == "direct"
    assert session_kind("group", "agent:main:telegram:group:-100") == "group"
    assert session_kind("group", "agent:main:telegram:group:-100:topic:42") == "thread"
    assert session_kind("group", "agent:work:slack:channel:c1:thread:17.5") == "thread"


def test_defaults_are_daily_at_four_with_thirty_minutes_deferral() -> None:
    p = effective_policy(SessionConfig().reset_rules(), "direct", None)
    assert (p.mode, p.at_hour, p.idle_minutes, p.defer_minutes) == ("daily", 4, None, 30)


# --- DST ------------------------------------------------------------------------------------
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


@pytest.mark.parametrize(
    ("tz", "at_hour", "now", "boundary"),
    [
        # Spring forward: 02:00 does not exist; the boundary is the first valid instant after it.
        (BERLIN, 2, "2026-03-29 12:00", "2026-03-29 03:00"),
        (NEW_YORK, 2, "2026-03-08 12:00", "2026-03-08 03:00"),
        (LORD_HOWE, 2, "2026-10-04 12:00", "2026-10-04 02:30"),  # a 30-minute shift
        # Fall back: 02:00 happens twice; the boundary is the first one.
        (BERLIN, 2, "2026-10-25 12:00", "2026-10-25 02:00"),
        (NEW_YORK, 1, "2026-11-01 12:00", "2026-11-01 01:00"),
        (LORD_HOWE, 1, "2026-04-05 12:00", "2026-04-05 01:00"),
        # Ordinary days.
        (BERLIN, 4, "2026-07-01 03:59", "2026-06-30 04:00"),
        (BERLIN, 4, "2026-07-01 04:00", "2026-07-01 04:00"),
    ],
)
def test_daily_boundary_across_dst(tz: ZoneInfo, at_hour: int, now: str, boundary: str) -> None:
    assert local(daily_boundary(ms(now, tz), at_hour, tz), tz) == boundary


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK, LORD_HOWE])
@pytest.mark.parametrize("at_hour", [0, 1, 2, 3, 4])
def test_exactly_one_boundary_per_local_day_over_a_year(tz: ZoneInfo, at_hour: int) -> None:
    t = ms("2026-01-01 12:00", tz)
    end = ms("2027-01-01 12:00", tz)
    days = []
    while True:
        t = next_daily_boundary(t, at_hour, tz)
        if t > end:
            break
        days.append(local(t, tz)[:10])
    assert len(days) == len(set(days)) == 365


@pytest.mark.parametrize("tz", [BERLIN, NEW_YORK, LORD_HOWE])
def test_a_quiet_session_is_reset_once_per_day_across_the_dst_change(tz: ZoneInfo) -> None:
    """Simulate the scheduler with an injected clock: check every 5 minutes for 4 days around
    each DST change; a reset starts a new session (no traffic)."""
    policy = Policy("daily", 2, None, 0)
    for start in ("2026-03-27 12:00", "2026-10-23 12:00", "2026-04-02 12:00", "2026-10-02 12:00"):
        t = ms(start, tz)
        started = last = t
        resets: list[str] = []
        for _ in range(4 * 24 * 12):
            t += 5 * 60_000
            v = evaluate(policy, started, last, t, tz)
            if v.stale:
                assert v.since_ms is not None
                resets.append(local(v.since_ms, tz)[:10])
                started = last = t
        assert len(resets) == len(set(resets)) == 4, (start, resets)


def test_next_reset_for_status() -> None:
    nxt = next_reset(
        DAILY4, ms("2026-01-10 05:00"), ms("2026-01-10 09:00"), ms("2026-01-10 10:00"), UTCZ
    )
    assert nxt is not None and local(nxt[0], UTCZ) == "2026-01-11 04:00" and nxt[1] == "daily"
    nxt = next_reset(
        BOTH, ms("2026-01-10 05:00"), ms("2026-01-10 09:00"), ms("2026-01-10 10:00"), UTCZ
    )
    assert nxt is not None and local(nxt[0], UTCZ) == "2026-01-10 11:00" and nxt[1] == "idle"
    assert next_reset(Policy("none", 4, None, 0), 0, 0, 0, UTCZ) is None

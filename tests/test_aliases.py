"""OpenClaw's spellings of our params (daemon/core/aliases.py), rewritten before the role check."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from daemon.core.aliases import canonical, day_start_ms
from daemon.core.roles import Denied, Lookups, Principal, decide
from daemon.errors import InvalidParams
from daemon.methods import rule_of

BERLIN = ZoneInfo("Europe/Berlin")
KEY = "agent:main:telegram:direct:1"


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize("method", ["sessions.get", "sessions.history", "sessions.reset"])
def test_key_becomes_session_key_for_sessions_methods(method: str) -> None:
    assert canonical(method, {"key": KEY, "limit": 5}, BERLIN) == {"sessionKey": KEY, "limit": 5}
    assert canonical(method, {"key": KEY, "sessionKey": KEY}, BERLIN) == {"sessionKey": KEY}


def test_two_different_spellings_are_an_error_naming_the_alias() -> None:
    with pytest.raises(InvalidParams) as e:
        canonical("sessions.get", {"key": KEY, "sessionKey": "agent:x:main"}, BERLIN)
    assert e.value.data == {"field": "key"}


def test_params_without_aliases_are_passed_through_as_they_are() -> None:
    params = {"sessionKey": KEY}
    assert canonical("sessions.get", params, BERLIN) is params
    ingest = {"key": "x", "channel": "telegram"}
    assert canonical("message.ingest", ingest, BERLIN) is ingest


def test_memory_search_seed_spellings() -> None:
    got = canonical(
        "memory.search", {"query": "q", "include_sessions": False, "session": KEY}, BERLIN
    )
    assert got == {"query": "q", "includeSessions": False, "sessionKey": KEY}
    by_id = canonical("memory.search", {"query": "q", "session": "0b6c-uuid"}, BERLIN)
    assert by_id == {"query": "q", "sessionId": "0b6c-uuid"}


def test_date_only_bounds_are_midnight_in_the_daemons_time_zone() -> None:
    got = canonical("memory.search", {"after": "2024-01-01", "before": "2024-07-01"}, BERLIN)
    assert got == {"after": ms(2023, 12, 31, 23), "before": ms(2024, 6, 30, 22)}
    assert canonical("sessions.archived", {"after": "2024-01-01"}, ZoneInfo("UTC")) == {
        "after": ms(2024, 1, 1)
    }
    iso = {"after": "2024-01-01T00:00:00Z"}
    assert canonical("memory.search", iso, BERLIN) is iso  # full timestamps are parsed later


def test_a_midnight_skipped_by_dst_is_the_first_instant_of_the_day() -> None:
    # Chile moved clocks from 00:00 to 01:00 on 2023-09-03.
    start = day_start_ms("after", "2023-09-03", ZoneInfo("America/Santiago"))
    assert start == ms(2023, 9, 3, 4)


def test_an_impossible_date_names_its_field() -> None:
    with pytest.raises(InvalidParams) as e:
        canonical("memory.search", {"before": "2024-02-30"}, BERLIN)
    assert e.value.data == {"field": "before"}


def test_an_agent_naming_another_agents_session_as_key_is_refused() -> None:
    agent = Principal("agent", frozenset({"main"}), "main")
    lookups = Lookups(lambda _sid: None, lambda _p: None)
    params = canonical("sessions.history", {"key": "agent:work:main"}, BERLIN)
    verdict = decide(agent, "sessions.history", rule_of("sessions.history"), params, lookups)
    assert isinstance(verdict, Denied) and verdict.agent == "work"

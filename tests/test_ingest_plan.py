"""SPEC section 4, read off the pure planner: what one inbound message does to the sessions of its
key. No daemon, no file: a session is its key, id, registry entry and transcript size."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from daemon.config import ResetPolicyConfig, SessionConfig
from daemon.core.ingest import ROUTE_FIELD, IngestPlan, plan_ingest
from daemon.core.keys import Route
from daemon.core.protocol import IngestParams
from daemon.lifecycle import Policies

KEY = "agent:main:telegram:direct:42"
OTHER = "agent:main:slack:direct:7"
ROUTE = Route(
    agent_id="main", session_key=KEY, chat_type="direct", account_id="default", channel="telegram"
)


def ms(day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(2026, 3, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


@dataclass
class Session:
    session_key: str
    session_id: str
    entry: dict[str, Any] = field(default_factory=dict)
    size: int = 100


def session(
    key: str = KEY, sid: str = "s-old", *, started: int, last: int, **fields: Any
) -> Session:
    entry = {
        "sessionStartedAt": started,
        "lastInteractionAt": last,
        "updatedAt": last,
        "chatType": "direct",
        "lastChannel": "telegram",
        "totalTokens": 10,
        **fields,
    }
    return Session(key, sid, entry)


def policies(
    mode: str = "daily", idle: int | None = None, defer: int = 30, **overrides: Any
) -> Policies:
    reset = ResetPolicyConfig(mode=mode, atHour=4, idleMinutes=idle, deferWhileActiveMinutes=defer)
    cfg = SessionConfig.model_validate({"reset": reset.model_dump(), **overrides})
    return Policies(cfg, ZoneInfo("UTC"))


def msg(text: Any, **kw: Any) -> IngestParams:
    base: dict[str, Any] = dict(
        channel="telegram",
        chat_type="direct",
        peer="42",
        account_id=None,
        group_id=None,
        thread_id=None,
        agent_id=None,
        message_id="m1",
        content=text,
        timestamp_ms=None,
        sender_name=None,
        metadata=None,
    )
    base.update(kw)
    return IngestParams(**base)


def plan(
    sessions: list[Session], text: Any, now: int, pol: Policies | None = None, **kw: Any
) -> IngestPlan:
    compaction = kw.pop("compaction", True)
    triggers = kw.pop("triggers", ("/new", "/reset"))
    route = kw.pop("route", ROUTE)
    return plan_ingest(
        {s.session_key: s for s in sessions},
        route,
        msg(text, **kw),
        pol or policies(),
        now,
        reset_triggers=triggers,
        compaction=compaction,
    )


# ---------------------------------------------------------------------------------------------
# 4.1 / 4.2: the first message of a key begins its session; later ones go to it


def test_first_message_begins_a_session_with_openclaw_registry_fields() -> None:
    p = plan([], "hello", ms(2, 12))
    assert p.target is None and p.reset is None
    assert p.new is not None and p.new.session_key == KEY
    assert p.new.fields["chatType"] == "direct"
    assert p.new.fields["deliveryContext"] == {
        "channel": "telegram",
        "to": "telegram:42",
        "accountId": "default",
    }
    assert p.message is not None
    assert p.message["content"] == [{"type": "text", "text": "hello"}]
    assert p.registry["lastInteractionAt"] == ms(2, 12)
    assert p.added_tokens == 2  # ceil(5 chars / 4)


def test_a_fresh_session_receives_the_message() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], "hello again", ms(2, 12))
    assert p.target == KEY and p.new is None and p.reset is None
    assert p.origin["messageId"] == "m1"


# ---------------------------------------------------------------------------------------------
# 4.3: reset reasons


def test_daily_reset_after_the_boundary() -> None:
    s = session(started=ms(1, 20), last=ms(1, 22))
    p = plan([s], "good morning", ms(2, 9))
    assert p.reset is not None and p.reset.reason == "daily"
    assert p.reset.previous_session_id == "s-old"
    assert p.new is not None and p.new.session_key == KEY


def test_idle_reset_after_idle_minutes() -> None:
    s = session(started=ms(2, 5), last=ms(2, 6))
    p = plan([s], "back", ms(2, 8), policies("idle", idle=60))
    assert p.reset is not None and p.reset.reason == "idle"


@pytest.mark.parametrize(("now", "reason"), [(ms(2, 3, 30), "idle"), (ms(2, 9), "idle")])
def test_both_records_the_earlier_cause(now: int, reason: str) -> None:
    # Idle since 01:00 with a 120-minute limit: idle at 03:00, before the 04:00 boundary.
    s = session(started=ms(1, 20), last=ms(2, 1))
    p = plan([s], "hi", now, policies("both", idle=120))
    assert p.reset is not None and p.reset.reason == reason


def test_both_daily_first() -> None:
    s = session(started=ms(1, 20), last=ms(2, 3))
    p = plan([s], "hi", ms(2, 9), policies("both", idle=24 * 60))
    assert p.reset is not None and p.reset.reason == "daily"


def test_no_reset_while_fresh_or_with_mode_none() -> None:
    s = session(started=ms(1, 20), last=ms(1, 22))
    assert plan([s], "hi", ms(1, 23)).reset is None
    assert plan([s], "hi", ms(9, 9), policies("none")).reset is None


def test_system_events_never_reset_nor_count_as_interaction() -> None:
    s = session(started=ms(1, 20), last=ms(1, 22))
    p = plan([s], "tick", ms(2, 9), metadata={"event": "heartbeat"})
    assert p.reset is None and p.target == KEY
    assert p.registry == {"updatedAt": ms(2, 9)} and p.added_tokens is None


@pytest.mark.parametrize(
    ("text", "reason"), [("/new", "new"), ("/reset", "reset"), ("/NEW", "new")]
)
def test_trigger_resets_a_fresh_session(text: str, reason: str) -> None:
    s = session(started=ms(2, 5), last=ms(2, 11), displayName="Ann", totalTokens=999)
    p = plan([s], text, ms(2, 12))
    assert p.reset is not None and p.reset.reason == reason
    assert p.reset.data == {"reason": reason, "predecessor": "s-old", "trigger": text.lower()}
    assert p.new is not None
    assert p.new.fields["displayName"] == "Ann"  # carried: where to deliver, who
    assert "totalTokens" not in p.new.fields  # not carried: the count starts again
    assert p.command is not None and p.command.reply == "New session started ({sessionId})."


def test_a_reset_keeps_the_triggering_message() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], "/new tell me a joke", ms(2, 12))
    assert p.new is not None and p.reset is not None
    assert p.kind == "message" and p.message is not None
    assert p.message["content"] == [{"type": "text", "text": "/new tell me a joke"}]
    assert p.origin["command"] == {"name": "reset", "trigger": "/new", "text": "tell me a joke"}
    stale = session(started=ms(1, 20), last=ms(1, 22))
    q = plan([stale], "morning!", ms(2, 9))
    assert q.reset is not None and q.message is not None
    assert q.message["content"][0]["text"] == "morning!"


def test_new_with_a_model_overrides_it_in_the_new_session() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], "/new openai/gpt-4o", ms(2, 12))
    assert p.new is not None and p.reset is not None
    assert p.new.fields["modelOverride"] == "gpt-4o"
    assert p.new.fields["providerOverride"] == "openai"
    assert p.reset.data["model"] == "openai/gpt-4o"
    assert p.command is not None and p.command.reply is not None
    assert p.command.reply.endswith("Model: openai/gpt-4o.")


def test_new_on_a_key_without_a_session_just_begins_one() -> None:
    p = plan([], "/new", ms(2, 12))
    assert p.new is not None and p.reset is None


def test_daily_with_idle_minutes_behaves_as_both() -> None:
    # OpenClaw's rule: mode daily with idleMinutes set resets on whichever comes first.
    s = session(started=ms(2, 5), last=ms(2, 6))
    p = plan([s], "back", ms(2, 8), policies("daily", idle=60))
    assert p.reset is not None and p.reset.reason == "idle"


def test_the_daily_boundary_is_the_latest_at_hour_before_now() -> None:
    s = session(started=ms(2, 3), last=ms(2, 3, 10))  # began before today's 04:00
    assert plan([s], "hi", ms(2, 3, 50)).reset is None  # 03:50: the boundary is yesterday's
    p = plan([s], "hi", ms(2, 4, 1))
    assert p.reset is not None and p.reset.reason == "daily"


def test_a_daily_reset_waits_while_the_conversation_is_active() -> None:
    # Began before the boundary, but talked to 10 minutes ago: deferred for 30 quiet minutes.
    s = session(started=ms(1, 20), last=ms(2, 9))
    assert plan([s], "still here", ms(2, 9, 10)).reset is None
    p = plan([s], "later", ms(2, 9, 31))
    assert p.reset is not None and p.reset.reason == "daily"


def test_reset_by_type_and_by_channel_override_the_policy() -> None:
    s = session(started=ms(2, 5), last=ms(2, 6))
    by_type = policies("none", resetByType={"direct": {"mode": "idle", "idleMinutes": 60}})
    p = plan([s], "back", ms(2, 8), by_type)
    assert p.reset is not None and p.reset.reason == "idle"
    by_channel = policies(resetByChannel={"telegram": {"mode": "none"}})
    stale = session(started=ms(1, 20), last=ms(1, 22))
    assert plan([stale], "morning", ms(2, 9), by_channel).reset is None


def test_a_configured_trigger_resets_with_reason_reset() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], "/restart", ms(2, 12), triggers=("/new", "/restart"))
    assert p.reset is not None and p.reset.reason == "reset"
    assert p.reset.data["trigger"] == "/restart"
    assert plan([s], "/reset", ms(2, 12), triggers=("/new", "/restart")).reset is None


def test_a_trigger_at_a_stale_session_records_the_trigger_not_the_staleness() -> None:
    s = session(started=ms(1, 20), last=ms(1, 22))
    p = plan([s], "/reset", ms(2, 9))
    assert p.reset is not None and p.reset.reason == "reset"


def test_a_reset_begins_the_new_session_under_the_same_key() -> None:
    s = session(started=ms(1, 20), last=ms(1, 22), origin={"provider": "telegram"})
    p = plan([s], "hi", ms(2, 9))
    assert p.reset is not None and p.new is not None
    assert (p.reset.previous, p.new.session_key, p.target) == (KEY, KEY, None)
    assert p.new.fields["origin"] == {"provider": "telegram"}  # where to deliver: carried
    assert p.registry["lastInteractionAt"] == ms(2, 9)


# ---------------------------------------------------------------------------------------------
# 4.4: chat commands (stored like any message; the answer carries the reply)


def test_stop_writes_a_stop_entry_and_never_resets() -> None:
    s = session(started=ms(1, 20), last=ms(1, 22))
    p = plan([s], "/stop", ms(2, 9))
    assert p.reset is None and p.target == KEY
    assert p.kind == "stop" and p.message is None and p.stop_data == {"trigger": "/stop"}
    assert p.registry == {"updatedAt": ms(2, 9)}
    assert p.command is not None and p.command.reply is not None


@pytest.mark.parametrize(
    ("text", "ask"),
    [
        ("/status", "status"),
        ("/sessions", "sessions"),
        ("/compact", "compaction"),
        ("/context", "compaction"),
        ("/context detail", "context_detail"),
    ],
)
def test_informational_commands_name_who_renders_the_reply(text: str, ask: str) -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], text, ms(2, 12))
    assert p.target == KEY and p.reset is None and p.kind == "message"
    assert p.command is not None and p.command.reply is None and p.command.ask == ask


def test_compact_answers_that_a_compaction_is_scheduled() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], "/compact keep the numbers", ms(2, 12))
    assert p.compaction == {"scheduled": True, "reason": "command"}
    assert p.command is not None and p.command.arg == "keep the numbers"
    assert plan([s], "hello", ms(2, 12)).compaction is None


def test_compact_and_context_without_the_compaction_service() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    for text in ("/compact", "/context"):
        p = plan([s], text, ms(2, 12), compaction=False)
        assert p.compaction is None
        assert p.command is not None and p.command.reply is not None
        assert "not available" in p.command.reply


def test_session_routes_the_chat_to_another_session() -> None:
    chat = session(started=ms(2, 5), last=ms(2, 11))
    other = session(OTHER, "s-other", started=ms(2, 5), last=ms(2, 11))
    p = plan([chat, other], f"/session {OTHER}", ms(2, 12))
    assert p.target == KEY  # the command itself is stored in the chat's own session
    assert p.route_change is not None
    assert (p.route_change.chat_key, p.route_change.target) == (KEY, OTHER)
    routed = session(started=ms(2, 5), last=ms(2, 11), **{ROUTE_FIELD: OTHER})
    q = plan([routed, other], "hello", ms(2, 12))
    assert q.target == OTHER and q.route_change is None  # later messages go there


def test_session_alone_switches_back_and_unknown_changes_nothing() -> None:
    routed = session(started=ms(2, 5), last=ms(2, 11), **{ROUTE_FIELD: OTHER})
    other = session(OTHER, "s-other", started=ms(2, 5), last=ms(2, 11))
    p = plan([routed, other], "/session", ms(2, 12))
    assert p.route_change is not None and p.route_change.target is None
    q = plan([routed, other], "/session agent:main:nope", ms(2, 12))
    assert q.route_change is None
    assert q.command is not None and q.command.reply is not None
    assert "nothing changed" in q.command.reply


def test_a_routed_chat_resets_the_session_it_writes_to() -> None:
    routed = session(started=ms(2, 5), last=ms(2, 11), **{ROUTE_FIELD: OTHER})
    other = session(OTHER, "s-other", started=ms(2, 5), last=ms(2, 11))
    p = plan([routed, other], "/reset", ms(2, 12))
    assert p.reset is not None and p.reset.previous == OTHER
    assert p.new is not None and p.new.session_key == OTHER


def test_a_session_whose_transcript_is_gone_gets_its_header_again() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    s.size = 0
    assert plan([s], "hi", ms(2, 12)).rewrite_header


def test_the_plan_is_pure() -> None:
    s = session(started=ms(1, 20), last=ms(1, 22))
    before = dict(s.entry)
    a = plan([s], "/new", ms(2, 12))
    b = plan([s], "/new", ms(2, 12))
    assert a == b and s.entry == before


@pytest.mark.parametrize("text", ["/status", "/STATUS", "/status@my_bot", "  /status"])
def test_commands_are_recognised_at_the_start_in_any_case_and_with_a_bot_suffix(
    text: str,
) -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], text, ms(2, 12))
    assert p.command is not None and p.command.name == "status"
    assert p.origin["command"]["name"] == "status"


@pytest.mark.parametrize("text", ["hello /status", "/unknown", "/statusreport", "/ new"])
def test_anything_else_is_an_ordinary_message(text: str) -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], text, ms(2, 12))
    assert p.command is None and "command" not in p.origin
    assert p.kind == "message" and p.reset is None


def test_a_command_is_read_from_the_first_text_block() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    blocks = [{"type": "image", "url": "x"}, {"type": "text", "text": "/new"}]
    p = plan([s], blocks, ms(2, 12))
    assert p.reset is not None and p.reset.reason == "new"
    assert p.message is not None and p.message["content"] == blocks


def test_every_command_is_stored_as_a_message_in_the_session_except_stop() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    other = session(OTHER, "s-other", started=ms(2, 5), last=ms(2, 11))
    for text in (
        "/status",
        "/sessions",
        "/compact",
        "/context",
        "/context detail",
        f"/session {OTHER}",
    ):
        p = plan([s, other], text, ms(2, 12))
        assert p.kind == "message" and p.message is not None, text
        assert p.target == KEY and p.reset is None, text
        assert p.registry["lastInteractionAt"] == ms(2, 12), text
    stop = plan([s], "/stop", ms(2, 12))
    assert stop.kind == "stop" and stop.added_tokens is None


def test_context_detail_keeps_its_argument() -> None:
    s = session(started=ms(2, 5), last=ms(2, 11))
    p = plan([s], "/context detail", ms(2, 12))
    assert p.command is not None and (p.command.ask, p.command.arg) == ("context_detail", "detail")
    q = plan([s], "/context list", ms(2, 12))
    assert q.command is not None and (q.command.ask, q.command.arg) == ("compaction", "list")


def test_a_command_as_the_first_message_of_a_key_begins_its_session() -> None:
    p = plan([], "/status", ms(2, 12))
    assert p.new is not None and p.new.session_key == KEY and p.reset is None
    assert p.command is not None and p.command.ask == "status"


def test_session_to_its_own_key_clears_the_route() -> None:
    routed = session(started=ms(2, 5), last=ms(2, 11), **{ROUTE_FIELD: OTHER})
    other = session(OTHER, "s-other", started=ms(2, 5), last=ms(2, 11))
    p = plan([routed, other], f"/session {KEY}", ms(2, 12))
    assert p.route_change is not None
    assert (p.route_change.chat_key, p.route_change.target) == (KEY, None)
    assert p.target == KEY  # /session is stored where the chat itself lives

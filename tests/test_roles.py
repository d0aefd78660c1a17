"""Roles (SPEC 3): the one table every request is checked against, as plain data."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config_load import parse_config
from daemon.core.keys import agent_of_key, normalize_agent_id
from daemon.core.roles import (
    ADMIN,
    Denied,
    Lookups,
    Principal,
    ReadCaps,
    cap_entry,
    decide,
)
from daemon.errors import ConfigError
from daemon.methods import METHODS, rule_of

# Every method but auth.hello, which is how a connection gets a role (let through before rules).
GUARDED = [m for m in METHODS if m != "auth.hello"]

SESSIONS = {"sid-main": "main", "sid-work": "work"}
LOOKUPS = Lookups(
    agent_of_session=SESSIONS.get,
    routed_agent=lambda p: str(p.get("agentId") or "main"),
)
MAIN_AGENT = Principal("agent", frozenset({"main"}), "main-agent")
ADAPTER = Principal("adapter", frozenset({"main"}), "telegram")
ANY_ADAPTER = Principal("adapter", None, "any")


def verdict(p: Principal | None, method: str, params: dict[str, Any] | None = None) -> Any:
    return decide(p, method, rule_of(method), params or {}, LOOKUPS)


def code(p: Principal | None, method: str, params: dict[str, Any] | None = None) -> int | None:
    v = verdict(p, method, params)
    return v.code if isinstance(v, Denied) else None


def test_admin_may_call_everything_even_unknown_methods() -> None:
    for method in [*METHODS, "backup.verify", "whatever"]:
        assert verdict(ADMIN, method, {"agentId": "work"}) == {"agentId": "work"}


def test_a_method_not_in_the_table_is_admin_only() -> None:
    assert rule_of("sessions.delete").roles == frozenset({"admin"})
    assert code(MAIN_AGENT, "sessions.delete") == 1002
    assert code(ANY_ADAPTER, "backup.restore") == 1002


def test_without_a_principal_only_hello_is_allowed() -> None:
    assert verdict(None, "auth.hello", {"token": "x"}) == {"token": "x"}
    for method in [*GUARDED, "unknown"]:
        assert code(None, method) == 1001


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("sessions.list", {"agentId": "work"}),
        ("sessions.get", {"sessionKey": "agent:work:main"}),
        ("sessions.get", {"sessionId": "sid-work"}),
        ("sessions.history", {"sessionKey": "agent:work:main"}),
        ("sessions.history", {"sessionId": "sid-work", "previous": 1}),
        ("sessions.history", {"sessionKey": "agent:main:main", "sessionId": "sid-work"}),
        ("sessions.context", {"sessionKey": "agent:work:main"}),
        ("sessions.archived", {"agentId": "work"}),
        ("sessions.archived", {"sessionKey": "agent:work:main"}),
        ("memory.search", {"query": "x", "agentId": "work"}),
        ("memory.search", {"query": "x", "sessionId": "sid-work"}),
        ("memory.search", {"query": "x", "sessionKey": "agent:work:main"}),
        ("message.append", {"sessionKey": "agent:work:main", "message": {}}),
        ("message.append", {"sessionKey": "not-a-key", "message": {}}),
        ("message.append", {"sessionKey": "agent:WORK:main", "message": {}}),
    ],
)
def test_an_agent_is_refused_anything_of_another_agent(method: str, params: dict) -> None:
    v = verdict(MAIN_AGENT, method, params)
    assert isinstance(v, Denied) and v.code == 1002 and v.reason == "agent"


@pytest.mark.parametrize(
    "method", ["message.ingest", "status", "sessions.reset", "config.reload", "events.subscribe"]
)
def test_an_agent_may_not_call_what_its_role_lacks(method: str) -> None:
    v = verdict(MAIN_AGENT, method, {"sessionKey": "agent:main:main"})
    assert isinstance(v, Denied) and v.code == 1002 and v.reason == "role"


def test_reads_without_agent_id_are_confined_to_the_agents_own() -> None:
    assert verdict(MAIN_AGENT, "sessions.list", {}) == {"agentId": "main"}
    assert verdict(MAIN_AGENT, "sessions.archived", {"limit": 3}) == {"limit": 3, "agentId": "main"}
    assert verdict(MAIN_AGENT, "memory.search", {"query": "q"}) == {"query": "q", "agentId": "main"}
    assert verdict(MAIN_AGENT, "sessions.list", {"agentId": "Main"}) == {"agentId": "Main"}


def test_an_agent_reads_and_appends_within_its_own_agent() -> None:
    own = [
        ("sessions.get", {"sessionKey": "agent:main:main"}),
        ("sessions.history", {"sessionId": "sid-main"}),
        ("sessions.history", {"sessionId": "unknown-id"}),  # answered 1003 by the method
        ("message.append", {"sessionKey": "agent:main:x", "message": {}}),
    ]
    for method, params in own:
        assert verdict(MAIN_AGENT, method, params) == params


def test_params_of_the_wrong_type_are_left_to_validation() -> None:
    assert verdict(MAIN_AGENT, "sessions.get", {"sessionKey": 17}) == {"sessionKey": 17}


def test_adapters_write_for_their_agents_only() -> None:
    ingest = {"channel": "telegram", "chatType": "direct", "peer": "1", "text": "hi"}
    assert verdict(ADAPTER, "message.ingest", ingest) == ingest
    assert code(ADAPTER, "message.ingest", {**ingest, "agentId": "work"}) == 1002
    assert code(ADAPTER, "message.append", {"sessionKey": "agent:work:main"}) == 1002
    assert code(ADAPTER, "sessions.history", {"sessionKey": "agent:main:main"}) == 1002
    assert code(ADAPTER, "status") is None
    assert code(ANY_ADAPTER, "message.ingest", {**ingest, "agentId": "work"}) is None


@given(
    method=st.sampled_from([*GUARDED, "other"]),
    params=st.dictionaries(
        st.sampled_from(["agentId", "sessionKey", "sessionId", "query"]),
        st.one_of(st.text(max_size=30), st.integers(), st.none()),
    ),
)
def test_an_agent_is_never_let_through_to_another_agents_data(
    method: str, params: dict[str, Any]
) -> None:
    """Whatever the params, those the method reads name no agent but the caller's (params a
    method does not read are rejected by its own validation)."""
    v = verdict(MAIN_AGENT, method, params)
    if isinstance(v, Denied):
        return
    rule = rule_of(method)
    agent = v.get("agentId")
    if rule.agent_param and isinstance(agent, str):
        assert normalize_agent_id(agent) == "main"
    key = v.get("sessionKey")
    if "sessionKey" in rule.key_params and isinstance(key, str):
        assert agent_of_key(key) == "main"
    sid = v.get("sessionId")
    if "sessionId" in rule.id_params and isinstance(sid, str):
        assert SESSIONS.get(sid, "main") == "main"


# ---------------------------------------------------------------------------------------------
# Read caps


def test_long_blocks_are_cut_and_marked() -> None:
    caps = ReadCaps(max_bytes=1000, max_block_chars=5)
    entry = {
        "type": "message",
        "message": {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]},
    }
    capped, cut = cap_entry(entry, caps)
    assert cut
    assert capped["message"]["content"] == [{"type": "text", "text": "abcde…", "truncated": True}]
    assert entry["message"]["content"][0]["text"] == "abcdefgh"  # not changed in place
    short = {"type": "message", "message": {"role": "user", "content": "abc"}}
    assert cap_entry(short, caps) == (short, False)


# ---------------------------------------------------------------------------------------------
# The config that feeds it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{daemon: {listeners: [{tcp: "0.0.0.0:7000"}]}}', "must be a loopback address"),
        ('{daemon: {listeners: [{tcp: "10.1.2.3:7000"}]}}', "must be a loopback address"),
        ('{daemon: {listeners: [{tcp: "127.0.0.1:7000", role: "admin"}]}}', "no default role"),
        ('{daemon: {listeners: [{tcp: "127.0.0.1"}]}}', "HOST:PORT"),
        ('{daemon: {listeners: [{unix: "/x", tcp: "127.0.0.1:1"}]}}', "exactly one of unix"),
        ('{daemon: {listeners: [{unix: "/x", role: "agent"}]}}', "exactly one agent"),
        ('{auth: {tokens: [{token: "short", role: "admin"}]}}', "at least 16"),
        ('{auth: {tokens: [{role: "agent", agents: ["a"]}]}}', "exactly one of token"),
        ('{auth: {tokens: [{tokenEnv: "X", role: "boss"}]}}', "must be one of"),
    ],
)
def test_listener_and_token_mistakes_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.json5")
    assert message in str(e.value)


def test_loopback_listeners_and_tokens_parse() -> None:
    cfg = parse_config(
        '{daemon: {listeners: [{tcp: "[::1]:0"}, {tcp: "localhost:7700"},'
        ' {unix: "/run/s.sock", mode: "0600", role: "agent", agents: ["work"]}]},'
        ' auth: {tokens: [{tokenFile: "/etc/t", role: "adapter", agents: ["a", "b"]}]}}'
    )
    assert len(cfg.daemon.listeners) == 3
    assert cfg.daemon.listeners[2].mode == 0o600
    assert cfg.auth.tokens[0].agents == ("a", "b")

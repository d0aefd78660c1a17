"""Key resolution (SPEC 4.1): agent routing and session keys, as OpenClaw spells them.

The fixture keys come from a state folder written by OpenClaw 2026.6.11; its routing config
(agents, bindings, session) is reproduced below so the tests run without the folder, and checked
against the folder when it is present.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import Config
from daemon.core.keys import (
    Inbound,
    Route,
    agent_of_key,
    normalize_account_id,
    normalize_agent_id,
    resolve_agent,
    resolve_route,
)
from daemon.errors import InvalidParams

FIXTURE = Path(os.environ.get("SESSIOND_OPENCLAW_FIXTURE", "/work/shared/fixtures/openclaw-2026.6"))

# The routing part of the fixture's openclaw.json.
FIXTURE_ROUTING: dict[str, Any] = {
    "agents": {"list": [{"id": "main", "default": True}, {"id": "work"}]},
    "bindings": [
        {"agentId": "work", "match": {"channel": "discord", "accountId": "work"}},
        {"agentId": "work", "match": {"channel": "slack"}},
    ],
    "session": {"dmScope": "per-channel-peer"},
}


def config(**overrides: Any) -> Config:
    """The fixture's routing config with top-level sections (or session keys) replaced."""
    raw: dict[str, Any] = json.loads(json.dumps(FIXTURE_ROUTING))
    session = overrides.pop("session", {})
    raw.update(overrides)
    raw["session"] = {**raw["session"], **session}
    return Config.model_validate(raw)


def plain(**raw: Any) -> Config:
    return Config.model_validate(raw)


# ---------------------------------------------------------------------------------------------
# Every key in the fixture, reproduced from its config.

FIXTURE_KEYS: list[tuple[str, Inbound, str]] = [
    (
        "telegram dm, per-channel-peer",
        Inbound("telegram", "direct", peer="123456789"),
        "agent:main:telegram:direct:123456789",
    ),
    (
        "second telegram dm",
        Inbound("telegram", "direct", peer="987654321"),
        "agent:main:telegram:direct:987654321",
    ),
    (
        "whatsapp dm keeps the plus sign",
        Inbound("whatsapp", "direct", peer="+819012345678"),
        "agent:main:whatsapp:direct:+819012345678",
    ),
    (
        "signal dm",
        Inbound("signal", "direct", peer="+15557654321"),
        "agent:main:signal:direct:+15557654321",
    ),
    (
        "discord default account is not bound to work",
        Inbound("discord", "direct", peer="410029384756102938"),
        "agent:main:discord:direct:410029384756102938",
    ),
    (
        "discord account work is bound to work",
        Inbound("discord", "direct", peer="998877665544", account_id="work"),
        "agent:work:discord:direct:998877665544",
    ),
    (
        "telegram group",
        Inbound("telegram", "group", peer="123456789", group_id="-1001234567890"),
        "agent:main:telegram:group:-1001234567890",
    ),
    (
        "telegram forum topic as a group message with a threadId",
        Inbound("telegram", "group", peer="123", group_id="-1009876543210", thread_id="42"),
        "agent:main:telegram:group:-1009876543210:topic:42",
    ),
    (
        "telegram forum topic as a thread message",
        Inbound("telegram", "thread", peer="123", group_id="-1009876543210", thread_id="42"),
        "agent:main:telegram:group:-1009876543210:topic:42",
    ),
    (
        "slack channel id is lowercased and bound to work",
        Inbound("slack", "channel", peer="U024BE7LH", group_id="C07AB12CD"),
        "agent:work:slack:channel:c07ab12cd",
    ),
    (
        "slack thread as a channel message with a threadId",
        Inbound("slack", "channel", peer="U1", group_id="C07AB12CD", thread_id="1763300000.123456"),
        "agent:work:slack:channel:c07ab12cd:thread:1763300000.123456",
    ),
    (
        "slack thread as a thread message",
        Inbound("slack", "thread", peer="U1", group_id="C07AB12CD", thread_id="1763300000.123456"),
        "agent:work:slack:channel:c07ab12cd:thread:1763300000.123456",
    ),
]

# The webchat main sessions: dmScope main collapses every DM into agent:<id>:<mainKey>.
FIXTURE_MAIN_KEYS: list[tuple[str, Inbound, str]] = [
    ("main agent", Inbound("webchat", "direct", peer="operator"), "agent:main:main"),
    (
        "work agent requested explicitly",
        Inbound("webchat", "direct", peer="operator", agent_id="work"),
        "agent:work:main",
    ),
]


@pytest.mark.parametrize(
    ("inbound", "key"), [c[1:] for c in FIXTURE_KEYS], ids=[c[0] for c in FIXTURE_KEYS]
)
def test_fixture_keys_are_reproduced_from_the_fixture_config(inbound: Inbound, key: str) -> None:
    route = resolve_route(inbound, config().routing())
    assert route.session_key == key
    assert route.agent_id == agent_of_key(key)


@pytest.mark.parametrize(
    ("inbound", "key"), [c[1:] for c in FIXTURE_MAIN_KEYS], ids=[c[0] for c in FIXTURE_MAIN_KEYS]
)
def test_fixture_main_keys_come_from_dm_scope_main(inbound: Inbound, key: str) -> None:
    assert resolve_route(inbound, config(session={"dmScope": "main"}).routing()).session_key == key


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="OpenClaw fixture folder not present")
def test_fixture_routing_config_and_keys_match_the_real_state_folder() -> None:
    real = json.loads((FIXTURE / "openclaw.json").read_text(encoding="utf-8"))
    assert real["agents"]["list"] == FIXTURE_ROUTING["agents"]["list"]
    assert real["bindings"] == FIXTURE_ROUTING["bindings"]
    assert real["session"] == FIXTURE_ROUTING["session"]
    stored: set[str] = set()
    for registry in FIXTURE.glob("agents/*/sessions/sessions.json"):
        stored |= set(json.loads(registry.read_text(encoding="utf-8")))
    expected = {key for _, _, key in FIXTURE_KEYS + FIXTURE_MAIN_KEYS}
    assert expected == stored


def test_route_carries_normalised_channel_account_and_registry_chat_type() -> None:
    route = resolve_route(
        Inbound(" Slack ", "thread", peer="U1", group_id="C1", thread_id="T1"), config().routing()
    )
    assert route == Route(
        agent_id="work",
        session_key="agent:work:slack:channel:c1:thread:t1",
        chat_type="channel",
        account_id="default",
        channel="slack",
    )


@pytest.mark.parametrize(
    ("inbound", "chat_type"),
    [
        (Inbound("telegram", "direct", peer="1"), "direct"),
        (Inbound("telegram", "dm", peer="1"), "direct"),
        (Inbound("telegram", "group", group_id="g"), "group"),
        (Inbound("slack", "channel", group_id="c"), "channel"),
        (Inbound("slack", "thread", group_id="c", thread_id="t"), "channel"),
        (Inbound("whatsapp", "thread", group_id="g", thread_id="t"), "group"),
        (Inbound("telegram", "thread", group_id="g", thread_id="t"), "group"),
        (Inbound("discord", "group", group_id="g", thread_id="t"), "group"),
    ],
)
def test_registry_chat_type_is_direct_group_or_channel_and_threads_inherit_it(
    inbound: Inbound, chat_type: str
) -> None:
    assert resolve_route(inbound, config().routing()).chat_type == chat_type


# ---------------------------------------------------------------------------------------------
# dmScope and identity links.

DM_SCOPES = [
    ("main", "agent:main:main"),
    ("per-peer", "agent:main:direct:7550356539"),
    ("per-channel-peer", "agent:main:telegram:direct:7550356539"),
    ("per-account-channel-peer", "agent:main:telegram:tasks:direct:7550356539"),
]


@pytest.mark.parametrize(("dm_scope", "key"), DM_SCOPES)
def test_dm_scope_decides_the_direct_key(dm_scope: str, key: str) -> None:
    cfg = plain(session={"dmScope": dm_scope})
    inbound = Inbound("telegram", "direct", peer="7550356539", account_id="tasks")
    assert resolve_route(inbound, cfg.routing()).session_key == key


def test_default_dm_scope_is_main() -> None:
    route = resolve_route(Inbound("whatsapp", "direct", peer="+15551234567"), Config().routing())
    assert route.session_key == "agent:main:main"
    assert route.agent_id == "main"
    assert route.account_id == "default"


def test_per_account_channel_peer_uses_default_account_when_absent() -> None:
    cfg = plain(session={"dmScope": "per-account-channel-peer"})
    route = resolve_route(Inbound("telegram", "direct", peer="7550356539"), cfg.routing())
    assert route.session_key == "agent:main:telegram:default:direct:7550356539"


def test_main_key_is_configurable_and_lowercased() -> None:
    cfg = plain(session={"mainKey": " Home "})
    assert (
        resolve_route(Inbound("x", "direct", peer="1"), cfg.routing()).session_key
        == "agent:main:home"
    )


def test_main_key_of_only_colons_falls_back_to_main() -> None:
    cfg = plain(session={"mainKey": "::"})
    assert (
        resolve_route(Inbound("x", "direct", peer="1"), cfg.routing()).session_key
        == "agent:main:main"
    )


LINKS = {"Alice": ["telegram:111111111", "discord:222222222222222222", "+15550001111"]}

IDENTITY_LINKS = [
    (
        "per-peer links across channels",
        "per-peer",
        "telegram",
        "111111111",
        "agent:main:direct:alice",
    ),
    (
        "per-channel-peer keeps the channel",
        "per-channel-peer",
        "discord",
        "222222222222222222",
        "agent:main:discord:direct:alice",
    ),
    (
        "bare id matches any channel",
        "per-peer",
        "signal",
        "+15550001111",
        "agent:main:direct:alice",
    ),
    (
        "channel-scoped id does not match another channel",
        "per-peer",
        "whatsapp",
        "111111111",
        "agent:main:direct:111111111",
    ),
    ("main scope ignores links", "main", "telegram", "111111111", "agent:main:main"),
    ("match ignores case", "per-peer", "TELEGRAM", " 111111111 ", "agent:main:direct:alice"),
]


@pytest.mark.parametrize(
    ("dm_scope", "channel", "peer", "key"),
    [c[1:] for c in IDENTITY_LINKS],
    ids=[c[0] for c in IDENTITY_LINKS],
)
def test_identity_links_map_a_peer_to_its_canonical_name(
    dm_scope: str, channel: str, peer: str, key: str
) -> None:
    cfg = plain(session={"dmScope": dm_scope, "identityLinks": LINKS})
    assert resolve_route(Inbound(channel, "direct", peer=peer), cfg.routing()).session_key == key


def test_identity_links_do_not_touch_group_keys() -> None:
    cfg = plain(session={"dmScope": "per-peer", "identityLinks": {"alice": ["g1"]}})
    route = resolve_route(Inbound("telegram", "group", peer="g1", group_id="g1"), cfg.routing())
    assert route.session_key == "agent:main:telegram:group:g1"


# ---------------------------------------------------------------------------------------------
# Threads.

THREADS = [
    (
        "telegram topics use :topic:",
        Inbound("telegram", "group", group_id="-100", thread_id="7"),
        "agent:main:telegram:group:-100:topic:7",
    ),
    (
        "other channels use :thread:",
        Inbound("whatsapp", "group", group_id="G@g.us", thread_id="ABC"),
        "agent:main:whatsapp:group:g@g.us:thread:abc",
    ),
    (
        "discord thread hangs off a channel",
        Inbound("discord", "thread", group_id="C1", thread_id="T1"),
        "agent:main:discord:channel:c1:thread:t1",
    ),
    (
        "a blank threadId on a group message is no thread",
        Inbound("telegram", "group", group_id="-100", thread_id="  "),
        "agent:main:telegram:group:-100",
    ),
    (
        "a direct message in a thread gets its own session, as in OpenClaw",
        Inbound("slack", "direct", peer="U1", thread_id="171.5"),
        "agent:work:slack:direct:u1:thread:171.5",
    ),
]


@pytest.mark.parametrize(("inbound", "key"), [c[1:] for c in THREADS], ids=[c[0] for c in THREADS])
def test_thread_keys_extend_their_parent_key(inbound: Inbound, key: str) -> None:
    assert resolve_route(inbound, config().routing()).session_key == key


# ---------------------------------------------------------------------------------------------
# Agent routing: explicit agent, bindings by specificity, default agent.


def bindings(*items: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"agentId": agent, "match": match} for agent, match in items]


AGENTS = {"list": [{"id": "main", "default": True}, {"id": "a"}, {"id": "b"}, {"id": "c"}]}

ROUTING = [
    (
        "peer binding wins over account binding listed first",
        bindings(
            ("b", {"channel": "whatsapp", "accountId": "biz"}),
            (
                "a",
                {
                    "channel": "whatsapp",
                    "accountId": "biz",
                    "peer": {"kind": "direct", "id": "+1000"},
                },
            ),
        ),
        Inbound("whatsapp", "direct", peer="+1000", account_id="biz"),
        "a",
    ),
    (
        "dm peer kind is an alias of direct",
        bindings(("a", {"channel": "whatsapp", "peer": {"kind": "dm", "id": "+1000"}})),
        Inbound("whatsapp", "direct", peer="+1000"),
        "a",
    ),
    (
        "account binding wins over wildcard listed first",
        bindings(
            ("b", {"channel": "whatsapp", "accountId": "*"}),
            ("a", {"channel": "whatsapp", "accountId": "biz"}),
        ),
        Inbound("whatsapp", "direct", peer="+1", account_id="biz"),
        "a",
    ),
    (
        "missing accountId matches the default account",
        bindings(("a", {"channel": "whatsapp"})),
        Inbound("whatsapp", "direct", peer="+1"),
        "a",
    ),
    (
        "missing accountId does not match another account",
        bindings(("a", {"channel": "whatsapp"})),
        Inbound("whatsapp", "direct", peer="+1", account_id="biz"),
        "main",
    ),
    (
        "wildcard account matches any account",
        bindings(("a", {"channel": "whatsapp", "accountId": "*"})),
        Inbound("whatsapp", "direct", peer="+1", account_id="biz"),
        "a",
    ),
    (
        "binding account id is normalised",
        bindings(("a", {"channel": "WhatsApp", "accountId": " Biz "})),
        Inbound("whatsapp", "direct", peer="+1", account_id="BIZ"),
        "a",
    ),
    (
        "first binding wins within a tier",
        bindings(("a", {"channel": "slack"}), ("b", {"channel": "slack"})),
        Inbound("slack", "channel", group_id="C1"),
        "a",
    ),
    (
        "binding on another channel does not match",
        bindings(("a", {"channel": "slack"})),
        Inbound("discord", "channel", group_id="C1"),
        "main",
    ),
    (
        "group binding matches a channel conversation and ignores case",
        bindings(("a", {"channel": "slack", "peer": {"kind": "group", "id": "C07AB12CD"}})),
        Inbound("slack", "channel", peer="U1", group_id="c07ab12cd"),
        "a",
    ),
    (
        "group peer binding does not match the sender",
        bindings(("a", {"channel": "telegram", "peer": {"kind": "direct", "id": "42"}})),
        Inbound("telegram", "group", peer="42", group_id="-100"),
        "main",
    ),
    (
        "thread inherits its parent's binding",
        bindings(
            ("b", {"channel": "slack", "accountId": "*"}),
            ("a", {"channel": "slack", "peer": {"kind": "channel", "id": "C1"}}),
        ),
        Inbound("slack", "thread", group_id="C1", thread_id="T1"),
        "a",
    ),
    (
        "thread binding wins over its parent's",
        bindings(
            ("a", {"channel": "slack", "peer": {"kind": "channel", "id": "C1"}}),
            ("b", {"channel": "slack", "peer": {"kind": "thread", "id": "T1"}}),
        ),
        Inbound("slack", "thread", group_id="C1", thread_id="T1"),
        "b",
    ),
    (
        "telegram topic binding uses OpenClaw's topic peer id",
        bindings(
            ("a", {"channel": "telegram", "peer": {"kind": "group", "id": "-100"}}),
            ("b", {"channel": "telegram", "peer": {"kind": "group", "id": "-100:topic:7"}}),
        ),
        Inbound("telegram", "group", group_id="-100", thread_id="7"),
        "b",
    ),
    (
        "guild-scoped binding never matches",
        bindings(("a", {"channel": "discord", "guildId": "g1"})),
        Inbound("discord", "channel", group_id="c1"),
        "main",
    ),
    (
        "peer binding with an empty id never matches",
        bindings(("a", {"channel": "discord", "peer": {"kind": "direct", "id": " "}})),
        Inbound("discord", "direct", peer="x"),
        "main",
    ),
    (
        "binding to an agent not in agents.list falls back to the default",
        bindings(("ghost", {"channel": "slack"})),
        Inbound("slack", "channel", group_id="c1"),
        "main",
    ),
    (
        "bound agent id is normalised",
        bindings(("  C ", {"channel": "slack"})),
        Inbound("slack", "channel", group_id="c1"),
        "c",
    ),
    (
        "explicit agent wins over bindings",
        bindings(("a", {"channel": "slack"})),
        Inbound("slack", "channel", group_id="c1", agent_id="B"),
        "b",
    ),
    (
        "explicit agent not in agents.list is still used",
        bindings(),
        Inbound("slack", "channel", group_id="c1", agent_id="Ops Team"),
        "ops-team",
    ),
    (
        "blank explicit agent is no request",
        bindings(("a", {"channel": "slack"})),
        Inbound("slack", "channel", group_id="c1", agent_id="  "),
        "a",
    ),
]


@pytest.mark.parametrize(
    ("binding_list", "inbound", "agent"),
    [c[1:] for c in ROUTING],
    ids=[c[0] for c in ROUTING],
)
def test_agent_routing_follows_openclaw_binding_tiers(
    binding_list: list[dict[str, Any]], inbound: Inbound, agent: str
) -> None:
    cfg = plain(agents=AGENTS, bindings=binding_list)
    assert resolve_agent(inbound, cfg.routing()) == agent
    route = resolve_route(inbound, cfg.routing())
    assert route.agent_id == agent
    assert route.session_key.startswith(f"agent:{agent}:")


def test_unbound_agent_ids_are_used_as_is_when_agents_list_is_empty() -> None:
    cfg = plain(bindings=bindings(("Helper", {"channel": "slack"})))
    assert resolve_agent(Inbound("slack", "channel", group_id="c1"), cfg.routing()) == "helper"


@pytest.mark.parametrize(
    ("agents", "default"),
    [
        ({}, "main"),
        ({"list": [{"id": "Home", "default": True}]}, "home"),
        ({"list": [{"id": "First"}, {"id": "second"}]}, "first"),
    ],
)
def test_default_agent_comes_from_agents_list(agents: dict[str, Any], default: str) -> None:
    cfg = plain(agents=agents)
    assert resolve_agent(Inbound("whatsapp", "direct", peer="+1"), cfg.routing()) == default


# ---------------------------------------------------------------------------------------------
# Validation.

INVALID = [
    ("direct without peer", Inbound("telegram", "direct"), "peer"),
    ("direct with blank peer", Inbound("telegram", "direct", peer="   "), "peer"),
    ("group without groupId", Inbound("telegram", "group", peer="1"), "groupId"),
    ("channel without groupId", Inbound("slack", "channel", peer="1", group_id=""), "groupId"),
    ("thread without groupId", Inbound("slack", "thread", thread_id="t"), "groupId"),
    ("thread without threadId", Inbound("slack", "thread", group_id="c"), "threadId"),
    ("unknown chatType", Inbound("slack", "broadcast", group_id="c"), "chatType"),
    ("empty chatType", Inbound("slack", "", group_id="c"), "chatType"),
    ("empty channel", Inbound("", "direct", peer="1"), "channel"),
    ("blank channel", Inbound(" \t", "direct", peer="1"), "channel"),
]


@pytest.mark.parametrize(
    ("inbound", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_malformed_messages_raise_invalid_params_naming_the_field(
    inbound: Inbound, field: str
) -> None:
    for resolve in (resolve_route, resolve_agent):
        with pytest.raises(InvalidParams) as info:
            resolve(inbound, config().routing())
        assert info.value.field == field
        assert info.value.data == {"field": field}


def test_invalid_params_message_does_not_echo_hostile_input_unbounded() -> None:
    with pytest.raises(InvalidParams) as info:
        resolve_route(Inbound("x", "\x00" * 10_000, peer="1"), Config().routing())
    assert len(info.value.message) < 120
    assert "\x00" not in info.value.message


# ---------------------------------------------------------------------------------------------
# Id normalisation.

AGENT_IDS = [
    (None, "main"),
    ("", "main"),
    ("   ", "main"),
    ("main", "main"),
    ("Work", "work"),
    (" ops_1 ", "ops_1"),
    ("Ops Team", "ops-team"),
    ("--a--b--", "a--b"),
    ("a!!!b", "a-b"),
    ("_private", "_private"),
    ("../etc", "etc"),
    ("..", "main"),
    (".", "main"),
    ("/", "main"),
    ("a/b", "a-b"),
    ("．．／ｅｔｃ", "etc"),  # fullwidth full stops, solidus and letters (NFKC)
    ("ｗｏｒｋ", "work"),
    ("\u202ework", "work"),  # right-to-left override
    ("wo\u200brk", "wo-rk"),  # zero-width space
    ("日本語", "main"),
    ("x" * 100, "x" * 64),
    ("a" * 63 + "!b", "a" * 63 + "-"),  # OpenClaw cuts after stripping, as here
    ("_" + "a" * 62 + "!b", "_" + "a" * 62),  # ...but "_…-" would not survive a second pass
    ("a\x00b", "a-b"),
]


@pytest.mark.parametrize(("raw", "normalised"), AGENT_IDS)
def test_agent_ids_are_normalised_as_openclaw_does_plus_nfkc(
    raw: str | None, normalised: str
) -> None:
    assert normalize_agent_id(raw) == normalised


ACCOUNT_IDS = [
    (None, "default"),
    ("", "default"),
    ("Work", "work"),
    ("_prod", "_prod"),
    ("My Bot", "my-bot"),
    ("!!!", "default"),
    ("__proto__", "default"),
    ("Constructor", "default"),
    ("prototype", "default"),
    ("ｂｉｚ", "biz"),
]


@pytest.mark.parametrize(("raw", "normalised"), ACCOUNT_IDS)
def test_account_ids_are_normalised_as_openclaw_does(raw: str | None, normalised: str) -> None:
    assert normalize_account_id(raw) == normalised


def test_ordinary_platform_ids_pass_through_lowercased() -> None:
    cfg = plain(session={"dmScope": "per-channel-peer"})
    for peer in ["+819012345678", "U024BE7LH", "@alice:matrix.org", "1234@s.whatsapp.net"]:
        key = resolve_route(Inbound("x", "direct", peer=peer), cfg.routing()).session_key
        assert key == f"agent:main:x:direct:{peer.lower()}"


def test_overlong_ids_become_a_stable_prefix_and_digest() -> None:
    cfg = plain(session={"dmScope": "per-peer"})
    long_a = "A" * 200
    key = resolve_route(Inbound("x", "direct", peer=long_a), cfg.routing()).session_key
    peer_part = key.removeprefix("agent:main:direct:")
    assert re.fullmatch(r"a{111}~[0-9a-f]{16}", peer_part)
    # Same id in another case: same session, as OpenClaw lowercases ids.
    assert (
        resolve_route(Inbound("x", "direct", peer=long_a.lower()), cfg.routing()).session_key == key
    )
    # A different long id with the same prefix: a different session.
    other = resolve_route(Inbound("x", "direct", peer="a" * 199 + "b"), cfg.routing()).session_key
    assert other != key


def test_ids_with_control_or_invisible_characters_are_cleaned_and_kept_distinct() -> None:
    cfg = plain(session={"dmScope": "per-peer"})

    def key(peer: str) -> str:
        return resolve_route(Inbound("x", "direct", peer=peer), cfg.routing()).session_key

    cleaned = key("bob\x00\n\u202e evil")
    assert re.fullmatch(r"agent:main:direct:bob-evil~[0-9a-f]{16}", cleaned)
    assert key("bob\x00\n\u202e evil") == cleaned
    assert key("bob evil") != cleaned
    assert key("bob-evil") == "agent:main:direct:bob-evil"


AGENT_KEYS = [
    ("agent:work:slack:channel:c07ab12cd", "work"),
    ("agent:main:main", "main"),
    ("  AGENT:Work:main ", "work"),
    ("agent::work::main", "work"),
    ("agent:work", None),
    ("agent:work:", None),
    ("main", None),
    ("telegram:direct:1", None),
    ("agent:..:main", None),
    ("agent:a/b:main", None),
    ("agent:-x:main", None),
    ("", None),
]


@pytest.mark.parametrize(("key", "agent"), AGENT_KEYS)
def test_agent_of_key_reads_only_well_formed_agent_keys(key: str, agent: str | None) -> None:
    assert agent_of_key(key) == agent


# ---------------------------------------------------------------------------------------------
# Properties over hostile input.

AGENT_ID_RE = re.compile(r"[a-z0-9_][a-z0-9_-]{0,63}")
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"}
MAX_KEY_LENGTH = 600
STATE = PurePosixPath("/srv/sessiond")

HOSTILE_PIECES = [
    "../",
    "..",
    ".",
    "/",
    "\\",
    "\x00",
    "\x1b[31m",
    "\r\n",
    "\t",
    " ",
    ":",
    "*",
    "agent:main:",
    "／",
    "．．",
    "．．／",
    "\u202e",
    "\u200f",
    "\u200b",
    "\u2028",
    "\ufeff",
    "\U000e0041",
    "\ud800",
    "İ",
    "K",
    "ſ",
    "telegram",
    "Slack",
    "-100",
    "x" * 300,
]
hostile_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=6)), max_size=6).map(
        "".join
    ),
    st.text(min_size=129, max_size=400),
)
optional_text = st.none() | hostile_text
# Config comes from a UTF-8 file, so it cannot hold lone surrogates (pydantic rejects them).
config_text = hostile_text.filter(lambda s: not any("\ud800" <= ch <= "\udfff" for ch in s))
nonempty_hostile = config_text.filter(lambda s: len(s) > 0)

# Mostly well-formed messages (present ids, known chat types) so that most examples reach key
# building; the remainder exercise validation.
present_text = hostile_text.filter(lambda s: s.strip() != "")
mostly_present = st.one_of(present_text, present_text, present_text, st.none() | hostile_text)
inbounds = st.builds(
    Inbound,
    channel=st.one_of(
        st.sampled_from(["telegram", "slack", "discord", "whatsapp"]), present_text, hostile_text
    ),
    chat_type=st.one_of(
        st.sampled_from(["direct", "dm", "group", "channel", "thread", " Group "]),
        st.sampled_from(["direct", "group", "channel", "thread"]),
        hostile_text,
    ),
    peer=mostly_present,
    account_id=optional_text,
    group_id=mostly_present,
    thread_id=mostly_present,
    agent_id=optional_text,
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    agent_ids = draw(st.lists(nonempty_hostile | st.sampled_from(["main", "work"]), max_size=3))
    binding_list = [
        {
            "agentId": draw(nonempty_hostile | st.sampled_from(["work", "Work", ".."])),
            "match": {
                "channel": draw(st.sampled_from(["telegram", "slack"]) | nonempty_hostile),
                "accountId": draw(st.sampled_from([None, "*", "default"]) | config_text),
                **(
                    {
                        "peer": {
                            "kind": draw(st.sampled_from(["direct", "group", "thread"])),
                            "id": draw(config_text),
                        }
                    }
                    if draw(st.booleans())
                    else {}
                ),
            },
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {
        "agents": {"list": [{"id": i} for i in agent_ids]},
        "bindings": binding_list,
        "session": {
            "dmScope": draw(
                st.sampled_from(
                    ["main", "per-peer", "per-channel-peer", "per-account-channel-peer"]
                )
            ),
            "mainKey": draw(nonempty_hostile),
            "identityLinks": draw(
                st.dictionaries(config_text, st.lists(config_text, max_size=3), max_size=2)
            ),
        },
    }


def assert_safe_agent_id(agent_id: str) -> None:
    assert AGENT_ID_RE.fullmatch(agent_id), agent_id
    agents = STATE / "agents"
    # Lexical resolution, as a path join would be interpreted: one segment directly below agents/.
    resolved = PurePosixPath(os.path.normpath(agents / agent_id))
    assert resolved.parent == agents
    assert resolved.name == agent_id


def assert_safe_key(route: Route) -> None:
    key = route.session_key
    assert key.startswith(f"agent:{route.agent_id}:")
    assert len(key) <= MAX_KEY_LENGTH
    key.encode("utf-8")  # no lone surrogates: the key survives JSON and the registry file
    for ch in key:
        assert not ch.isspace(), repr(key)
        assert unicodedata.category(ch) not in UNSAFE_CATEGORIES, repr(key)
    assert agent_of_key(key) == route.agent_id


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(raw=optional_text)
def test_any_text_normalises_to_a_single_safe_path_segment(raw: str | None) -> None:
    agent_id = normalize_agent_id(raw)
    assert_safe_agent_id(agent_id)
    assert agent_id not in {".", ".."}
    assert normalize_agent_id(agent_id) == agent_id
    account = normalize_account_id(raw)
    assert AGENT_ID_RE.fullmatch(account)
    assert normalize_account_id(account) == account


@FAST
@given(inbound=inbounds, raw_cfg=configs())
def test_any_message_resolves_to_a_safe_bounded_deterministic_key_or_invalid_params(
    inbound: Inbound, raw_cfg: dict[str, Any]
) -> None:
    cfg = Config.model_validate(raw_cfg)
    try:
        route = resolve_route(inbound, cfg.routing())
    except InvalidParams as e:
        assert e.field in {"peer", "groupId", "threadId", "chatType", "channel"}
        return
    assert_safe_agent_id(route.agent_id)
    assert_safe_key(route)
    assert route.chat_type in {"direct", "group", "channel"}
    assert AGENT_ID_RE.fullmatch(route.account_id)
    assert route.channel and len(route.channel) <= 128
    assert resolve_agent(inbound, cfg.routing()) == route.agent_id
    # Deterministic: the same message under an equal, freshly parsed config lands in the same place.
    assert resolve_route(inbound, Config.model_validate(raw_cfg).routing()) == route


@FAST
@given(
    channel=st.sampled_from(["telegram", "slack"]) | nonempty_hostile,
    peer=nonempty_hostile,
    group=nonempty_hostile,
    thread=nonempty_hostile,
)
def test_hostile_ids_in_well_formed_messages_still_give_safe_keys(
    channel: str, peer: str, group: str, thread: str
) -> None:
    for dm_scope in ("per-peer", "per-account-channel-peer"):
        cfg = plain(session={"dmScope": dm_scope})
        for inbound in (
            Inbound(channel, "direct", peer=peer, account_id=group, thread_id=thread),
            Inbound(channel, "thread", peer=peer, group_id=group, thread_id=thread),
            Inbound(channel, "channel", peer=peer, group_id=group),
        ):
            try:
                route = resolve_route(inbound, cfg.routing())
            except InvalidParams:
                # Only when an id is blank once trimmed.
                assert not (channel.strip() and peer.strip() and group.strip() and thread.strip())
                continue
            assert_safe_key(route)

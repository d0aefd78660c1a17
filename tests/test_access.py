"""Access policy (SPEC 4.2): which senders and groups may reach a session at all."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import AccessConfig
from daemon.core.access import AccessRules, check_access
from daemon.core.keys import Inbound


def access(**raw: Any) -> AccessRules:
    return AccessConfig.model_validate(raw).rules()


def dm(peer: str | None, channel: str = "telegram") -> Inbound:
    return Inbound(channel, "direct", peer=peer)


def group(
    group_id: str | None, sender: str | None = "1", channel: str = "telegram", kind: str = "group"
) -> Inbound:
    return Inbound(
        channel, kind, peer=sender, group_id=group_id, thread_id="t" if kind == "thread" else None
    )


TELEGRAM_ALLOWLIST = {
    "channels": {"telegram": {"dm": "allowlist", "allowFrom": ["123", "telegram:456"]}}
}

ALLOWED = [
    ("default config allows a dm", {}, dm("999")),
    ("default config allows a group", {}, group("-100")),
    ("default config allows a dm without peer", {}, dm(None)),
    ("bare id in allowFrom", TELEGRAM_ALLOWLIST, dm("123")),
    ("channel-prefixed id in allowFrom", TELEGRAM_ALLOWLIST, dm("456")),
    (
        "allowFrom compares case-insensitively",
        {"default": {"dm": "allowlist", "allowFrom": ["Telegram:ABC"]}},
        dm("abc"),
    ),
    (
        "allowFrom ignores surrounding spaces",
        {"default": {"dm": "allowlist", "allowFrom": [" 7 "]}},
        dm(" 7"),
    ),
    ("star allows everyone", {"default": {"dm": "allowlist", "allowFrom": ["*"]}}, dm("anyone")),
    (
        "allowlist on another channel does not apply",
        TELEGRAM_ALLOWLIST,
        dm("999", channel="signal"),
    ),
    ("dm policy does not restrict groups", TELEGRAM_ALLOWLIST, group("-100", sender="999")),
    (
        "group in allowGroups",
        {"default": {"groups": "allowlist", "allowGroups": ["-100"]}},
        group("-100"),
    ),
    (
        "channel-prefixed group in allowGroups",
        {"default": {"groups": "allowlist", "allowGroups": ["slack:C1"]}},
        group("c1", channel="slack", kind="channel"),
    ),
    (
        "thread checked against its group",
        {"default": {"groups": "allowlist", "allowGroups": ["C1"]}},
        group("C1", channel="slack", kind="thread"),
    ),
    (
        "star allows every group",
        {"default": {"groups": "allowlist", "allowGroups": ["*"]}},
        group("-5"),
    ),
    (
        "sender in groupAllowFrom",
        {"default": {"groupAllowFrom": ["telegram:42"]}},
        group("-100", sender="42"),
    ),
    ("groupAllowFrom does not restrict dms", {"default": {"groupAllowFrom": ["42"]}}, dm("999")),
    ("dm chat type alias", TELEGRAM_ALLOWLIST, Inbound("telegram", "DM", peer="123")),
]


@pytest.mark.parametrize(("raw", "inbound"), [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_allowed_messages_get_no_reason(raw: dict[str, Any], inbound: Inbound) -> None:
    assert check_access(inbound, access(**raw)) is None


REFUSED = [
    (
        "sender not in the channel's allowFrom",
        TELEGRAM_ALLOWLIST,
        dm("999"),
        "sender telegram:999 is not in access.channels.telegram.allowFrom",
    ),
    (
        "another channel's prefix does not count",
        {"default": {"dm": "allowlist", "allowFrom": ["discord:999"]}},
        dm("999"),
        "sender telegram:999 is not in access.default.allowFrom",
    ),
    (
        "empty allowlist refuses everyone",
        {"default": {"dm": "allowlist"}},
        dm("1"),
        "sender telegram:1 is not in access.default.allowFrom",
    ),
    (
        "allowlist refuses a dm without peer",
        {"default": {"dm": "allowlist", "allowFrom": ["1"]}},
        dm(None),
        "sender telegram:(unknown) is not in access.default.allowFrom",
    ),
    (
        "dms disabled",
        {"channels": {"telegram": {"dm": "disabled"}}},
        dm("1"),
        "direct messages on telegram are disabled by access.channels.telegram.dm",
    ),
    (
        "channel section is found case-insensitively",
        {"channels": {"Telegram": {"dm": "disabled"}}},
        dm("1", channel=" TELEGRAM"),
        "direct messages on telegram are disabled by access.channels.Telegram.dm",
    ),
    (
        "channel section inherits the default's dm mode",
        {"default": {"dm": "allowlist"}, "channels": {"telegram": {"allowFrom": ["1"]}}},
        dm("2"),
        "sender telegram:2 is not in access.channels.telegram.allowFrom",
    ),
    (
        "groups disabled",
        {"default": {"groups": "disabled"}},
        group("-100"),
        "group messages on telegram are disabled by access.default.groups",
    ),
    (
        "group not in allowGroups",
        {"default": {"groups": "allowlist", "allowGroups": ["-1"]}},
        group("-100"),
        "group telegram:-100 is not in access.default.allowGroups",
    ),
    (
        "thread in a group not in allowGroups",
        {"channels": {"slack": {"groups": "allowlist", "allowGroups": ["C1"]}}},
        group("C2", channel="slack", kind="thread"),
        "group slack:C2 is not in access.channels.slack.allowGroups",
    ),
    (
        "sender not in groupAllowFrom",
        {"default": {"groupAllowFrom": ["42"]}},
        group("-100", sender="43"),
        "sender telegram:43 is not in access.default.groupAllowFrom",
    ),
    (
        "group sender unknown while groupAllowFrom is set",
        {"default": {"groupAllowFrom": ["42"]}},
        group("-100", sender=None),
        "sender telegram:(unknown) is not in access.default.groupAllowFrom",
    ),
    (
        "groupAllowFrom applies inside allowed groups",
        {"default": {"groups": "allowlist", "allowGroups": ["-100"], "groupAllowFrom": ["42"]}},
        group("-100", sender="7"),
        "sender telegram:7 is not in access.default.groupAllowFrom",
    ),
    (
        "unknown chat type is refused",
        {},
        Inbound("telegram", "broadcast", peer="1"),
        "unknown chat type broadcast",
    ),
]


@pytest.mark.parametrize(
    ("raw", "inbound", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_messages_get_a_reason_naming_sender_and_config_key(
    raw: dict[str, Any], inbound: Inbound, reason: str
) -> None:
    assert check_access(inbound, access(**raw)) == reason


@settings(max_examples=100, deadline=None)
@given(sender=st.text(max_size=300))
def test_reasons_are_single_printable_bounded_lines(sender: str) -> None:
    reason = check_access(dm(sender), access(default={"dm": "allowlist"}))
    assert reason is not None
    assert reason.isprintable()
    assert len(reason) < 200


@settings(max_examples=100, deadline=None)
@given(sender=st.text(min_size=1, max_size=40).filter(lambda s: s == s.strip() and s != "*"))
def test_a_listed_sender_is_allowed_bare_or_with_its_channel_prefix_in_any_case(
    sender: str,
) -> None:
    entries = [sender, f"telegram:{sender}", f"TELEGRAM:{sender}"]
    if sender.upper().lower() == sender.lower():
        entries.append(sender.upper())
    for entry in entries:
        policy = access(default={"dm": "allowlist", "allowFrom": [entry]})
        assert check_access(dm(sender), policy) is None
    refused = access(default={"dm": "allowlist", "allowFrom": [f"discord:{sender}"]})
    assert check_access(dm(sender), refused) is not None

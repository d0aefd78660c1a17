"""Which key segments keep their case, channel by channel, as OpenClaw's routing does.

OpenClaw lowercases every session-key segment except the ids listed in `CASE_PRESERVING_PEERS`
(`src/sessions/session-key-utils.ts`, applied by `buildAgentPeerSessionKey` in
`src/routing/session-key.ts` through `normalizeSessionPeerId`):
- Signal group ids, a single segment (openclaw/openclaw#82853);
- Matrix room ids of group/channel conversations with their thread event ids (#87366, #75670).
The expectations below are the ones OpenClaw's own tests state (`session-key` case tests:
"still preserves Signal group ids", "keeps Signal DM (direct) peers folded", "keeps lowercasing a
Signal thread suffix", "preserves the Matrix room id AND the :thread:<event> suffix",
"lowercases non-enrolled channels", "does NOT preserve non-enrolled channels").
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import Config
from daemon.core.keys import Inbound, case_kept_key, resolve_route

CFG = Config.model_validate({"session": {"dmScope": "per-channel-peer"}})
SIGNAL_GROUP = "VWATodkf2hc8zdOS76q9Tb0+5Bi522E03qLdaQ/9ypg="  # OpenClaw's own test id
ROOM = "!MixedRoomAbCdEf:example.org"
EVENT = "$EvMixedCaseAbCdEfGhIjKlMnOpQrStUvWxYz0"


def key(inbound: Inbound) -> str:
    return resolve_route(inbound, CFG.routing()).session_key


CASES: list[tuple[str, Inbound, str]] = [
    # Signal: group ids are base64, kept verbatim (#82853) ...
    (
        "signal group",
        Inbound("signal", "group", peer="+15550001", group_id=SIGNAL_GROUP),
        f"agent:main:signal:group:{SIGNAL_GROUP}",
    ),
    # ... a thread suffix under it is still lowercased ("segment" span, not "tail") ...
    (
        "signal group thread",
        Inbound("signal", "group", peer="+1", group_id="AbC123=", thread_id="XyZ"),
        "agent:main:signal:group:AbC123=:thread:xyz",
    ),
    # ... and direct peers (numbers, UUIDs) are folded.
    (
        "signal direct",
        Inbound("signal", "direct", peer="AbC-Uuid"),
        "agent:main:signal:direct:abc-uuid",
    ),
    # Matrix: room ids (with their embedded ":server") and thread event ids are kept (#87366) ...
    (
        "matrix channel",
        Inbound("matrix", "channel", peer="@bob:x", group_id=ROOM),
        f"agent:main:matrix:channel:{ROOM}",
    ),
    (
        "matrix group thread",
        Inbound("matrix", "group", peer="@bob:x", group_id=ROOM, thread_id=EVENT),
        f"agent:main:matrix:group:{ROOM}:thread:{EVENT}",
    ),
    # ... but a DM's MXID is folded (openclaw#102313 is open; #110021 was not merged).
    (
        "matrix direct",
        Inbound("matrix", "direct", peer="@Bob:Example.Org"),
        "agent:main:matrix:direct:@bob:example.org",
    ),
    # Every other channel is lowercased, whatever the conversation kind.
    (
        "telegram group",
        Inbound("telegram", "group", peer="1", group_id="MixedHandle"),
        "agent:main:telegram:group:mixedhandle",
    ),
    (
        "telegram topic",
        Inbound("telegram", "group", peer="1", group_id="-100123", thread_id="Ab"),
        "agent:main:telegram:group:-100123:topic:ab",
    ),
    (
        "slack channel thread",
        Inbound("slack", "channel", peer="U1", group_id="C1", thread_id="ABC"),
        "agent:main:slack:channel:c1:thread:abc",
    ),
    (
        "discord channel",
        Inbound("discord", "channel", peer="1", group_id="AbC"),
        "agent:main:discord:channel:abc",
    ),
    (
        "whatsapp group",
        Inbound("whatsapp", "group", peer="+1", group_id="120363AbC@g.us"),
        "agent:main:whatsapp:group:120363abc@g.us",
    ),
    (
        "msteams channel",
        Inbound("msteams", "channel", peer="u", group_id="19:AbC@thread.tacv2"),
        "agent:main:msteams:channel:19:abc@thread.tacv2",
    ),
    (
        "imessage direct",
        Inbound("imessage", "direct", peer="Alice@Example.com"),
        "agent:main:imessage:direct:alice@example.com",
    ),
    # The channel name itself is structural: always folded, Signal included.
    (
        "channel name",
        Inbound("Signal", "group", peer="+1", group_id="AbC="),
        "agent:main:signal:group:AbC=",
    ),
]


@pytest.mark.parametrize(("name", "inbound", "expected"), CASES, ids=[c[0] for c in CASES])
def test_keys_keep_case_exactly_where_openclaw_does(
    name: str, inbound: Inbound, expected: str
) -> None:
    assert key(inbound) == expected


def test_two_signal_groups_that_differ_only_in_case_get_two_sessions() -> None:
    a = key(Inbound("signal", "group", peer="+1", group_id="AbC123="))
    b = key(Inbound("signal", "group", peer="+1", group_id="abc123="))
    assert a != b


def test_case_kept_key_needs_proof_of_the_exact_id() -> None:
    folded = "agent:main:signal:group:abc123="
    assert case_kept_key(folded, {"groupId": "AbC123="}) == "agent:main:signal:group:AbC123="
    # OpenClaw's own entries carry the exact id in their delivery target.
    entry = {"deliveryContext": {"channel": "signal", "to": "signal:group:AbC123="}}
    assert case_kept_key(folded, entry) == "agent:main:signal:group:AbC123="
    assert case_kept_key(folded, {"lastTo": "group:AbC123="}) == "agent:main:signal:group:AbC123="
    # No proof, or proof of another group: the key stays.
    assert case_kept_key(folded, {}) is None
    assert case_kept_key(folded, {"groupId": "XyZ="}) is None
    # Already exact, or a channel whose ids are folded: nothing to do.
    assert case_kept_key("agent:main:signal:group:AbC123=", {"groupId": "AbC123="}) is None
    assert case_kept_key("agent:main:telegram:group:abc", {"groupId": "AbC"}) is None
    assert case_kept_key("agent:main:signal:direct:+1", {"groupId": "+1"}) is None


def test_case_kept_key_restores_matrix_rooms_and_their_threads() -> None:
    folded = f"agent:main:matrix:channel:{ROOM.lower()}"
    entry = {"deliveryContext": {"to": f"room:{ROOM}"}}
    assert case_kept_key(folded, entry) == f"agent:main:matrix:channel:{ROOM}"
    threaded = f"{folded}:thread:{EVENT.lower()}"
    # A thread key is renamed only when the thread id's case is known too.
    assert case_kept_key(threaded, entry) is None
    with_thread = {**entry, "lastThreadId": EVENT}
    assert (
        case_kept_key(threaded, with_thread) == f"agent:main:matrix:channel:{ROOM}:thread:{EVENT}"
    )


BASE64 = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
    min_size=1,
    max_size=60,
)


@given(BASE64)
def test_a_key_lowercased_by_an_earlier_sessiond_is_restored_to_the_key_messages_resolve_to(
    group: str,
) -> None:
    exact = key(Inbound("signal", "group", peer="+1", group_id=group))
    folded = key(Inbound("telegram", "group", peer="+1", group_id=group)).replace(
        "telegram", "signal"
    )
    restored = case_kept_key(folded, {"groupId": group})
    assert restored == (None if folded == exact else exact)
    assert case_kept_key(exact, {"groupId": group}) is None  # idempotent

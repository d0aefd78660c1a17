"""Session keys: which agent an inbound message belongs to, and which session key it lands in.

The rules are OpenClaw's (`src/routing/resolve-route.ts`, `src/routing/session-key.ts`,
`src/routing/account-id.ts`) so that a state folder written by OpenClaw keeps resolving to the same
sessions when sessiond takes it over. Where OpenClaw trusts its input and we cannot (adapters are
other programs), ids are additionally made safe: a key never carries control or invisible
characters, never grows without bound, and an agent id can always be used as one path segment.

Everything here is pure: plain data in, plain data out, no files, sockets or clocks.

Key shapes, `<a>` being the normalised agent id:

    direct   main                       agent:<a>:<mainKey>
             per-peer                   agent:<a>:direct:<peer>
             per-channel-peer           agent:<a>:<channel>:direct:<peer>
             per-account-channel-peer   agent:<a>:<channel>:<account>:direct:<peer>
    group / channel                     agent:<a>:<channel>:<group|channel>:<groupId>
    thread (any channel but telegram)   <parent key>:thread:<threadId>
    telegram forum topic                agent:<a>:telegram:group:<groupId>:topic:<threadId>

With the bounds below a key is at most about 540 characters (see `_MAX_KEY_LENGTH`).

Case: every segment is lowercased, as OpenClaw does, except the ids OpenClaw keeps verbatim
because their platform treats them as opaque and case-sensitive (`CASE_PRESERVING_PEERS` in
OpenClaw's `src/sessions/session-key-utils.ts`, used by `buildAgentPeerSessionKey` in
`src/routing/session-key.ts`):
- Signal group ids (base64): openclaw/openclaw#82853, in OpenClaw since 2026.5.17. Signal direct
  peers (phone numbers, UUIDs) stay lowercased, and so does a thread suffix under a group.
- Matrix room ids of group/channel conversations, and the thread event ids under them:
  openclaw/openclaw#87366 (issue #75670), since 2026.5.27. Matrix direct peers (MXIDs) stay
  lowercased (openclaw/openclaw#102313 is open, #110021 was not merged).
Keys sessiond wrote before it kept that case are renamed once their registry entry proves the
exact id (`case_kept_key`, applied at start-up by daemon/keymigrate.py).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from daemon.errors import InvalidParams

__all__ = [
    "BindingRule",
    "Inbound",
    "PeerRule",
    "Route",
    "RoutingSettings",
    "agent_of_key",
    "normalize_account_id",
    "normalize_agent_id",
    "resolve_agent",
    "resolve_route",
]

DEFAULT_AGENT_ID = "main"
DEFAULT_ACCOUNT_ID = "default"
DEFAULT_MAIN_KEY = "main"


@dataclass(frozen=True, slots=True)
class Inbound:
    """What an adapter says about an inbound message, before any normalisation."""

    channel: str
    chat_type: str  # "direct" | "group" | "channel" | "thread" ("dm" is accepted as direct)
    peer: str | None = None  # direct: the other party; group/channel/thread: the sender
    account_id: str | None = None
    group_id: str | None = None
    thread_id: str | None = None
    agent_id: str | None = None  # explicit agent requested by the adapter (normalised, still used)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes: the agent, its session key and what the registry records about it."""

    agent_id: str  # normalised
    session_key: str  # e.g. "agent:main:telegram:direct:123456789"
    chat_type: str  # the registry's chatType: "direct" | "group" | "channel"
    account_id: str  # normalised, "default" when absent
    channel: str  # normalised channel name (lowercase)


@dataclass(frozen=True, slots=True)
class PeerRule:
    """`bindings[].match.peer` as written: a conversation a binding names."""

    kind: str  # "direct" | "dm" | "group" | "channel" | "thread"
    id: str


@dataclass(frozen=True, slots=True)
class BindingRule:
    """One `bindings` entry as written (normalised when matched, as OpenClaw does)."""

    agent_id: str
    channel: str
    account_id: str | None = None
    peer: PeerRule | None = None
    guild_id: str | None = None
    team_id: str | None = None


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """What routing reads of the config (built by `Config.routing()` in daemon/config.py)."""

    known_agents: frozenset[str] = frozenset()  # agents.list ids, normalised; empty: any agent
    default_agent: str = DEFAULT_AGENT_ID  # normalised
    bindings: tuple[BindingRule, ...] = ()
    dm_scope: str = "main"  # main | per-peer | per-channel-peer | per-account-channel-peer
    main_key: str = DEFAULT_MAIN_KEY
    identity_links: Mapping[str, Sequence[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Agent and account ids: path-safe tokens, normalised exactly as OpenClaw does, plus NFKC.

# OpenClaw's fast path: an id that already looks valid is only lowercased. ASCII-only so that
# the Kelvin sign or a long s cannot pass for a letter under IGNORECASE.
_VALID_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII | re.IGNORECASE)
_INVALID_ID_RUN = re.compile(r"[^a-z0-9_-]+")
_MAX_ID_LENGTH = 64
# OpenClaw refuses these as account ids (they would poison a JS object); keep the same mapping
# so an account named "constructor" lands in the same sessions under both.
_BLOCKED_ACCOUNT_IDS = frozenset({"__proto__", "prototype", "constructor"})


def _canonical_id(raw: str | None, fallback: str) -> str:
    # NFKC first: fullwidth "／" or "．" fold to ASCII and are then replaced like any other
    # punctuation, so a lookalike can never survive as something a path would interpret.
    text = unicodedata.normalize("NFKC", raw or "").strip()
    if not text:
        return fallback
    if _VALID_ID.fullmatch(text):
        return text.lower()
    # Same order as OpenClaw: replace, strip dashes, then cut (a cut may end on "-").
    cleaned = _INVALID_ID_RUN.sub("-", text.lower()).strip("-")[:_MAX_ID_LENGTH]
    if not _VALID_ID.fullmatch(cleaned):
        # Only "_…-" gets here (a leading "_" fails the fast path). OpenClaw would strip that
        # dash on the next pass; doing it now keeps normalising idempotent, so an id read back
        # from a key or a folder name maps to the same agent.
        cleaned = cleaned.rstrip("-")
    return cleaned or fallback


def normalize_agent_id(raw: str | None) -> str:
    """Agent id as OpenClaw spells it on disk: lowercase [a-z0-9_-], at most 64, else "main".

    The result always matches ``[a-z0-9_][a-z0-9_-]{0,63}``, so it is one safe path segment
    (never "", "." or "..", never containing "/"): it names `agents/<agentId>/`.
    """
    return _canonical_id(raw, DEFAULT_AGENT_ID)


@functools.lru_cache(maxsize=1024)
def normalize_account_id(raw: str | None) -> str:
    """Account id as OpenClaw spells it: the agent-id rules, with "default" for empty or blocked."""
    canonical = _canonical_id(raw, DEFAULT_ACCOUNT_ID)
    authored = unicodedata.normalize("NFKC", raw or "").strip().lower()
    if canonical in _BLOCKED_ACCOUNT_IDS or authored in _BLOCKED_ACCOUNT_IDS:
        return DEFAULT_ACCOUNT_ID
    return canonical


# ---------------------------------------------------------------------------------------------
# Key components (channel, peer, group, thread, main key): lowercased as OpenClaw does, and made
# safe. An ordinary platform id passes through unchanged, so OpenClaw's keys are reproduced.

_MAX_COMPONENT = 128
_DIGEST_HEX = 16  # 64 bits of sha256: collisions between distinct hostile ids are not practical
_PREFIX = _MAX_COMPONENT - 1 - _DIGEST_HEX
# Control, format (bidi overrides, zero-width, tag characters), surrogate and separator
# characters: invisible or line-breaking in logs, terminals and JSON consumers.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"})
_MAX_KEY_LENGTH = 6 + _MAX_ID_LENGTH + 1 + _MAX_COMPONENT + 1 + _MAX_ID_LENGTH + 8 + _MAX_COMPONENT
_MAX_KEY_LENGTH += 8 + _MAX_COMPONENT  # a thread suffix on the longest base (per-account DM)


def _is_unsafe(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in _UNSAFE_CATEGORIES


def _component(raw: str, keep_case: bool = False) -> str:
    """One key segment: trimmed and lowercased (unless `keep_case`); unsafe or overlong ids get
    a stable digest.

    An id that had to be changed keeps a readable prefix and gains "~" plus a digest of the
    (lowercased) original, so two different hostile ids never share a session by being cleaned
    to the same text.
    """
    text = raw.strip() if keep_case else raw.strip().lower()
    if text.isascii() and text.isprintable() and " " not in text:
        if len(text) <= _MAX_COMPONENT:
            return text
        cleaned = text
    else:
        out: list[str] = []
        for ch in text:
            if not _is_unsafe(ch):
                out.append(ch)
            elif not out or out[-1] != "-":
                out.append("-")
        cleaned = "".join(out)
        if cleaned == text and len(text) <= _MAX_COMPONENT:
            return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_HEX]
    return f"{cleaned[:_PREFIX]}~{digest}"


def _main_key(raw: str) -> str:
    # A main key of only colons would leave "agent:<a>:" without a rest segment, which OpenClaw's
    # key parser (and agent_of_key) would no longer recognise as an agent key.
    key = _component(raw)
    return key if key.strip(":") else DEFAULT_MAIN_KEY


# ---------------------------------------------------------------------------------------------
# The message's scope, validated once: what bindings match against and keys are built from.

_CHAT_TYPES: Mapping[str, str] = {
    "direct": "direct",
    "dm": "direct",
    "group": "group",
    "channel": "channel",
    "thread": "thread",
}
# chatType "thread" does not say what it hangs off. On these platforms threads live in channels
# (Slack, Discord, Teams, Mattermost); elsewhere (Telegram topics, WhatsApp, Signal...) in groups.
# Adapters that know better send chatType group/channel with a threadId.
_CHANNEL_THREAD_PLATFORMS = frozenset({"slack", "discord", "msteams", "mattermost"})
_TOPIC_PLATFORMS = frozenset({"telegram"})
# (channel -> conversation kinds) whose ids OpenClaw keeps verbatim (see the module docstring).
_CASE_KEPT: Mapping[str, frozenset[str]] = {
    "signal": frozenset({"group"}),
    "matrix": frozenset({"group", "channel"}),
}
# Channels whose thread ids under a case-kept conversation are kept verbatim too.
_CASE_KEPT_THREADS = frozenset({"matrix"})


def keeps_case(channel: str, kind: str) -> bool:
    """Whether OpenClaw keeps the case of this channel's ids of this conversation kind."""
    return kind in _CASE_KEPT.get(channel, frozenset())


@dataclass(frozen=True, slots=True)
class _Scope:
    channel: str  # normalised component
    account_id: str  # normalised
    kind: str  # "direct" | "group" | "channel"
    peer: str  # trimmed raw; "" when a group message names no sender
    group_id: str  # trimmed raw; "" for direct messages
    thread_id: str  # trimmed raw; "" when not in a thread


def _trimmed(value: str | None) -> str:
    return value.strip() if value else ""


def _shown(value: str) -> str:
    """A caller's value as it may appear in an error message: escaped and short."""
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def _scope_of(inbound: Inbound) -> _Scope:
    channel = _trimmed(inbound.channel)
    if not channel:
        raise InvalidParams("channel", "must not be empty")
    chat_type = _CHAT_TYPES.get(_trimmed(inbound.chat_type).lower())
    if chat_type is None:
        raise InvalidParams(
            "chatType",
            f"must be direct, group, channel or thread, got {_shown(inbound.chat_type)}",
        )
    peer = _trimmed(inbound.peer)
    group_id = _trimmed(inbound.group_id)
    thread_id = _trimmed(inbound.thread_id)
    channel_name = _component(channel)
    if chat_type == "direct":
        if not peer:
            raise InvalidParams("peer", "is required for a direct message")
        group_id = ""
        kind = "direct"
    elif chat_type == "thread":
        if not group_id:
            raise InvalidParams("groupId", "is required for a thread message")
        if not thread_id:
            raise InvalidParams("threadId", "is required for a thread message")
        kind = "channel" if channel_name in _CHANNEL_THREAD_PLATFORMS else "group"
    else:
        if not group_id:
            raise InvalidParams("groupId", f"is required for a {chat_type} message")
        kind = chat_type
    return _Scope(
        channel=channel_name,
        account_id=normalize_account_id(inbound.account_id),
        kind=kind,
        peer=peer,
        group_id=group_id,
        thread_id=thread_id,
    )


# ---------------------------------------------------------------------------------------------
# Agent routing: explicit agent, else bindings in OpenClaw's tiers, else the default agent.
#
# Tiers, first match in config order within a tier wins:
#   1. peer          binding.peer names this conversation (the DM peer, the group, or the thread)
#   2. peer.parent   binding.peer names the group/channel a thread belongs to
#   3. account       no peer; accountId equals the message's account (absent means "default")
#   4. channel       no peer; accountId "*" (any account)
# Bindings constrained by guildId/teamId never match: inbound messages carry neither.

_Peer = tuple[str, str]  # (kind, id lowercased)


def _peer_candidates(scope: _Scope) -> tuple[list[_Peer], list[_Peer]]:
    """The peers a binding may name for this message: its own, then its thread's parent."""
    if scope.kind == "direct":
        return [("direct", scope.peer.lower())], []
    group = scope.group_id.lower()
    if not scope.thread_id:
        return [(scope.kind, group)], []
    thread = scope.thread_id.lower()
    own: list[_Peer] = [("thread", thread)]
    if scope.channel in _TOPIC_PLATFORMS:
        # OpenClaw's telegram peer id for a forum topic is "<chatId>:topic:<threadId>".
        own.insert(0, (scope.kind, f"{group}:topic:{thread}"))
    return own, [(scope.kind, group)]


def _peer_kind(raw: str) -> str:
    return "direct" if raw == "dm" else raw


def _peer_matches(match: PeerRule, candidates: Sequence[_Peer]) -> bool:
    want_id = match.id.strip().lower()
    if not want_id:
        return False  # OpenClaw treats a peer constraint without id as never matching
    want_kind = _peer_kind(match.kind)
    for kind, peer_id in candidates:
        # OpenClaw lets a "group" binding match a "channel" conversation and vice versa.
        same_kind = want_kind == kind or {want_kind, kind} == {"group", "channel"}
        if same_kind and peer_id == want_id:
            return True
    return False


def _account_pattern(binding: BindingRule) -> str:
    return (binding.account_id or "").strip()


def _binding_in_scope(binding: BindingRule, scope: _Scope) -> bool:
    m = binding
    if _component(m.channel) != scope.channel:
        return False
    if (m.guild_id or "").strip() or (m.team_id or "").strip():
        return False
    pattern = _account_pattern(binding)
    return pattern == "*" or normalize_account_id(pattern) == scope.account_id


def _bound_agent(scope: _Scope, bindings: Sequence[BindingRule]) -> str | None:
    if not bindings:
        return None
    candidates = [b for b in bindings if _binding_in_scope(b, scope)]
    if not candidates:
        return None
    own, parent = _peer_candidates(scope)
    tiers: tuple[Callable[[BindingRule], bool], ...] = (
        lambda b: b.peer is not None and _peer_matches(b.peer, own),
        lambda b: b.peer is not None and _peer_matches(b.peer, parent),
        lambda b: b.peer is None and _account_pattern(b) != "*",
        lambda b: b.peer is None and _account_pattern(b) == "*",
    )
    for tier in tiers:
        for binding in candidates:
            if tier(binding):
                return binding.agent_id
    return None


def _existing_agent(agent_id: str, cfg: RoutingSettings) -> str:
    """A bound agent that `agents.list` does not know falls back to the default (as OpenClaw)."""
    normalised = normalize_agent_id(agent_id)
    known = cfg.known_agents
    if not known or normalised in known:
        return normalised
    return cfg.default_agent


def _agent_for(scope: _Scope, inbound: Inbound, cfg: RoutingSettings) -> str:
    if _trimmed(inbound.agent_id):
        return normalize_agent_id(inbound.agent_id)
    bound = _bound_agent(scope, cfg.bindings)
    if bound is not None:
        return _existing_agent(bound, cfg)
    return cfg.default_agent


def resolve_agent(inbound: Inbound, cfg: RoutingSettings) -> str:
    """The agent a message belongs to; raises InvalidParams when the message is malformed."""
    return _agent_for(_scope_of(inbound), inbound, cfg)


# ---------------------------------------------------------------------------------------------
# Session keys.


def _linked_peer(links: Mapping[str, Sequence[str]], channel: str, peer: str) -> str | None:
    """`session.identityLinks`: the canonical name whose list holds "<channel>:<peer>" or peer."""
    wanted = {peer.lower(), f"{channel}:{peer}".lower()}
    for canonical, ids in links.items():
        name = canonical.strip()
        if name and any(i.strip().lower() in wanted for i in ids if i.strip()):
            return name
    return None


def _session_key(agent_id: str, scope: _Scope, cfg: RoutingSettings) -> str:
    if scope.kind == "direct":
        dm_scope = cfg.dm_scope
        peer = scope.peer
        if dm_scope != "main":
            peer = _linked_peer(cfg.identity_links, scope.channel, peer) or peer
        peer_id = _component(peer)
        if dm_scope == "per-account-channel-peer":
            base = f"agent:{agent_id}:{scope.channel}:{scope.account_id}:direct:{peer_id}"
        elif dm_scope == "per-channel-peer":
            base = f"agent:{agent_id}:{scope.channel}:direct:{peer_id}"
        elif dm_scope == "per-peer":
            base = f"agent:{agent_id}:direct:{peer_id}"
        else:
            base = f"agent:{agent_id}:{_main_key(cfg.main_key)}"
    else:
        kept = keeps_case(scope.channel, scope.kind)
        group = _component(scope.group_id, kept)
        base = f"agent:{agent_id}:{scope.channel}:{scope.kind}:{group}"
    if not scope.thread_id:
        return base
    kept_thread = scope.channel in _CASE_KEPT_THREADS and keeps_case(scope.channel, scope.kind)
    thread = _component(scope.thread_id, kept_thread)
    if scope.kind != "direct" and scope.channel in _TOPIC_PLATFORMS:
        return f"{base}:topic:{thread}"
    return f"{base}:thread:{thread}"


def resolve_route(inbound: Inbound, cfg: RoutingSettings) -> Route:
    """Agent and session key for an inbound message; raises InvalidParams naming the bad field."""
    scope = _scope_of(inbound)
    agent_id = _agent_for(scope, inbound, cfg)
    return Route(
        agent_id=agent_id,
        session_key=_session_key(agent_id, scope, cfg),
        chat_type=scope.kind,
        account_id=scope.account_id,
        channel=scope.channel,
    )


def agent_of_key(session_key: str) -> str | None:
    """The agent an "agent:<id>:<rest>" key belongs to, or None if it is not such a key.

    Parsed as OpenClaw does (trimmed, case-insensitive, empty segments ignored), but an agent
    segment that is not already a normalised id ("..", "Work/") yields None rather than being
    normalised: authorisation must never map a foreign-looking key onto a real agent.
    """
    parts = [p for p in session_key.strip().lower().split(":") if p]
    if len(parts) < 3 or parts[0] != "agent":
        return None
    agent_id = parts[1]
    return agent_id if normalize_agent_id(agent_id) == agent_id else None


# ---------------------------------------------------------------------------------------------
# Keys written before case was kept: renamed once the registry entry proves the exact id.

# Prefixes OpenClaw and sessiond put before a conversation id in delivery targets
# (`deliveryContext.to`, `lastTo`, `origin.to`): "signal:group:<id>", "group:<id>", "room:<id>".
_TARGET_PREFIXES = ("signal:", "matrix:", "group:", "room:", "channel:")


def _exact_ids(entry: Mapping[str, object]) -> list[str]:
    """Conversation ids an entry records in their original case, most reliable first."""
    out: list[str] = []
    gid = entry.get("groupId")
    if isinstance(gid, str) and gid.strip():
        out.append(gid.strip())
    targets: list[object] = [entry.get("lastTo")]
    for name in ("deliveryContext", "origin"):
        obj = entry.get(name)
        if isinstance(obj, Mapping):
            targets.append(obj.get("to"))
    for t in targets:
        if not isinstance(t, str):
            continue
        text = t.strip()
        stripped = True
        while stripped:
            stripped = False
            for p in _TARGET_PREFIXES:
                if text.lower().startswith(p):
                    text, stripped = text[len(p) :], True
        if text:
            out.append(text)
    return out


def case_kept_key(session_key: str, entry: Mapping[str, object]) -> str | None:
    """The key OpenClaw (and sessiond now) gives the conversation of a registry entry stored
    under a lowercased key, when the entry proves the id's exact case; else None.

    Proof: an id the entry records (`groupId`, or a delivery target) that lowercases to the key's
    id segment. Without it the key stays as it is: guessing could merge two groups whose ids
    differ only in case, which is the very thing keeping the case prevents.
    """
    parts = session_key.split(":")
    if len(parts) < 5 or parts[0] != "agent" or not keeps_case(parts[2], parts[3]):
        return None
    head = ":".join(parts[:4]) + ":"
    rest = session_key[len(head) :]
    channel = parts[2]
    thread = ""
    cut = rest.rfind(":thread:")
    if cut != -1:
        rest, thread = rest[:cut], rest[cut:]
    if channel in _CASE_KEPT_THREADS and thread:
        tid = entry.get("lastThreadId")
        exact = _component(str(tid), True) if isinstance(tid, (str, int)) else None
        if exact is None or exact.lower() != thread[len(":thread:") :]:
            return None  # the thread id's case is not known: keep the whole key
        thread = f":thread:{exact}"
    for raw in _exact_ids(entry):
        exact = _component(raw, True)
        if _component(raw) == rest and exact != rest:
            return f"{head}{exact}{thread}"
    return None

"""What one inbound message does to the sessions of its key (SPEC section 4), decided without
touching anything: `plan_ingest` reads a small view of the agent's sessions and returns an
`IngestPlan`; the pipeline applies the plan in one place (daemon/pipeline.py).

The order of the decision is the SPEC's:
  1. is it a chat command (SPEC 4.4), a system event (heartbeat, cron) or a /stop?
  2. which session receives it: the chat's own, or the one `/session <key>` routed it to;
  3. does that session reset first: a reset trigger (/new, /reset) or a stale session (daily,
     idle, both: SPEC 4.3). System events and /stop never reset. A reset keeps the triggering
     message: it becomes the first message of the new session;
  4. what is written: the message (or a `sessiond.stop` entry for /stop), and the registry
     fields it moves;
  5. what the sender is answered, including the reply to a command.

Replies that need more than the session's entry (/status, /sessions, /compact, /context) are
named in the plan (`CommandPlan.ask`) and rendered by whoever holds that state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from daemon.core import tokens
from daemon.core.commands import Command, message_text, parse_command, split_model
from daemon.core.keys import Route
from daemon.core.policy import Staleness
from daemon.core.protocol import IngestParams

ROUTE_FIELD = "sessiondRouteTo"  # registry field: this chat's messages go to another session
RESET_ENTRY = "sessiond.reset"  # first entry of a session begun by a reset: why, and after what
STOP_ENTRY = "sessiond.stop"  # a /stop: the agent runtime was told to abort (session.stop)

# Registry fields a new session inherits from the one a reset replaced (where to deliver, who).
CARRIED = (
    "chatType",
    "origin",
    "deliveryContext",
    "lastChannel",
    "lastTo",
    "lastAccountId",
    "lastThreadId",
    "channel",
    "groupId",
    "displayName",
    "subject",
    "modelOverride",
    "providerOverride",
    ROUTE_FIELD,
)

ResetReason = str  # "daily" | "idle" | "new" | "reset" (and the API's and scheduler's own)
Ask = Literal["status", "sessions", "compaction", "context_detail"]


class SessionView(Protocol):
    """What the planner reads of one live session (the store's `SessionState` is one)."""

    @property
    def session_key(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def entry(self) -> Mapping[str, Any]: ...
    @property
    def size(self) -> int: ...


class ResetPolicy(Protocol):
    """Judges staleness (daemon/lifecycle.py `Policies`: memoised `core.policy.evaluate`)."""

    def staleness(self, st: Any, now: int, not_before: int = 0) -> Staleness: ...


@dataclass(frozen=True, slots=True)
class ResetPlan:
    reason: ResetReason
    previous: str  # session key of the session that ends
    previous_session_id: str
    data: dict[str, Any]  # the `sessiond.reset` entry's data in the new session


@dataclass(frozen=True, slots=True)
class NewSession:
    """A session to begin (header first): with a reset it replaces `ResetPlan.previous`."""

    session_key: str
    fields: dict[str, Any]  # its first registry fields


@dataclass(frozen=True, slots=True)
class RouteChange:
    """/session <key>: the chat's entry (`chat_key`) routes to `target`, or back to itself."""

    chat_key: str
    target: str | None


@dataclass(frozen=True, slots=True)
class CommandPlan:
    name: str
    reply: str | None  # None: rendered by the holder of `ask` after the plan is applied
    ask: Ask | None = None
    arg: str = ""  # /compact's instructions, /context's "detail"


@dataclass(frozen=True, slots=True)
class IngestPlan:
    """The whole decision for one message. `target` receives the entry unless `new` is set."""

    target: str | None  # key of the existing session that receives the message
    new: NewSession | None  # begin this session (its id is drawn when applied)
    reset: ResetPlan | None
    kind: Literal["message", "stop"]
    message: dict[str, Any] | None  # the user message (kind "message")
    stop_data: dict[str, Any] | None  # the `sessiond.stop` entry's data (kind "stop")
    origin: dict[str, Any]  # the entry-level `origin`
    registry: dict[str, Any]  # fields of the receiving session's entry set by this message
    added_tokens: int | None  # added to the receiving entry's `totalTokens` (None: untouched)
    route_change: RouteChange | None
    command: CommandPlan | None
    compaction: dict[str, Any] | None  # the answer's `compaction` known now (/compact)
    rewrite_header: bool  # the receiving session's transcript is gone: start it again


def plan_ingest(
    sessions: Mapping[str, SessionView],
    route: Route,
    params: IngestParams,
    policy: ResetPolicy,
    now: int,
    *,
    reset_triggers: tuple[str, ...],
    compaction: bool = True,
) -> IngestPlan:
    """Decide what `params` (routed to `route`) does to the agent's `sessions` at `now`.

    `compaction` says whether the compaction service runs (else /compact and /context say so).
    """
    p = params
    cmd = None
    text = p.content if isinstance(p.content, str) else message_text(p.content)
    if text and text.lstrip().startswith("/"):
        cmd = parse_command(text, reset_triggers)
    system = is_system_event(p)
    # /stop aborts the agent's run: it never resets a session nor counts as interaction.
    stop = cmd is not None and cmd.name == "stop"
    chat = sessions.get(route.session_key)
    st = chat
    if chat is not None and not (cmd and cmd.name == "session"):
        routed = chat.entry.get(ROUTE_FIELD)
        if isinstance(routed, str) and routed in sessions:
            st = sessions[routed]
    reset: ResetPlan | None = None
    if st is not None and not (system or stop):
        reason: str | None = None
        if cmd is not None and cmd.is_reset:
            reason = "new" if cmd.trigger.lower() == "/new" else "reset"
        else:
            verdict = policy.staleness(st, now)
            if verdict.stale:
                reason = verdict.reason
        if reason is not None:
            data: dict[str, Any] = {"reason": reason, "predecessor": st.session_id}
            if cmd is not None and cmd.is_reset:
                data["trigger"] = cmd.trigger
                if cmd.model:
                    data["model"] = cmd.model
            reset = ResetPlan(reason, st.session_key, st.session_id, data)
    new: NewSession | None = None
    if reset is not None:
        assert st is not None
        new = NewSession(st.session_key, carried_fields(st.entry, cmd))
    elif st is None:
        new = NewSession(route.session_key, registry_fields(route, p))
    origin = origin_of(route, p)
    if cmd is not None:
        origin["command"] = command_origin(cmd)
    if system or stop:
        registry: dict[str, Any] = {"updatedAt": now}
        added: int | None = None
    else:
        registry = {
            "updatedAt": now,
            "lastInteractionAt": now,
            "lastChannel": route.channel,
            "lastAccountId": route.account_id,
        }
        added = math.ceil(tokens.content_chars(p.content) / 4)
    receiving_key = new.session_key if new is not None else st.session_key if st else ""
    command, route_change = _command(cmd, sessions, chat, receiving_key, route.agent_id, compaction)
    return IngestPlan(
        target=None if new is not None or st is None else st.session_key,
        new=new,
        reset=reset,
        kind="stop" if stop else "message",
        message=None if stop else user_message(p, now),
        stop_data={"trigger": "/stop"} if stop else None,
        origin=origin,
        registry=registry,
        added_tokens=added,
        route_change=route_change,
        command=command,
        compaction={"scheduled": True, "reason": "command"}
        if compaction and cmd is not None and cmd.name == "compact"
        else None,
        rewrite_header=new is None and st is not None and st.size == 0,
    )


def spread_new_sessions(
    keys: Sequence[str | None],
    known: Callable[[str], bool],
    cap: int,
    alone_cap: int | None = None,
    *,
    begun: int = 0,
    others: bool = False,
) -> list[int]:
    """Which requests of a batch wait for the next batch, so that a batch that also answers
    existing sessions begins at most `cap` new ones (each is a file created before the batch
    is acknowledged: a batch that creates hundreds holds the other sessions' acks that long),
    and a batch of new sessions alone at most `alone_cap` (None: no bound). The bound for new
    sessions alone is larger: splitting a burst adds a journal sync per batch, but unbounded, a
    cold start's batch began 878 sessions in 325 ms while the messages arriving meanwhile (for
    the sessions just begun) waited behind it.

    `keys[i]` is request i's session key (None: it never begins a session, e.g. entries for an
    existing one); `known(key)` says whether that session exists. `begun` and `others`: the
    batch these requests join already begins `begun` sessions / answers other requests.
    Waiting are the requests of new keys beyond the cap, with every later request of those
    keys, so each session's requests keep their order. Returns the indices that wait, in
    order; at least one new session begins when the batch begins none yet (requests held
    back always progress)."""
    begun_keys: set[str] = set()
    held: set[str] = set()
    waiting: list[int] = []
    room = max(cap, alone_cap or 0) - begun
    if begun == 0:
        room = max(room, 1)
    for i, key in enumerate(keys):
        if key is None:
            others = True
        elif key in begun_keys:
            continue
        elif key in held:
            waiting.append(i)
        elif known(key):
            others = True
        elif len(begun_keys) < room:
            begun_keys.add(key)
        else:
            held.add(key)
            waiting.append(i)
    if others:
        # The bound of a mixed batch: the new keys begun beyond it wait too (the first ones
        # in order begin; a key's later requests follow it).
        mixed_room = max(cap - begun, 1 if begun == 0 else 0)
        if len(begun_keys) > mixed_room:
            order = list(dict.fromkeys(k for k in keys if k in begun_keys))
            held.update(order[mixed_room:])
            waiting = [i for i, k in enumerate(keys) if k is not None and k in held]
    elif alone_cap is None:
        return []
    return waiting


def ingest_answer(
    session_key: str | None,  # None only for a restored session whose key is lost
    session_id: str,
    entry_id: str,
    created: bool,
    *,
    reset: dict[str, Any] | None = None,
    command: dict[str, Any] | None = None,
    compaction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer to a `message.ingest` (SPEC 3), the one place it is built: by the pipeline
    once the message is durable, and by the store for a message id it finds again on disk."""
    return {
        "sessionKey": session_key,
        "sessionId": session_id,
        "entryId": entry_id,
        "created": created,
        "duplicate": False,
        "reset": reset,
        "command": command,
        "compaction": compaction,
    }


def as_duplicate(answer: Mapping[str, Any]) -> dict[str, Any]:
    """The first answer, given again to a repeated message id."""
    return {**answer, "duplicate": True}


def _command(
    cmd: Command | None,
    sessions: Mapping[str, SessionView],
    chat: SessionView | None,
    receiving_key: str,
    agent_id: str,
    compaction: bool,
) -> tuple[CommandPlan | None, RouteChange | None]:
    """The reply to a chat command (the message itself is stored like any other)."""
    if cmd is None:
        return None, None
    name = cmd.name
    if cmd.is_reset:
        # The new session's id is drawn when the plan is applied: "{sessionId}" is filled then.
        reply = "New session started ({sessionId})."
        if cmd.model:
            reply += f" Model: {cmd.model}."
        return CommandPlan(name, reply), None
    if name == "status":
        return CommandPlan(name, None, "status"), None
    if name == "sessions":
        return CommandPlan(name, None, "sessions"), None
    if name == "session":
        chat_key = chat.session_key if chat is not None else receiving_key
        return _switch(cmd.arg, chat_key, agent_id, sessions)
    if name == "stop":
        return CommandPlan(name, "Stopping: the agent's current run is told to abort."), None
    if not compaction:  # compact, context
        reply = f"/{name} is not available: the compaction service is not running."
        return CommandPlan(name, reply), None
    if name == "context" and cmd.arg.lower() == "detail":
        return CommandPlan(name, None, "context_detail", cmd.arg), None
    return CommandPlan(name, None, "compaction", cmd.arg), None


def _switch(
    arg: str, chat_key: str, agent_id: str, sessions: Mapping[str, SessionView]
) -> tuple[CommandPlan, RouteChange | None]:
    if not arg:
        reply = f"This chat is back on its own session ({chat_key})."
        return CommandPlan("session", reply), RouteChange(chat_key, None)
    target = arg.strip()
    if target not in sessions and target != chat_key:
        reply = f"No active session {target!r} for agent {agent_id}; nothing changed."
        return CommandPlan("session", reply), None
    change = RouteChange(chat_key, None if target == chat_key else target)
    reply = f"This chat now writes to {target}. Send /session alone to switch back."
    return CommandPlan("session", reply), change


# ---------------------------------------------------------------------------------------------
# Registry and origin fields, as OpenClaw writes them


def carried_fields(old: Mapping[str, Any], command: Command | None) -> dict[str, Any]:
    fields = {k: old[k] for k in CARRIED if k in old}
    if command is not None and command.model:
        provider, model = split_model(command.model)
        fields["modelOverride"] = model
        if provider:
            fields["providerOverride"] = provider
    return fields


def user_message(p: IngestParams, now: int) -> dict[str, Any]:
    return {
        "role": "user",
        # SPEC 2: content as blocks (OpenClaw readers accept blocks and plain strings).
        "content": [{"type": "text", "text": p.content}]
        if isinstance(p.content, str)
        else p.content,
        "timestamp": p.timestamp_ms if p.timestamp_ms is not None else now,
    }


def _from_to(route: Route, p: IngestParams) -> tuple[str, str]:
    if route.chat_type == "direct":
        who = f"{route.channel}:{p.peer}"
        return who, who
    target = f"{route.channel}:{p.group_id}"
    if p.thread_id is not None:
        target += f":topic:{p.thread_id}" if route.channel == "telegram" else ""
    return f"{route.channel}:group:{p.group_id}", target


def registry_fields(route: Route, p: IngestParams) -> dict[str, Any]:
    """The first registry fields of a session begun by an inbound message."""
    frm, to = _from_to(route, p)
    origin: dict[str, Any] = {
        "provider": route.channel,
        "surface": route.channel,
        "chatType": route.chat_type,
        "from": frm,
        "to": to,
        "accountId": route.account_id,
    }
    if p.sender_name and route.chat_type == "direct":
        origin["label"] = p.sender_name
    delivery: dict[str, Any] = {"channel": route.channel, "to": to, "accountId": route.account_id}
    fields: dict[str, Any] = {
        # OpenClaw's registry knows direct and group; a channel shows as group there, and as
        # channel in origin.chatType.
        "chatType": "direct" if route.chat_type == "direct" else "group",
        "origin": origin,
        "deliveryContext": delivery,
        "lastChannel": route.channel,
        "lastTo": to,
        "lastAccountId": route.account_id,
    }
    if p.thread_id is not None:
        origin["threadId"] = p.thread_id
        delivery["threadId"] = p.thread_id
        fields["lastThreadId"] = p.thread_id
    if route.chat_type != "direct":
        fields["channel"] = route.channel
        fields["groupId"] = p.group_id
    return fields


def origin_of(route: Route, p: IngestParams) -> dict[str, Any]:
    """The entry-level `origin` object: where the message came from, and its adapter id."""
    origin: dict[str, Any] = {
        "channel": route.channel,
        "chatType": p.chat_type,
        "accountId": route.account_id,
    }
    if p.peer is not None:
        origin["peer"] = p.peer
    if p.group_id is not None:
        origin["groupId"] = p.group_id
    if p.thread_id is not None:
        origin["threadId"] = p.thread_id
    if p.message_id is not None:
        origin["messageId"] = p.message_id
    if p.sender_name is not None:
        origin["senderName"] = p.sender_name
    if p.metadata is not None:
        origin["metadata"] = p.metadata
    return origin


def is_system_event(p: IngestParams) -> bool:
    """Heartbeats and cron wake-ups are stored but are not interaction: they never move
    lastInteractionAt and never trigger a reset. Adapters mark them in `metadata`."""
    md = p.metadata
    if not md:
        return False
    return md.get("system") is True or md.get("event") in ("heartbeat", "cron")


def command_origin(cmd: Command) -> dict[str, Any]:
    out: dict[str, Any] = {"name": cmd.name, "trigger": cmd.trigger}
    if cmd.is_reset:
        out["text"] = cmd.text
        if cmd.model:
            out["model"] = cmd.model
    elif cmd.arg:
        out["arg"] = cmd.arg
    return out


def stop_event(agent_id: str, st: SessionView, entry_id: str, p: IngestParams) -> dict[str, Any]:
    """The `session.stop` notification: which session's run to abort, and the /stop's ids."""
    return {
        "agentId": agent_id,
        "sessionKey": st.session_key,
        "sessionId": st.session_id,
        "entryId": entry_id,
        "channel": p.channel,
        "messageId": p.message_id,
    }

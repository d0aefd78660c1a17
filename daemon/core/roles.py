"""Who may call what: roles, principals, and the check every request passes before dispatch.

Pure: no sockets, no store. Each method's `Rule` is a column of the one method table
(daemon/methods.py). The server asks `decide(principal, method, rule, params, lookups)` for every
request before dispatching it; the answer is the params to dispatch with (possibly confined to the
caller's own agent) or a `Denied` saying why not. `lookups` are the two facts that need the live
store or the routing config: which agent a session id belongs to, and which agent an inbound
message would be routed to.

Invariants the rules keep (SPEC 3):
  1. admin may call everything; a method the table does not know is admin-only (its rule is
     ADMIN_ONLY), so a method added later is never open to adapters or agents by accident.
  2. An agent principal names exactly one agent and can never name another one: every agentId,
     sessionKey and sessionId in its params must belong to its agent, or the answer is 1002.
  3. A principal of None (a connection that must authenticate and has not) may only call
     `auth.hello`; everything else is 1001.
  4. A read that would range over every agent (sessions.list without agentId) is confined to the
     caller's agent by adding agentId, so the method itself never needs to know about roles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from daemon.core.keys import agent_of_key, normalize_agent_id
from daemon.errors import FORBIDDEN, UNAUTHENTICATED

Role = Literal["admin", "adapter", "agent"]
ROLES: tuple[Role, ...] = ("admin", "adapter", "agent")
HELLO = "auth.hello"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, the agents it may touch (None: every agent), and for logs its name.

    `digest` is the sha256 of the token it authenticated with (None for a listener's default
    role); the server looks the token up again on every request, so a token removed by a config
    reload stops working on connections that are already open.
    """

    role: Role
    agents: frozenset[str] | None
    name: str
    digest: bytes | None = None

    def may_touch(self, agent_id: str) -> bool:
        return self.agents is None or agent_id in self.agents


ADMIN = Principal("admin", None, "socket")


@dataclass(frozen=True, slots=True)
class Rule:
    """One method's role rule: the roles that may call it and which params name agents.

    `agent_param`: params["agentId"] names an agent. `key_params` / `id_params`: params naming a
    session by key / by id. `routed`: the agent is the one the message routes to (ingest).
    `confine`: an agent principal that leaves agentId out gets its own agent filled in.
    """

    roles: frozenset[Role]
    agent_param: bool = False
    key_params: tuple[str, ...] = ()
    id_params: tuple[str, ...] = ()
    routed: bool = False
    confine: bool = False


# For a method without a row in the table (invariant 1).
ADMIN_ONLY = Rule(frozenset({"admin"}))


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request is refused: `code` is 1001 or 1002; `agent` is the agent it reached for."""

    code: int
    reason: Literal["unauthenticated", "role", "agent"]
    message: str
    agent: str | None = None


@dataclass(frozen=True, slots=True)
class Lookups:
    """What deciding needs from outside the params (both may return None: unknown)."""

    agent_of_session: Callable[[str], str | None]
    routed_agent: Callable[[dict[str, Any]], str | None]


def decide(
    principal: Principal | None,
    method: str,
    rule: Rule,
    params: dict[str, Any],
    lookups: Lookups,
) -> dict[str, Any] | Denied:
    """The params to dispatch with, or why the request is refused; `rule` is the method's row
    (ADMIN_ONLY for a method the table does not know).

    Params of the wrong type are passed through untouched: the method's own validation answers
    them with -32602, and a value that is not a string can never select another agent's data.
    """
    if method == HELLO:
        return params
    if principal is None:
        return Denied(
            UNAUTHENTICATED,
            "unauthenticated",
            "this connection has not authenticated: send auth.hello {token} first",
        )
    if principal.role == "admin":
        return params
    if principal.role not in rule.roles:
        return Denied(FORBIDDEN, "role", f"the {principal.role} role may not call {method}", None)
    if principal.agents is None:
        return params
    for agent in _named_agents(rule, params, lookups):
        if agent is None or not principal.may_touch(agent):
            return Denied(
                FORBIDDEN,
                "agent",
                f"{method}: {principal.name} may not touch agent {agent!r}"
                if agent is not None
                else f"{method}: sessionKey does not name an agent {principal.name} may touch",
                agent,
            )
    if rule.confine and params.get("agentId") is None:
        if len(principal.agents) != 1:
            return Denied(FORBIDDEN, "agent", f"{method}: name the agentId to read")
        (own,) = principal.agents
        return {**params, "agentId": own}
    return params


def _named_agents(rule: Rule, params: dict[str, Any], lookups: Lookups) -> list[str | None]:
    """Every agent the params reach for; None for a session key that names no agent."""
    out: list[str | None] = []
    if rule.agent_param:
        v = params.get("agentId")
        if isinstance(v, str):
            out.append(normalize_agent_id(v))
    for name in rule.key_params:
        v = params.get(name)
        if isinstance(v, str):
            out.append(agent_of_key(v))
    for name in rule.id_params:
        v = params.get(name)
        if isinstance(v, str):
            agent = lookups.agent_of_session(v)
            if agent is not None:  # an unknown id finds nothing: the method answers 1003
                out.append(agent)
    if rule.routed:
        agent = lookups.routed_agent(params)
        if agent is not None:
            out.append(agent)
    return out


# ---------------------------------------------------------------------------------------------
# Read caps: what an agent's reads may return at most


@dataclass(frozen=True, slots=True)
class ReadCaps:
    """A total byte budget per answer and a per-block text limit (characters)."""

    max_bytes: int
    max_block_chars: int


def cap_text(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit] + "…", True


def cap_entry(entry: dict[str, Any], caps: ReadCaps) -> tuple[dict[str, Any], bool]:
    """The entry with each content block's text cut to the limit (those blocks get
    `truncated: true`); the original is not changed. Returns (entry, whether anything was cut)."""
    msg = entry.get("message")
    if not isinstance(msg, dict):
        return entry, False
    content = msg.get("content")
    limit = caps.max_block_chars
    if isinstance(content, str):
        text, cut = cap_text(content, limit)
        if not cut:
            return entry, False
        return {**entry, "message": {**msg, "content": text, "truncated": True}}, True
    if not isinstance(content, list):
        return entry, False
    blocks: list[Any] = []
    any_cut = False
    for block in content:
        if isinstance(block, dict):
            changed = dict(block)
            for field in ("text", "thinking", "content"):
                v = block.get(field)
                if isinstance(v, str):
                    changed[field], cut = cap_text(v, limit)
                    if cut:
                        changed["truncated"] = True
                        any_cut = True
            blocks.append(changed)
        else:
            blocks.append(block)
    if not any_cut:
        return entry, False
    return {**entry, "message": {**msg, "content": blocks}}, True

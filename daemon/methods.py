"""The protocol's methods: one table, one row per method (README "Protocol reference").

A row says how the method's params are read, who may call it, what answers it and how:

    METHODS[name] = Method(parse, handler, rule, kind)

Invariants the table keeps:
  1. A method is served only if it has a row; any other name is -32601 for admin. The role check
     runs first, with ADMIN_ONLY for a name without a row (`rule_of`), so adapters and agents get
     1002 and unauthenticated connections 1001 for it, exactly as for a real admin-only method.
  2. Every request takes the same path, in this order: OpenClaw's spellings are rewritten to ours
     (daemon/core/aliases.py), the role check decides on those canonical params
     (daemon/core/roles.py `decide`, with the row's `rule`), `parse` validates them (-32602
     naming the field), and only then is `handler` called, with typed params. A handler never
     sees raw params, and a refused caller never learns whether its params were valid.
  3. `kind` says how the answer comes:
       "sync"   the handler returns the result at once, on the connection's reader: it reads
                memory only and never waits, so it answers even while the disk is slow;
       "async"  the handler returns an awaitable, run in the connection's task group: answers
                may leave in another order than requests came in (they carry the request's id);
       "commit" the handler hands the request to the committer with the reply callback (it
                answers once the write is durable) and returns an awaitable only when the
                committer's queue is full, which the reader awaits (backpressure).
  4. Every row is documented in README's protocol reference under its own heading, and every
     method documented there has a row (tests/test_methods.py).
  5. The table is plain data built at import time; the objects that answer (pipeline, read API,
     search, compactor, reloader) come from `Services`, given to the Server at construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from daemon.auth import Conn, parse_hello
from daemon.core import protocol
from daemon.core.roles import ADMIN_ONLY, ROLES, ReadCaps, Role, Rule
from daemon.errors import RequestError
from daemon.events import EVENTS

if TYPE_CHECKING:
    from daemon.api import Api
    from daemon.auth import Auth
    from daemon.compaction import Compactor
    from daemon.pipeline import Pipeline
    from daemon.reload import Reloader
    from daemon.search import SearchService

Kind = Literal["sync", "async", "commit"]
P = TypeVar("P")
Reply = Callable[[dict[str, Any] | RequestError], None]


class Peer(Conn, Protocol):
    """What handlers need of a connection (daemon.server.Connection): its number and role (the
    auth check's `Conn`) and where event notifications go. A Protocol, so that this table does not
    import the server that imports it."""

    def notify(self, line: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Services:
    """What answers the methods; app.py builds it once and gives it to the Server."""

    pipeline: Pipeline
    api: Api
    search: SearchService
    compactor: Compactor
    reloader: Reloader


@dataclass(frozen=True, slots=True)
class Call:
    """One admitted request on its way to its handler: what answers it, who sent it, where the
    answer goes (only "commit" handlers use `reply`; the server replies for the others)."""

    services: Services
    auth: Auth
    conn: Peer
    reply: Reply


@dataclass(frozen=True, slots=True)
class Method(Generic[P]):
    """One row. `P` ties the two together: mypy checks that each handler takes what its parser
    returns."""

    parse: Callable[[dict[str, Any]], P]
    handler: Callable[[Call, P], Any]
    rule: Rule
    kind: Kind


def row(
    parse: Callable[[dict[str, Any]], P], handler: Callable[[Call, P], Any], rule: Rule, kind: Kind
) -> Method[Any]:
    """A row whose handler mypy checks against its parser's type (built inside a dict of
    `Method[Any]`, the lambda would be checked against Any)."""
    return Method(parse, handler, rule, kind)


_READERS: frozenset[Role] = frozenset({"admin", "agent"})
_KEY = ("sessionKey",)
_ID = ("sessionId",)
# auth.hello is how a connection gets a role: core/roles.py lets it through before any rule.
ANYONE = Rule(frozenset(ROLES))


def _subscribe(c: Call, events: frozenset[str]) -> dict[str, Any]:
    c.services.pipeline.events.subscribe(c.conn.number, c.conn.notify, events)
    return {"subscribed": sorted(events)}


def _parse_subscribe(params: dict[str, Any]) -> frozenset[str]:
    return protocol.parse_subscribe(params, EVENTS)


def _caps(c: Call) -> ReadCaps | None:
    return c.auth.read_caps(c.conn)


# The methods (SPEC 3 for the roles; README "Protocol reference" for params and answers).
METHODS: dict[str, Method[Any]] = {
    "auth.hello": row(parse_hello, lambda c, token: c.auth.hello(c.conn, token), ANYONE, "sync"),
    "status": row(
        protocol.parse_empty,
        lambda c, _: c.services.api.status(),
        Rule(frozenset({"admin", "adapter"})),
        "sync",
    ),
    "message.ingest": row(
        protocol.parse_ingest,
        lambda c, p: c.services.pipeline.ingest(p, c.reply),
        Rule(frozenset({"admin", "adapter"}), routed=True),
        "commit",
    ),
    "message.append": row(
        protocol.parse_append,
        lambda c, p: c.services.pipeline.append(p, c.reply),
        Rule(frozenset(ROLES), key_params=_KEY),
        "commit",
    ),
    "sessions.list": row(
        protocol.parse_list,
        lambda c, p: c.services.api.sessions_list(p),
        Rule(_READERS, agent_param=True, confine=True),
        "sync",
    ),
    "sessions.get": row(
        protocol.parse_get,
        lambda c, p: c.services.api.sessions_get(p),
        Rule(_READERS, key_params=_KEY, id_params=_ID),
        "sync",
    ),
    "sessions.history": row(
        protocol.parse_history,
        lambda c, p: c.services.api.sessions_history(p, _caps(c)),
        Rule(_READERS, key_params=_KEY, id_params=_ID),
        "async",
    ),
    "sessions.context": row(
        protocol.parse_context,
        lambda c, p: c.services.compactor.rpc_context(p),
        Rule(_READERS, key_params=_KEY, id_params=_ID),
        "async",
    ),
    "sessions.archived": row(
        protocol.parse_archived,
        lambda c, p: c.services.api.sessions_archived(p, _caps(c)),
        Rule(_READERS, agent_param=True, key_params=_KEY, confine=True),
        "async",
    ),
    "memory.search": row(
        protocol.parse_search,
        lambda c, p: c.services.search.rpc(p),
        Rule(_READERS, agent_param=True, key_params=_KEY, id_params=_ID, confine=True),
        "async",
    ),
    "sessions.reset": row(
        protocol.parse_reset,
        lambda c, p: c.services.api.sessions_reset(p),
        ADMIN_ONLY,
        "async",
    ),
    "sessions.compact": row(
        protocol.parse_compact,
        lambda c, p: c.services.compactor.rpc_compact(p),
        ADMIN_ONLY,
        "async",
    ),
    "config.reload": row(
        protocol.parse_empty, lambda c, _: c.services.reloader.rpc(), ADMIN_ONLY, "async"
    ),
    "events.subscribe": row(_parse_subscribe, _subscribe, ADMIN_ONLY, "sync"),
}


def rule_of(method: str) -> Rule:
    """The method's role rule; ADMIN_ONLY for a name without a row (invariant 1)."""
    row = METHODS.get(method)
    return ADMIN_ONLY if row is None else row.rule

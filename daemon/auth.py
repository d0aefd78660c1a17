"""Tokens, listeners and the role check in front of every request (SPEC 3, roles).

`daemon.core.roles` decides (pure, one table); this module owns what that needs from the world:
token secrets read from the config, files and the environment (the sockets of `daemon.listeners`
and the principal their connections start with are daemon/listeners.py); the live store, to tell
which agent a session id belongs to; and the log lines (`request.forbidden`,
`request.unauthenticated`, `auth.hello`, `auth.failed`).

Authentication is per connection: `auth.hello {token}` once, then every request on that
connection runs with the token's role. A per-request token would have to travel (and be
stripped) on every line of a pipelined adapter, and each copy is one more place a secret can leak
into a log; one hello per connection keeps the secret in one request.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, Protocol

import structlog

from daemon.config import Config, TokenConfig
from daemon.core import protocol
from daemon.core.keys import Inbound, normalize_agent_id, resolve_route
from daemon.core.protocol import Request
from daemon.core.roles import (
    ADMIN,
    Denied,
    Lookups,
    Principal,
    ReadCaps,
    Rule,
    decide,
)
from daemon.errors import ConfigError, Forbidden, Unauthenticated
from daemon.store.store import Store

log = structlog.get_logger("daemon.auth")

MAX_TOKEN_BYTES = 4096


class Conn(Protocol):
    """What the check needs of a connection (daemon.server.Connection)."""

    number: int
    principal: Principal | None


# ---------------------------------------------------------------------------------------------
# Tokens


def token_digest(secret: str) -> bytes:
    """Tokens are kept and compared as sha256 digests: the table never holds the secrets, and a
    lookup's timing depends on the digest, which tells an attacker nothing about the secret."""
    return hashlib.sha256(secret.strip().encode()).digest()


def resolve_tokens(
    tokens: tuple[TokenConfig, ...], env: Mapping[str, str] | None = None
) -> dict[bytes, Principal]:
    """digest -> principal for every configured token. Raises ConfigError naming the token
    (`auth.tokens[2].tokenFile: ...`) when its secret cannot be read or is too short."""
    from daemon.config import MIN_TOKEN_CHARS

    env = os.environ if env is None else env
    out: dict[bytes, Principal] = {}
    for i, t in enumerate(tokens):
        where = f"auth.tokens[{i}]"
        if t.token is not None:
            secret = t.token
        elif t.tokenFile is not None:
            path = Path(t.tokenFile).expanduser()
            where += ".tokenFile"
            try:
                secret = path.read_text(encoding="utf-8")
                mode = path.stat().st_mode
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
                raise ConfigError(f"{where}: cannot read {path}: {reason}") from None
            if mode & stat.S_IROTH:
                log.warning("auth.token_file_readable", file=str(path), token=t.name or i)
        else:
            assert t.tokenEnv is not None
            where += ".tokenEnv"
            secret = env.get(t.tokenEnv, "")
            if not secret:
                raise ConfigError(f"{where}: the environment variable {t.tokenEnv} is not set")
        if len(secret.strip()) < MIN_TOKEN_CHARS:
            raise ConfigError(f"{where}: the token must be at least {MIN_TOKEN_CHARS} characters")
        digest = token_digest(secret)
        if digest in out:
            raise ConfigError(f"{where}: the same token as {out[digest].name}")
        agents = frozenset(normalize_agent_id(a) for a in t.agents) or None
        out[digest] = Principal(t.role, agents, t.name or f"token #{i}", digest)
    return out


# ---------------------------------------------------------------------------------------------
# The check


def parse_hello(params: dict[str, Any]) -> str:
    """auth.hello {token}: the token's secret."""
    p = protocol.Params(params)
    secret = p.text("token", required=True, max_len=MAX_TOKEN_BYTES)
    p.done()
    assert secret is not None
    return secret


class Auth:
    """The role check the server runs before dispatching each request (event loop only)."""

    def __init__(self, store: Store, config: Config | None = None) -> None:
        self.store = store
        self.config = config or Config()
        self.routing = self.config.routing()
        self.tokens: dict[bytes, Principal] = {}
        self.agent_caps = ReadCaps(262_144, 8192)
        self.lookups = Lookups(self._agent_of_session, self._routed_agent)
        if config is not None:
            self.set_config(config)

    def set_config(self, cfg: Config) -> None:
        """Take tokens and caps from `cfg`. Raises ConfigError (and changes nothing) when a
        token's secret cannot be read."""
        self.prepare(cfg)()

    def prepare(self, cfg: Config) -> Callable[[], None]:
        """Resolve `cfg`'s token secrets (files, environment) and return what swaps them in.
        Raises ConfigError naming the token when one cannot be read: the reload is then
        rejected as a whole (daemon/reload.py), so no half of a config ever applies. Runs in a
        worker thread; the returned function runs on the event loop."""
        tokens = resolve_tokens(cfg.auth.tokens)
        reads = cfg.auth.agentReads
        caps = ReadCaps(reads.maxBytes, reads.maxBlockChars)
        routing = cfg.routing()

        def apply() -> None:
            self.tokens = tokens
            self.agent_caps = caps
            self.config = cfg
            self.routing = routing

        return apply

    def hello(self, conn: Conn | None, secret: str) -> dict[str, Any]:
        """`auth.hello {token}`: from now on the connection has the token's role."""
        principal = self.tokens.get(token_digest(secret))
        number = conn.number if conn is not None else None
        if principal is None:
            log.warning("auth.failed", connection=number)
            raise Unauthenticated("invalid token")
        if conn is not None:
            conn.principal = principal
        log.info("auth.hello", connection=number, role=principal.role, token=principal.name)
        agents = None if principal.agents is None else sorted(principal.agents)
        return {"role": principal.role, "agents": agents, "name": principal.name}

    def principal_of(self, conn: Conn | None) -> Principal | None:
        """The connection's principal now: a token removed by a reload no longer counts."""
        if conn is None:
            return ADMIN
        p = conn.principal
        if p is not None and p.digest is not None:
            current = self.tokens.get(p.digest)
            if current is None:
                conn.principal = p = None
            elif current is not p:
                conn.principal = p = current  # the same token, its role or agents changed
        return p

    def admit(self, req: Request, conn: Conn | None, rule: Rule) -> Request:
        """The request to dispatch (params may be confined to the caller's agent), `rule` being
        its method's row in daemon/methods.py. Raises Unauthenticated (1001) or Forbidden
        (1002), after logging why."""
        p = self.principal_of(conn)
        if p is ADMIN:
            return req
        verdict = decide(p, req.method, rule, req.params, self.lookups)
        if isinstance(verdict, Denied):
            self._refused(req, conn, p, verdict)
        elif verdict is not req.params:
            return replace(req, params=verdict)
        return req

    def read_caps(self, conn: Conn | None) -> ReadCaps | None:
        """Caps on what a read may return: agents get `auth.agentReads`, others everything."""
        p = self.principal_of(conn)
        return self.agent_caps if p is not None and p.role == "agent" else None

    def _refused(self, req: Request, conn: Conn | None, p: Principal | None, d: Denied) -> NoReturn:
        number = conn.number if conn is not None else None
        if d.reason == "unauthenticated":
            log.info("request.unauthenticated", method=req.method, connection=number)
            raise Unauthenticated(d.message)
        assert p is not None
        log.warning(
            "request.forbidden",
            method=req.method,
            role=p.role,
            token=p.name,
            agentId=d.agent,
            reason=d.reason,
            connection=number,
        )
        raise Forbidden(d.message, data={"agentId": d.agent} if d.agent else None)

    def _agent_of_session(self, session_id: str) -> str | None:
        st = self.store.by_id.get(session_id)
        if st is not None:
            return st.agent_id
        a = self.store.archived_by_id.get(session_id)
        return None if a is None else a.agent_id

    def _routed_agent(self, params: dict[str, Any]) -> str | None:
        """The agent an inbound message would go to (raises InvalidParams like ingest would)."""
        ip = protocol.parse_ingest(params)
        inbound = Inbound(
            channel=ip.channel,
            chat_type=ip.chat_type,
            peer=ip.peer,
            account_id=ip.account_id,
            group_id=ip.group_id,
            thread_id=ip.thread_id,
            agent_id=ip.agent_id,
        )
        return resolve_route(inbound, self.routing).agent_id

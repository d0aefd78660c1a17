"""Stage 1 of SPEC 4: which agent and session key a message belongs to, whether its sender may
write at all, and whether this daemon's shard owns the agent. Pure functions of the message and
the config (daemon/core/keys.py, core/access.py), memoised because an adapter sends the same
conversation's coordinates again and again. A reloaded config gets a new Router.
"""

from __future__ import annotations

import structlog

from daemon.config import Config
from daemon.core.access import check_access
from daemon.core.keys import Inbound, Route, resolve_route
from daemon.core.protocol import IngestParams
from daemon.errors import WrongShard

log = structlog.get_logger("daemon.pipeline")

# Conversations whose routes are kept (cleared all at once when full). It covers the 100,000
# sessions a daemon is sized for: at 65,536, messages spread over 100,000 conversations never
# found their route (the memo was cleared before any conversation came round again), and each
# was resolved anew, 10-20 us of the event loop's time per message. About 420 bytes a route.
ROUTE_CACHE_SIZE = 131_072


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.routing = config.routing()
        self.access = config.access.rules()
        self.shards = config.shard_map()
        self._routes: dict[tuple[str | None, ...], tuple[Route, str | None]] = {}

    def route(self, p: IngestParams) -> tuple[Route, str | None]:
        """The message's route, and why its sender is refused (None: allowed)."""
        ck = (p.channel, p.chat_type, p.peer, p.account_id, p.group_id, p.thread_id, p.agent_id)
        hit = self._routes.get(ck)
        if hit is None:
            inbound = Inbound(
                channel=p.channel,
                chat_type=p.chat_type,
                peer=p.peer,
                account_id=p.account_id,
                group_id=p.group_id,
                thread_id=p.thread_id,
                agent_id=p.agent_id,
            )
            route = resolve_route(inbound, self.routing)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            hit = self._routes[ck] = (route, check_access(inbound, self.access))
        return hit

    def check_shard(self, agent_id: str) -> None:
        """Refuse work for an agent another daemon owns (`shards`): stored here, its history
        would be split between two state folders."""
        shards = self.shards
        if shards is None or shards.owns(agent_id):
            return
        owner = shards.owner(agent_id)
        log.warning("request.wrong_shard", agentId=agent_id, owner=owner, shard=shards.index)
        raise WrongShard(
            f"agent {agent_id!r} belongs to shard {owner} of {shards.count}; this daemon is "
            f"shard {shards.index}: send it to shard {owner}'s socket or stream",
            data={"agentId": agent_id, "shard": owner, "thisShard": shards.index},
        )

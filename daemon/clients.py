"""What clients hold of the daemon: the open connections and what was closed or refused.

Owned by the read API (`status` reports it, /metrics counts it) and filled in by the server,
which gets it from the API it is built with: neither assigns anything to the other.
"""

from __future__ import annotations

from typing import Protocol


class Client(Protocol):
    """What `status` reads of one connection (daemon/server.py `Connection`)."""

    @property
    def paused(self) -> bool: ...
    @property
    def unsent(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def principal(self) -> object | None: ...


class Clients:
    def __init__(self) -> None:
        self.open: set[Client] = set()
        self.closed_stalled = 0  # connections closed for not reading their answers
        self.closed_hello = 0  # connections closed for sending no auth.hello in time
        self.refused = 0  # connections refused for a full listener

    def closed_for_hello(self, conn: Client) -> None:
        """`conn` is being closed for sending no auth.hello in time. It leaves the open set now,
        not when its answer is flushed and its task ends, so that `status` never counts one
        connection as both closed and open (unauthenticated)."""
        self.open.discard(conn)
        self.closed_hello += 1

    def closed_for_stalling(self, conn: Client) -> None:
        """`conn` is being closed for not reading its answers; as `closed_for_hello`."""
        self.open.discard(conn)
        self.closed_stalled += 1

    def stats(self) -> dict[str, int]:
        """For `status`: what clients hold of the daemon now, and what was closed or refused."""
        conns = self.open
        return {
            "paused": sum(1 for c in conns if c.paused),
            "unsentBytes": sum(c.unsent for c in conns),
            "inFlight": sum(c.pending for c in conns),
            "unauthenticated": sum(1 for c in conns if c.principal is None),
            "closedStalled": self.closed_stalled,
            "closedHello": self.closed_hello,
            "refused": self.refused,
        }

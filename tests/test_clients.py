"""What `status` says of clients: a connection counted as closed is no longer counted as open.

Found by CI under load: 1,024 idle TCP connections were all counted refused or closed for
sending no auth.hello, while `status` still named 3 of them unauthenticated, because a closed
connection stayed in the open set until its answer was flushed and its task ended.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import anyio

from daemon.clients import Clients
from daemon.config import LimitsConfig
from daemon.connection import Connection


def test_a_connection_closed_for_sending_no_hello_is_counted_closed_and_not_unauthenticated() -> (
    None
):
    async def main() -> dict[str, int]:
        clients = Clients()
        host = SimpleNamespace(clients=clients, limits=LimitsConfig())
        conn = Connection(cast(Any, host), cast(Any, object()), 1)
        conn.principal = None
        conn.hello_deadline = anyio.current_time() - 1
        clients.open.add(conn)
        assert clients.stats()["unauthenticated"] == 1
        assert conn._hello_overdue()
        return clients.stats()

    stats = anyio.run(main)
    assert stats["closedHello"] == 1
    assert stats["unauthenticated"] == 0

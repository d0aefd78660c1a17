"""Service lifetimes nested in the order they start, so the shutdown order is the structure.

Each service runs in its own task group, opened inside the one of the service started before
it. `Nest.stop` tells every service to stop at once, the last started first (inside out), and
leaving the nest then waits for their task groups in the same order: a service is only ever
waited for while everything it relies on (started before it, outside it) still runs. A service
that fails cancels everything nested inside it, and the error leaves the nest.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

import anyio

# A service's lifetime: calls `task_status.started()` once it serves, returns once stopped.
Starter = Callable[..., Coroutine[Any, Any, Any]]


class Nest:
    """Services started one inside the other (see the module docstring); owned by `stack`."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack
        self._stops: list[Callable[[], None]] = []

    async def start(self, run: Starter, stop: Callable[[], None]) -> None:
        """Start `run` inside everything started before it; `stop` makes it return."""
        tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stops.append(stop)
        await tg.start(run)

    def stop(self) -> None:
        """Tell every service to stop, the last started first (it does not wait)."""
        while self._stops:
            self._stops.pop()()

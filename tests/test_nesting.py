"""Service lifetimes nested in start order: a stop reaches the innermost first, and each service
is waited for while everything started before it still runs."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus

from daemon.nesting import Nest

pytestmark = pytest.mark.anyio


class Service:
    def __init__(self, name: str, log: list[str], running: dict[str, bool]) -> None:
        self.name = name
        self.log = log
        self.running = running
        self._stop = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.running[self.name] = True
        self.log.append(f"start {self.name}")
        task_status.started()
        await self._stop.wait()
        # Finishing its work needs everything it was started inside of.
        await anyio.lowlevel.checkpoint()
        self.log.append(f"done {self.name} (outer running: {self.outer_running()})")
        self.running[self.name] = False

    def outer_running(self) -> bool:
        names = list(self.running)
        return all(self.running[n] for n in names[: names.index(self.name)])

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        self._stop.set()


async def test_stop_goes_inside_out_and_each_finishes_while_its_outer_services_run() -> None:
    log: list[str] = []
    running: dict[str, bool] = {}
    services = [Service(n, log, running) for n in ("store", "committer", "server")]
    async with AsyncExitStack() as stack:
        stack.callback(log.append, "closed")
        nest = Nest(stack)
        for s in services:
            await nest.start(s.run, s.stop)
        nest.stop()
    assert log == [
        "start store",
        "start committer",
        "start server",
        "stop server",
        "stop committer",
        "stop store",
        "done server (outer running: True)",
        "done committer (outer running: True)",
        "done store (outer running: True)",
        "closed",
    ]


async def test_a_failing_service_cancels_what_is_nested_inside_it() -> None:
    log: list[str] = []
    running: dict[str, bool] = {}
    inner = Service("inner", log, running)

    async def failing(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.lowlevel.checkpoint()
        raise OSError("disk gone")

    with pytest.raises(ExceptionGroup) as caught:
        async with AsyncExitStack() as stack:
            nest = Nest(stack)
            await nest.start(failing, lambda: None)
            await nest.start(inner.run, inner.stop)
            await anyio.sleep_forever()
    assert caught.group_contains(OSError)
    assert log == ["start inner"]  # cancelled, never finished nor asked to stop

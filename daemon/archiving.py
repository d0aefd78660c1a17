"""Closed sessions move into archive/ after the batch that closed them is durable (SPEC 4.5):
the pipeline's writer hands them here, and the moves run in its task group. Readers find a
session where it is until its move is done; `settled` waits for the moves in flight.
"""

from __future__ import annotations

import anyio
import structlog
from anyio.abc import TaskGroup

from daemon.errors import os_reason
from daemon.store.store import Archived, Closing, Store

log = structlog.get_logger("daemon.pipeline")

ARCHIVE_WAIT_SECONDS = 10.0


class Archiver:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._archiving = 0
        self._moving: dict[str, anyio.Event] = {}  # session id -> set once its archiving ended
        self._archived = anyio.Event()
        self._archived.set()

    def archive(self, tg: TaskGroup, closing: list[Closing], now: int) -> None:
        """Start moving the sessions a durable batch closed."""
        for c in closing:
            self.store.release_fd(c.state)
            self._moving[c.state.session_id] = anyio.Event()
        self._begin()
        tg.start_soon(self._archive, closing, now)

    def link(self, tg: TaskGroup, linked: list[tuple[Archived, str]]) -> None:
        """Start naming the successors of sessions that ended without one."""
        for a, successor in linked:
            a.successor = successor
        self._begin()
        tg.start_soon(self._link, linked)

    def _begin(self) -> None:
        if self._archiving == 0:
            self._archived = anyio.Event()
        self._archiving += 1

    async def settled(self) -> None:
        """Wait (a bounded while) until closed sessions are in archive/ with their index lines."""
        with anyio.move_on_after(ARCHIVE_WAIT_SECONDS):
            await self._archived.wait()

    async def _archive(self, closing: list[Closing], now: int) -> None:
        """Move closed sessions into archive/ (after their batch is durable; readers find them
        where they are until the move is done)."""
        try:
            await self._archive_all(closing, now)
        finally:
            self._archiving -= 1
            if self._archiving == 0:
                self._archived.set()

    async def _link(self, linked: list[tuple[Archived, str]]) -> None:
        """Name the successor in the index of sessions that ended without one, after their own
        archiving (an index line is appended; the later line for a session wins)."""
        try:
            for a, successor in linked:
                moving = self._moving.get(a.session_id)
                if moving is not None:
                    await moving.wait()
                try:
                    rec = await anyio.to_thread.run_sync(self.store.record_successor, a, successor)
                except OSError as e:
                    log.error(
                        "archive.successor_failed",
                        sessionId=a.session_id,
                        successor=successor,
                        error=os_reason(e),
                    )
                    continue
                if rec is None:
                    log.warning(
                        "archive.successor_not_indexed", sessionId=a.session_id, successor=successor
                    )
                    continue
                self.store.archived_done(rec)
        finally:
            self._archiving -= 1
            if self._archiving == 0:
                self._archived.set()

    async def _archive_all(self, closing: list[Closing], now: int) -> None:
        for c in closing:
            try:
                rec = await anyio.to_thread.run_sync(self.store.archive_closed, c, now)
            except OSError as e:
                # The transcript stays where it is with its closing entry: start-up finishes it.
                log.error(
                    "archive.failed",
                    sessionId=c.state.session_id,
                    error=os_reason(e),
                )
                continue
            finally:
                moved = self._moving.pop(c.state.session_id, None)
                if moved is not None:
                    moved.set()
            self.store.archived_done(rec)
            log.info(
                "session.archived",
                agentId=rec.agentId,
                sessionKey=rec.sessionKey,
                sessionId=rec.sessionId,
                reason=rec.reason,
                messages=rec.messages,
                bytes=rec.bytes,
            )

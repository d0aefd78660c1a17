"""The spool folder: message.ingest for adapters that can only write files.

Maildir layout under `daemon.spool.dir` (default `<stateDir>/spool`):

    tmp/       adapters write a `message.ingest` params object here ...
    new/       ... and rename it here when it is complete (a rename is atomic: no half files)
    cur/       claimed by the daemon (renamed from new/), being ingested
    done/      stored: the file, and `<name>.result.json` beside it (the ingest answer)
    rejected/  refused: the file, and `<name>.error.json` beside it ({code, message, field?})

Invariants:
- A file is only ever renamed, never rewritten or removed: what an adapter wrote is kept.
- A file leaves cur/ only after its message is durably stored (done/) or refused for good
  (rejected/). Storage errors (1004) leave it in cur/, retried with a back-off.
- Whatever is in cur/ at start-up was claimed before a crash and is ingested again. That never
  stores a message twice: the messageId makes the second ingest a duplicate, and a file without
  one gets an id derived from its name and content.
- Messages go through `Pipeline.ingest`, the same entrance as the socket, in the order the files
  were written (modification time, then name).

Watch events are hints: every batch of them, and a periodic timeout, leads to a scan of new/.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from anyio.abc import TaskStatus
from watchfiles import awatch

from daemon.core.protocol import MAX_ID_LEN, parse_ingest
from daemon.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    STORAGE_UNAVAILABLE,
    TOO_LARGE,
    InvalidParams,
    RequestError,
    os_reason,
)
from daemon.failpoints import failpoint
from daemon.pipeline import Pipeline
from daemon.store.fsutil import (
    atomic_write,
    ensure_dir,
    fsync_dir,
    write_new_file,
)

log = structlog.get_logger("daemon.spool")

SUBDIRS = ("tmp", "new", "cur", "done", "rejected")
CHUNK = 256  # files claimed and ingested together: they share the committer's syncs
POLL_SECONDS = 1.0  # a scan of new/ (and of cur/ when a retry is due) even without events
RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # back-off for files left in cur/ by storage errors
# Errors that say nothing about the file itself: it stays in cur/ and is tried again.
RETRY_CODES = frozenset({STORAGE_UNAVAILABLE, INTERNAL_ERROR})


@dataclass(slots=True)
class Item:
    """One claimed file on its way from cur/ to done/ or rejected/."""

    name: str
    params: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    retry: str | None = None  # why it stays in cur/
    final: str | None = None  # its name in done/ or rejected/


def spool_dir(configured: str | None, state_dir: Path) -> Path:
    """`daemon.spool.dir` (relative to the state folder), else `<stateDir>/spool`."""
    if not configured:
        return state_dir / "spool"
    path = Path(configured).expanduser()
    return path if path.is_absolute() else state_dir / path


def derived_message_id(name: str, data: bytes) -> str:
    """An id for a file that brings none, so that ingesting it twice is recognised.

    The content hash keeps two different files that happen to reuse a name apart.
    """
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"spool:{name[: MAX_ID_LEN - 30]}:{digest}"


def error_object(code: int, message: str, field_name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"code": code, "message": message}
    if field_name is not None:
        out["field"] = field_name
    return out


def error_of(e: RequestError) -> dict[str, Any]:
    return error_object(e.code, e.message, e.field if isinstance(e, InvalidParams) else None)


# ---------------------------------------------------------------------------------------------
# File work (worker threads)


def make_dirs(root: Path) -> None:
    """Create the spool folders (0700) that are missing; existing ones keep their modes, so an
    operator can open tmp/ and new/ to an adapters' group."""
    for sub in SUBDIRS:
        ensure_dir(root / sub)


def list_names(folder: Path) -> list[str]:
    """Regular-looking entries of a folder, oldest first (then by name); dot files are skipped
    as half-written by convention."""
    found: list[tuple[int, str]] = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            except FileNotFoundError:
                continue
            found.append((mtime, entry.name))
    found.sort()
    return [name for _, name in found]


def free_name(folder: Path, name: str, suffix: str) -> str:
    """`name`, or `name.1`, `name.2`, ... so that neither it nor its companion file exists:
    a rename must never replace a file that is already there."""
    candidate, n = name, 0
    while (folder / candidate).exists() or (folder / f"{candidate}{suffix}").exists():
        n += 1
        candidate = f"{name}.{n}"
    return candidate


def claim(root: Path, names: Iterable[str]) -> list[str]:
    """Rename files from new/ into cur/; returns their names in cur/ (a file another process
    took meanwhile is skipped). The rename needs no sync: if a crash undoes it, the file is
    back in new/ and is claimed again."""
    new, cur = root / "new", root / "cur"
    claimed = []
    for name in names:
        target = free_name(cur, name, "")
        try:
            os.rename(new / name, cur / target)
        except FileNotFoundError:
            continue
        claimed.append(target)
        failpoint("spool.after_claim")
    return claimed


def read_item(cur: Path, name: str, max_bytes: int) -> Item:
    """Read and parse a claimed file. Problems with the file itself become `item.error`;
    an OSError that may pass (EMFILE, EIO) becomes `item.retry`."""
    item = Item(name)
    try:
        fd = os.open(cur / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink: following it could read any file we can read
            item.error = error_object(INVALID_REQUEST, "a symbolic link, not a regular file")
        else:
            item.retry = f"cannot open: {e.strerror}"
        return item
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            item.error = error_object(INVALID_REQUEST, "not a regular file")
            return item
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        item.retry = f"cannot read: {e.strerror}"
        return item
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        item.error = error_object(TOO_LARGE, f"the file exceeds the limit of {max_bytes} bytes")
        return item
    try:
        params = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        item.error = error_object(PARSE_ERROR, f"not valid JSON: {e}")
        return item
    if not isinstance(params, dict):
        item.error = error_object(
            INVALID_PARAMS, "the file must hold one JSON object: the params of message.ingest"
        )
        return item
    if params.get("messageId") is None:
        params["messageId"] = derived_message_id(name, data)
    item.params = params
    return item


def claim_and_read(root: Path, names: list[str], max_bytes: int, from_new: bool) -> list[Item]:
    claimed = claim(root, names) if from_new else names
    cur = root / "cur"
    return [read_item(cur, name, max_bytes) for name in claimed]


def settle(root: Path, items: list[Item]) -> None:
    """Move finished files out of cur/, each with its companion file written first.

    The companion is synced before the move, so a file in done/ or rejected/ always has one; a
    crash before the move leaves the file in cur/, to be ingested again (as a duplicate). The
    companions of a chunk are written (and their folder synced) before its files move, so a
    crash between the two leaves companions without their file: when that file is settled again
    it takes the name its companion holds (`settle_name`), so no `name.1` is made and the
    companion keeps the first answer.
    """
    cur = root / "cur"
    moves: list[tuple[Item, Path]] = []
    taken: set[str] = set()
    for item in items:
        if item.result is not None:
            folder, suffix, payload = root / "done", ".result.json", item.result
        elif item.error is not None:
            folder, suffix, payload = root / "rejected", ".error.json", item.error
        else:
            continue
        final, companion = settle_name(folder, item.name, suffix, taken)
        data = orjson.dumps(payload) + b"\n"
        if companion == "missing":
            write_new_file(folder / f"{final}{suffix}", data)
        elif companion == "torn":
            atomic_write(folder / f"{final}{suffix}", data)
        item.final = final
        taken.add(str(folder / final))
        moves.append((item, folder))
    if not moves:
        return
    folders = {folder for _, folder in moves}
    for folder in folders:
        fsync_dir(folder)
    failpoint("spool.after_results")
    for item, folder in moves:
        assert item.final is not None
        os.rename(cur / item.name, folder / item.final)
        failpoint("spool.after_move")
    for folder in folders:
        fsync_dir(folder)
    fsync_dir(cur)


def settle_name(folder: Path, name: str, suffix: str, taken: set[str]) -> tuple[str, str]:
    """The name a settled file takes in `folder` (`name`, else `name.1`, `name.2`, ...), and
    its companion's state there: "missing", "complete" (kept: it holds the first answer) or
    "torn" (to be replaced).

    A companion without its file is the trace of a settle that a crash interrupted between
    writing companions and moving files: the same file, claimed again, takes that name. A torn
    one (a power cut before it was synced) is our own file describing a file never moved.
    `taken` holds the names this settle already gave, whose companions are new."""
    candidate, n = name, 0
    while True:
        path = folder / candidate
        if str(path) not in taken and not path.exists():
            companion = folder / f"{candidate}{suffix}"
            try:
                data = companion.read_bytes()
            except FileNotFoundError:
                return candidate, "missing"
            except OSError:
                data = None  # unreadable (not a file?): leave it, take another name
            if data is not None:
                try:
                    orjson.loads(data)
                except orjson.JSONDecodeError:
                    return candidate, "torn"
                return candidate, "complete"
        n += 1
        candidate = f"{name}.{n}"


# ---------------------------------------------------------------------------------------------
# The spool task (event loop)


class Spool:
    """Claims files from new/ and feeds them to the pipeline; owned by the daemon's task group."""

    def __init__(self, root: Path, pipeline: Pipeline, *, max_bytes: int) -> None:
        self.root = root
        self.pipeline = pipeline
        self.max_bytes = max_bytes
        self._stop = anyio.Event()
        self._retry_delay = 0.0
        self._retry_at: float | None = None
        self.ingested = 0
        self.rejected = 0

    def stop(self) -> None:
        """Claim nothing more; what is being ingested is still answered and moved, then `run`
        returns. Call it before closing the pipeline."""
        self._stop.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Create the folders, take over what a crash left in cur/, then follow new/."""
        try:
            await anyio.to_thread.run_sync(make_dirs, self.root)
        except OSError as e:
            log.error("spool.unavailable", dir=str(self.root), error=os_reason(e))
            task_status.started()
            return
        task_status.started()
        log.info("spool.started", dir=str(self.root))
        self._retry_at = anyio.current_time()  # whatever is in cur/ now is taken first
        await self._drain()
        while not self._stop.is_set():
            try:
                async for _ in awatch(
                    self.root / "new",
                    watch_filter=None,
                    stop_event=self._stop,
                    recursive=False,
                    rust_timeout=int(POLL_SECONDS * 1000),
                    yield_on_timeout=True,
                    debounce=200,
                    step=20,
                ):
                    await self._drain()
            except OSError as e:
                log.warning("spool.watch_failed", dir=str(self.root), error=str(e))
                with anyio.move_on_after(POLL_SECONDS):
                    await self._stop.wait()
                await self._drain()
        log.info("spool.stopped", ingested=self.ingested, rejected=self.rejected)

    async def _drain(self) -> None:
        """Ingest everything waiting: due retries in cur/ first, then new/ until it is empty."""
        try:
            if self._retry_at is not None and anyio.current_time() >= self._retry_at:
                self._retry_at = None
                names = await anyio.to_thread.run_sync(list_names, self.root / "cur")
                await self._chunks(names, from_new=False)
            while not self._stop.is_set():
                names = await anyio.to_thread.run_sync(list_names, self.root / "new")
                if not names:
                    return
                await self._chunks(names, from_new=True)
        except OSError as e:
            # The disk said no (ENOSPC, EIO, EMFILE): files stay where they are; try again later.
            log.error("spool.failed", dir=str(self.root), error=os_reason(e))
            self._schedule_retry()
            with anyio.move_on_after(self._retry_delay):
                await self._stop.wait()

    async def _chunks(self, names: list[str], *, from_new: bool) -> None:
        for i in range(0, len(names), CHUNK):
            if self._stop.is_set():
                return
            items = await anyio.to_thread.run_sync(
                claim_and_read, self.root, names[i : i + CHUNK], self.max_bytes, from_new
            )
            await self._ingest(items)
            await anyio.to_thread.run_sync(settle, self.root, items)
            self._report(items)

    async def _ingest(self, items: list[Item]) -> None:
        """Hand every readable item to the pipeline, then wait for all their answers."""
        # Starts at one for this loop itself: an answer given at once (a duplicate) must not
        # look like the last one while later items are still being handed over.
        pending = 1
        all_answered = anyio.Event()

        def settled() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                all_answered.set()

        def answer(item: Item) -> Callable[[dict[str, Any] | RequestError], None]:
            def reply(outcome: dict[str, Any] | RequestError) -> None:
                self._outcome(item, outcome)
                settled()

            return reply

        for item in items:
            if item.params is None:
                continue
            try:
                params = parse_ingest(item.params)
            except RequestError as e:
                self._outcome(item, e)
                continue
            pending += 1
            try:
                waiter = self.pipeline.ingest(params, answer(item))
                if waiter is not None:
                    await waiter  # the committer's queue is full: the spool waits its turn
            except RequestError as e:
                # Refused at once, or while waiting for room: no answer will come.
                self._outcome(item, e)
                settled()
        settled()
        await all_answered.wait()

    def _outcome(self, item: Item, outcome: dict[str, Any] | RequestError) -> None:
        if isinstance(outcome, dict):
            item.result = outcome
        elif outcome.code in RETRY_CODES:
            item.retry = outcome.message
        else:
            item.error = error_of(outcome)

    def _report(self, items: list[Item]) -> None:
        retry = 0
        for item in items:
            if item.result is not None:
                self.ingested += 1
                log.info(
                    "spool.ingested",
                    file=item.final,
                    sessionKey=item.result.get("sessionKey"),
                    entryId=item.result.get("entryId"),
                    duplicate=bool(item.result.get("duplicate")),
                )
            elif item.error is not None:
                self.rejected += 1
                log.warning(
                    "spool.rejected",
                    file=item.final,
                    code=item.error["code"],
                    reason=item.error["message"],
                    field=item.error.get("field"),
                )
            else:
                retry += 1
                log.warning("spool.deferred", file=item.name, reason=item.retry)
        if retry:
            self._schedule_retry()
        elif items:
            self._retry_delay = 0.0

    def _schedule_retry(self) -> None:
        self._retry_delay = min(RETRY_MAX, max(RETRY_FIRST, self._retry_delay * 2))
        self._retry_at = anyio.current_time() + self._retry_delay

"""Live config reload: SIGHUP, `config.reload`, and changes to the config file.

A reload re-reads and validates the whole file, then resolves what the file only points to
(token files, environment variables). A reload is all or nothing: an invalid file, or one whose
token cannot be read, changes nothing: the reason (naming the key) is logged as `config.rejected`,
the answer says `reloaded: false` with that reason, and the running config stays. A valid one
is swapped in at once, in one step on the event loop, so a message is routed either wholly by the
old config or wholly by the new one; connections and acknowledgements in flight are not touched.

Some keys cannot change under a running daemon (the state folder, the socket and listeners, what
the store was opened with). Those keep their running values, and `config.restart_required` names
them until a restart picks them up.

`plan_reload` is the pure part (configs in, plan out); `Reloader` owns the file watch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import BaseModel
from watchfiles import awatch

from daemon import openclaw_config
from daemon.config import Config
from daemon.config_load import load_config
from daemon.errors import ConfigError
from daemon.systemd import Notifier

log = structlog.get_logger("daemon.reload")

# Keys read once at start-up. `listeners` is listed under both spellings so that it is covered
# whichever way the listeners section lands in the config models; an absent key never differs.
RESTART_REQUIRED: tuple[str, ...] = (
    "daemon.stateDir",
    "daemon.socket",
    "daemon.socketMode",
    "daemon.listeners",
    "daemon.metrics",
    "listeners",
    "daemon.spool",
    "daemon.checkpointIntervalMs",
    "daemon.dedupWindowHours",
    "daemon.dedupMaxPerAgent",
    "daemon.timezone",
    "sessions.backup",  # the mirror's folder, sync mode and exclusions (daemon/backup.py)
)

# How often the file is looked at when no event arrives: events are hints, and a config file
# reached through a symlink (or on a file system without inotify) changes without any.
POLL_SECONDS = 2.0
# An editor that rewrites a file in place truncates it first: wait until the file has stopped
# changing before reading it, rather than log a rejection of the empty file in between.
SETTLE_SECONDS = 0.1
SETTLE_ROUNDS = 20

MISSING: Any = object()  # a key path that is not (yet) in the config models


def get_path(model: BaseModel, path: str) -> Any:
    """The value at a dotted key path, or MISSING when a part of it is not a config key."""
    node: Any = model
    for part in path.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            return MISSING
        node = getattr(node, part)
    return node


def with_path(model: BaseModel, path: str, value: Any) -> Any:
    """A copy of `model` with the value at `path` replaced (every key of the path must exist)."""
    head, _, rest = path.partition(".")
    if not rest:
        return model.model_copy(update={head: value})
    return model.model_copy(update={head: with_path(getattr(model, head), rest, value)})


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a valid new config does to the running one."""

    config: Config  # to swap in: the new config, restart-only keys kept at their running values
    changed: tuple[str, ...]  # top-level sections that now differ from the running config
    restart_required: tuple[str, ...]  # keys whose new value waits for a restart


def plan_reload(running: Config, new: Config, overrides: Iterable[str] = ()) -> ReloadPlan:
    """Compare a newly loaded config with the running one.

    `overrides` are keys the command line set (`--socket`, `--log-level`, ...): the command line
    wins over the file, so they keep their running values and are never reported.
    """
    pinned = set(overrides)
    restart = [
        key
        for key in RESTART_REQUIRED
        if key not in pinned and get_path(new, key) != get_path(running, key)
    ]
    effective = new
    for key in (*RESTART_REQUIRED, *sorted(pinned)):
        old = get_path(running, key)
        if old is not MISSING and get_path(effective, key) is not MISSING:
            effective = with_path(effective, key, old)
    changed = tuple(
        name for name in Config.model_fields if getattr(effective, name) != getattr(running, name)
    )
    return ReloadPlan(effective, changed, tuple(restart))


@dataclass(frozen=True, slots=True)
class ReloadResult:
    reloaded: bool
    error: str | None = None
    changed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reloaded": self.reloaded,
            "changed": list(self.changed),
            "restartRequired": list(self.restart_required),
        }
        if self.error is not None:
            out["error"] = self.error
        return out


Signature = tuple[int, int, int, int] | None


def file_signature(path: Path) -> Signature:
    """What tells us a file changed without reading it; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


Subscriber = Callable[[Config], None]
# Resolves a new config's outside references in a worker thread (raising ConfigError to reject
# the reload); returns the function that applies the result on the event loop.
Preparer = Callable[[Config], Callable[[], None]]


class Reloader:
    """Owns the running config and the watch on its file.

    Components that keep config-derived state register with `subscribe`; each is called on the
    event loop with the new config, all of them one after the other without an await between,
    so nobody sees a half-applied config. Reloads run one at a time.
    """

    def __init__(
        self,
        path: Path | None,
        config: Config,
        *,
        overrides: Iterable[str] = (),
        notifier: Notifier | None = None,
    ) -> None:
        self.path = path.absolute() if path is not None else None
        self.config = config
        self.overrides = frozenset(overrides)
        self.notifier = notifier if notifier is not None else Notifier(None, None)
        self.subscribers: list[Subscriber] = []
        self.preparers: list[Preparer] = []
        self._lock = anyio.Lock()
        self._stop = anyio.Event()
        # The file as it was when the running config was read from it.
        self._seen = self._signature()

    def _signature(self) -> tuple[Signature, ...] | None:
        """The config file's signature, and that of the openclaw.json it names (`openclaw`):
        a change to either is a change to the config."""
        if self.path is None:
            return None
        named = self.config.openclaw
        if named is None:
            return (file_signature(self.path),)
        other = self.path.parent / Path(named).expanduser()
        return (file_signature(self.path), file_signature(other))

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)

    def prepare(self, fn: Preparer) -> None:
        """Register a component whose config points outside the file (token files, environment
        variables): it is resolved before anything applies, and its failure rejects the reload."""
        self.preparers.append(fn)

    async def reload(self, trigger: str) -> ReloadResult:
        """Re-read and validate the file and swap the result in; never raises for a bad file.

        systemd hears RELOADING=1 before and READY=1 after, whatever the outcome.
        """
        async with self._lock:
            self.notifier.reloading(f"reloading config ({trigger})")
            try:
                return await self._reload(trigger)
            finally:
                self.notifier.ready()

    async def _reload(self, trigger: str) -> ReloadResult:
        path = self.path
        where = str(path) if path is not None else "built-in defaults"
        if path is not None:
            self._seen = await anyio.to_thread.run_sync(self._signature)
        try:
            new = await anyio.to_thread.run_sync(load_config, path)
        except ConfigError as e:
            log.warning("config.rejected", config=where, trigger=trigger, reason=str(e))
            return ReloadResult(reloaded=False, error=str(e))
        plan = plan_reload(self.config, new, self.overrides)
        try:
            appliers = await anyio.to_thread.run_sync(self._resolve, plan.config)
        except ConfigError as e:
            reason = f"{where}: {e}"
            log.warning("config.rejected", config=where, trigger=trigger, reason=reason)
            return ReloadResult(reloaded=False, error=reason)
        if plan.restart_required:
            log.warning(
                "config.restart_required",
                config=where,
                keys=list(plan.restart_required),
                detail="these keys keep their running values until sessiond restarts",
            )
        # What preparers read from outside the file (token files, certificates) may have
        # changed without the file: theirs is applied on every reload.
        self._apply(plan.config, appliers, subscribers=bool(plan.changed))
        await anyio.to_thread.run_sync(openclaw_config.log_source, path, new)
        log.info("config.reloaded", config=where, trigger=trigger, changed=list(plan.changed))
        return ReloadResult(True, None, plan.changed, plan.restart_required)

    def _resolve(self, config: Config) -> list[Callable[[], None]]:
        return [prepare(config) for prepare in self.preparers]

    def _apply(
        self, config: Config, appliers: list[Callable[[], None]], *, subscribers: bool = True
    ) -> None:
        self.config = config
        subscribed: list[Callable[[], None]] = (
            [partial(sub, config) for sub in self.subscribers] if subscribers else []
        )
        for fn in [*appliers, *subscribed]:
            try:
                fn()
            except Exception as e:
                # One component failing to take the new config must not stop the others.
                log.error("config.apply_failed", component=_name(fn), error=f"{e}", exc_info=e)

    async def rpc(self) -> dict[str, Any]:
        """The `config.reload` method: {reloaded, changed, restartRequired, error?}."""
        return (await self.reload("rpc")).to_json()

    def stop(self) -> None:
        """End `watch` (it returns within a fraction of a second)."""
        self._stop.set()

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reload when the config file changes, until `stop`.

        Watches the file's folder, since editors and config managers replace the file rather
        than write into it. Events are hints: each wake-up (an event or the poll timeout)
        compares the file's signature with the one last read, so nothing is missed and a
        touched-but-equal file is read at most once.
        """
        task_status.started()
        path = self.path
        if path is None:
            return
        name = path.name
        warned = False
        while not self._stop.is_set():
            try:
                async for _ in awatch(
                    path.parent,
                    watch_filter=lambda _change, changed: os.path.basename(changed) == name,
                    stop_event=self._stop,
                    recursive=False,
                    rust_timeout=int(POLL_SECONDS * 1000),
                    yield_on_timeout=True,
                    debounce=400,
                    step=50,
                ):
                    await self._check(path)
            except OSError as e:
                # The folder is missing or unreadable: keep polling the file until it is back.
                if not warned:
                    warned = True
                    log.warning("config.watch_failed", folder=str(path.parent), error=str(e))
                with anyio.move_on_after(POLL_SECONDS):
                    await self._stop.wait()
                await self._check(path)

    async def _check(self, path: Path) -> None:
        sig = await anyio.to_thread.run_sync(self._signature)
        if sig == self._seen or self._stop.is_set():
            return
        for _ in range(SETTLE_ROUNDS):
            await anyio.sleep(SETTLE_SECONDS)
            now = await anyio.to_thread.run_sync(self._signature)
            if now == sig:
                break
            sig = now
        if sig != self._seen:
            await self.reload("file")


def _name(fn: Callable[..., Any]) -> str:
    fn = fn.func if isinstance(fn, partial) else fn
    return getattr(fn, "__qualname__", None) or repr(fn)

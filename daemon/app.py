"""`sessiond run`: wires config, lock, store, pipeline and server into one task group.

Start-up order: config -> logs -> state-folder lock -> store recovery (journal replay, torn tails)
-> committer -> socket -> scheduler, spool -> READY=1 to systemd. Shutdown on SIGTERM/SIGINT:
STOPPING=1, stop accepting and reading, let the committer finish what is queued and checkpoint,
answer everything in flight, exit 0. SIGHUP reloads the config (daemon/reload.py).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon import __version__, logs, openclaw_config
from daemon.api import Api
from daemon.archiving import Archiver
from daemon.auth import Auth
from daemon.backup import Mirror
from daemon.compaction import Compactor
from daemon.config import Config
from daemon.config_load import agent_ids, resolve_socket_path, workspace_of
from daemon.events import EventBus
from daemon.keymigrate import rename_case_folded_keys, save_dirty
from daemon.listeners import listeners_of, tls_reloader
from daemon.lock import StateLock
from daemon.methods import Services
from daemon.metrics import open_metrics
from daemon.nesting import Nest
from daemon.pipeline import Pipeline
from daemon.reload import Reloader
from daemon.retention import Retention
from daemon.scheduler import Scheduler
from daemon.search import SearchService
from daemon.server import Server, bind_sockets
from daemon.session_events import SessionEvents
from daemon.spool import Spool, spool_dir
from daemon.storage import StorageWatch
from daemon.store.store import Store
from daemon.systemd import Notifier
from daemon.work import Entrance

log = structlog.get_logger("daemon")


@dataclass(frozen=True, slots=True)
class RunOptions:
    config: Config
    config_path: Path | None
    state_dir: Path
    overrides: frozenset[str] = frozenset()  # config keys the command line set (win on reload)


# The collector's defaults (a young collection every 700 allocations) promote most requests in
# flight to the older generations, whose collections then walk the whole heap several times a
# second under load. A young generation this size lets them die young; bench/ingest.py measured
# about 15% less CPU per message.
GC_THRESHOLDS = (50_000, 20, 20)


# The event loop shares the interpreter lock with the committer's writer thread, which needs it
# back after each of its system calls (the journal's write and sync, then one write per
# transcript the batch touched). While the loop runs Python (preparing the next batch, reading
# requests), each of those may wait up to the switch interval. Measured with a thread writing 50
# lines beside a loop busy in 4 ms bursts: worst 12-15 ms at the default 5 ms, 2.5-3.5 ms at
# 0.5 ms. It also bounds how long a checkpoint thread's Python work (writing sessions.json) holds
# the loop at a time; the price is a few more forced switches while two threads both run Python.
SWITCH_INTERVAL = 0.0005


def share_interpreter() -> None:
    """Let threads that return from a system call take the interpreter lock sooner."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def settle_heap() -> None:
    """After start-up: what is loaded now (modules, config, the registry) lives as long as the
    daemon, so it is frozen out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run(opts: RunOptions) -> int:
    cfg = opts.config
    state_dir = opts.state_dir
    log.info(
        "daemon.starting",
        version=__version__,
        pid=os.getpid(),
        stateDir=str(state_dir),
        config=str(opts.config_path) if opts.config_path else "built-in defaults",
    )
    openclaw_config.log_source(opts.config_path, cfg)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = StateLock(state_dir)
    lock.acquire()
    notifier = Notifier.from_environ()
    # Made now, so that a change to the file during a long recovery is noticed afterwards.
    reloader = Reloader(opts.config_path, cfg, overrides=opts.overrides, notifier=notifier)
    try:
        notifier.status("opening the state folder (recovery after a crash may take a while)")

        def new_store() -> Store:
            return Store(
                state_dir,
                dedup_max=cfg.daemon.dedupMaxPerAgent,
                dedup_window_ms=cfg.daemon.dedupWindowHours * 3_600_000,
            )

        store = new_store()
        set_workspaces(store, cfg, state_dir)
        t0 = time.monotonic()
        # On a full disk: starts anyway, reads served, writes refused until there is space.
        storage = StorageWatch(store, new_store)
        counts = await storage.open()
        log.info("store.opened", seconds=round(time.monotonic() - t0, 3), **counts)
        if rename_case_folded_keys(store):
            await anyio.to_thread.run_sync(save_dirty, store)
        settle_heap()
        share_interpreter()
        socket_path = resolve_socket_path(cfg, state_dir)
        # Built in dependency order; nothing is assigned to another after construction.
        # The entrance (the committer's door, the live config) comes before everything that
        # writes through it: the pipeline and the compaction service both append by it.
        entrance = Entrance(store, cfg, EventBus())
        mirror = Mirror(store, cfg, state_dir)  # stage 5: the backup mirror
        # Stages 6-7: the compaction check, which schedules memory flushes.
        compactor = Compactor(entrance, lambda a: workspace_of(entrance.config, state_dir, a))
        archiver = Archiver(entrance.store)  # moves the sessions batches closed into archive/
        # Not a SPEC stage: keeps each batch's lines for the search index's next pass.
        search = SearchService(
            state_dir,
            entrance.counters,
            lambda agent: Path(workspace_of(entrance.config, state_dir, agent)),
            lambda: agent_ids(entrance.config),
            lambda: entrance.store.take_index_touched(),
            archiver,
        )
        pipeline = Pipeline(
            entrance,
            stages=[mirror, SessionEvents(entrance.events, entrance.counters), compactor, search],
            commands=compactor,  # /compact and /context
            archiver=archiver,
        )
        warm = [
            (pipeline.archiver.pool, "daemon.store.archive"),
            (compactor.reset_flushes.pool, "daemon.compaction_job"),
        ]
        scheduler = Scheduler(pipeline, state_dir, Retention(pipeline, mirror), warm)
        jobs = anyio.CancelScope()

        async def run_jobs(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with jobs:
                await scheduler.run(task_status=task_status)

        broker = None
        if (rc := cfg.ingest.redis) is not None:
            from daemon.broker import RedisIngest

            broker = RedisIngest(
                pipeline,
                url=rc.url,
                stream=rc.stream,
                group=rc.group,
                consumer=rc.consumer,
                reply_stream=rc.replyStream,
                reply_max_len=rc.replyMaxLen,
                batch=rc.batch,
                block_ms=rc.blockMs,
                claim_idle_ms=rc.claimIdleMs,
            )
        api = Api(store, pipeline, socket_path, mirror=mirror, search=search, broker=broker)
        auth = Auth(store)
        auth.set_config(cfg)  # tokens (raises ConfigError for an unreadable tokenFile)
        spool = None
        if cfg.daemon.spool.enabled:
            folder = spool_dir(cfg.daemon.spool.dir, state_dir)
            spool = Spool(folder, pipeline, max_bytes=cfg.daemon.maxLineBytes)
        reloader.subscribe(pipeline.set_config)
        reloader.prepare(auth.prepare)
        listeners = listeners_of(cfg)  # ConfigError (a TLS file): exit 1
        reloader.prepare(tls_reloader(listeners))  # renewed certificates, on reload
        sockets = await bind_sockets(socket_path, int(cfg.daemon.socketMode), listeners)
        server = Server(  # ListenFailed above: exit 1
            Services(pipeline, api, search, compactor, reloader),  # what answers the methods
            sockets,
            auth,
            max_line=cfg.daemon.maxLineBytes,
            max_connections=cfg.daemon.maxConnections,
            idle_timeout=cfg.daemon.idleTimeoutSeconds,
            frame_timeout=cfg.daemon.frameTimeoutSeconds,
            limits=cfg.daemon.limits,
        )
        reloader.subscribe(live_settings(cfg, server, store, spool, state_dir))
        services = anyio.CancelScope()  # the watchdog ping, the config watch, /metrics
        # Bound now, so a taken port stops the start (exit 1) before anything runs.
        metrics = await open_metrics(cfg.daemon.metrics, pipeline, api, server, mirror, search)

        async def run_services(
            *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            with services:
                async with anyio.create_task_group() as stg:
                    stg.start_soon(notifier.watchdog)
                    await stg.start(storage.run)
                    await stg.start(reloader.watch)
                    if metrics is not None:
                        await stg.start(metrics.serve)
                    task_status.started()

        def stop_services() -> None:
            reloader.stop()
            services.cancel()

        stop_signals = (signal.SIGTERM, signal.SIGINT)
        # Each service is nested inside the ones it relies on (daemon/nesting.py): a stop tells
        # them all at once, the innermost first, and waits for them from the inside out.
        async with AsyncExitStack() as stack:
            stack.callback(store.close)  # outermost: closed once nothing runs on it
            nest = Nest(stack)
            # Caught from before the socket exists: a stop the moment it accepts is a clean one.
            with anyio.open_signal_receiver(*stop_signals, signal.SIGHUP) as signals:
                await nest.start(mirror.run, mirror.close)  # before the committer: durable sizes
                await nest.start(pipeline.run, pipeline.close)  # the committer
                # What the server's methods use, then everything that sends work in.
                await nest.start(server.serve, server.stop)
                await nest.start(compactor.run, compactor.stop)
                await nest.start(search.run, search.stop)
                await nest.start(run_jobs, jobs.cancel)
                if broker is not None:
                    await nest.start(broker.run, broker.stop)
                if spool is not None:
                    await nest.start(spool.run, spool.stop)
                log.info("daemon.started", socket=str(socket_path), pid=os.getpid())
                await nest.start(run_services, stop_services)
                notifier.ready(f"serving on {socket_path}")
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await reloader.reload("SIGHUP")
                        continue
                    log.info("daemon.stopping", signal=signal.Signals(signum).name)
                    break
            notifier.stopping("stopping: answering what was accepted")
            # Services, spool, broker, jobs, search, compaction, server, committer, mirror.
            nest.stop()
        log.info("daemon.stopped", **pipeline.counts())
    finally:
        notifier.close()
        lock.release()
    return 0


def set_workspaces(store: Store, cfg: Config, state_dir: Path) -> None:
    from daemon.core.keys import normalize_agent_id

    for a in cfg.agents.list:
        store.workspaces[normalize_agent_id(a.id)] = workspace_of(cfg, state_dir, a.id)


def live_settings(
    running: Config, server: Server, store: Store, spool: Spool | None, state_dir: Path
) -> Callable[[Config], None]:
    """What a reload changes outside the pipeline: limits (for connections and spool files from
    now on), logging, agents' workspaces."""
    last = running

    def apply(new: Config) -> None:
        nonlocal last
        d = new.daemon
        server.max_line = d.maxLineBytes
        server.max_connections = d.maxConnections
        server.idle_timeout = d.idleTimeoutSeconds
        server.frame_timeout = d.frameTimeoutSeconds
        server.limits = d.limits
        if spool is not None:
            spool.max_bytes = d.maxLineBytes
        if (d.logLevel, d.logFormat) != (last.daemon.logLevel, last.daemon.logFormat):
            logs.configure(d.logLevel, d.logFormat)
        set_workspaces(store, new, state_dir)
        last = new

    return apply

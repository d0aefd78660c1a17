"""`sessiond run`: wires config, lock, store, pipeline and server into one task group.

Start-up order: config -> logs -> state-folder lock -> store recovery (journal replay, torn tails)
-> committer -> socket. Shutdown on SIGTERM/SIGINT: stop accepting and reading, let the committer
finish what is queued and checkpoint, answer everything in flight, exit 0.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus

from daemon import __version__
from daemon.api import Api
from daemon.config import Config, resolve_socket_path
from daemon.lock import StateLock
from daemon.pipeline import Pipeline
from daemon.scheduler import Scheduler
from daemon.server import Server
from daemon.store.store import Store

log = structlog.get_logger("daemon")


@dataclass(frozen=True, slots=True)
class RunOptions:
    config: Config
    config_path: Path | None
    state_dir: Path


def workspace_of(cfg: Config, state_dir: Path, agent_id: str) -> str:
    """OpenClaw's default workspaces: workspace/ for the default agent, workspace-<id>/ else."""
    for a in cfg.agents.list:
        if a.id == agent_id and a.workspace:
            return str(Path(a.workspace).expanduser())
    if agent_id == cfg.default_agent_id():
        base = cfg.agents.defaults.workspace
        return str(Path(base).expanduser()) if base else str(state_dir / "workspace")
    return str(state_dir / f"workspace-{agent_id}")


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
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = StateLock(state_dir)
    lock.acquire()
    try:
        store = Store(
            state_dir,
            dedup_max=cfg.daemon.dedupMaxPerAgent,
            dedup_window_ms=cfg.daemon.dedupWindowHours * 3_600_000,
        )
        for a in cfg.agents.list:
            from daemon.core.keys import normalize_agent_id

            store.workspaces[normalize_agent_id(a.id)] = workspace_of(cfg, state_dir, a.id)
        t0 = time.monotonic()
        counts = await anyio.to_thread.run_sync(store.open)
        log.info("store.opened", seconds=round(time.monotonic() - t0, 3), **counts)
        socket_path = resolve_socket_path(cfg, state_dir)
        pipeline = Pipeline(store, cfg)
        api = Api(store, pipeline, socket_path)
        server = Server(
            pipeline,
            api,
            socket_path,
            int(cfg.daemon.socketMode),
            max_line=cfg.daemon.maxLineBytes,
            max_connections=cfg.daemon.maxConnections,
            idle_timeout=cfg.daemon.idleTimeoutSeconds,
        )
        scheduler = Scheduler(pipeline, state_dir)
        jobs = anyio.CancelScope()

        async def run_jobs(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with jobs:
                await scheduler.run(task_status=task_status)

        async with anyio.create_task_group() as tg:
            await tg.start(pipeline.run)
            await tg.start(server.serve)
            await tg.start(run_jobs)
            log.info("daemon.started", socket=str(socket_path), pid=os.getpid())
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("daemon.stopping", signal=signal.Signals(signum).name)
                    break
            jobs.cancel()
            server.stop()
            pipeline.close()
        store.close()
        log.info("daemon.stopped", **pipeline.counts())
    finally:
        lock.release()
    return 0

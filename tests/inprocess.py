"""The pipeline and committer in-process, wired as app.py wires them minus the compaction
service: the backup mirror (when given) and the session events are its after-commit stages."""

from __future__ import annotations

from daemon.archiving import Archiver
from daemon.backup import Mirror
from daemon.config import Config
from daemon.events import EventBus
from daemon.pipeline import Pipeline
from daemon.session_events import SessionEvents
from daemon.store.store import Store
from daemon.work import Entrance, Stage


def make_pipeline(
    store: Store, cfg: Config, *, mirror: Mirror | None = None, archive_in_workers: bool = True
) -> Pipeline:
    """`archive_in_workers=False`: the archive moves run in a thread of this process, where a
    simulated disk (tests/sim_disk.py) sees them."""
    entrance = Entrance(store, cfg, EventBus())
    stages: list[Stage] = [] if mirror is None else [mirror]
    stages.append(SessionEvents(entrance.events, entrance.counters))
    archiver = Archiver(store, in_workers=archive_in_workers)
    return Pipeline(entrance, stages=stages, archiver=archiver)

"""Adoption: the first start over a state folder that sessiond's scheduler has never run on.

Such a folder was written by OpenClaw (run in place, or copied by `import-openclaw`). Its sessions
were judged by OpenClaw on their next message only; there was no proactive daily job. Applying the
boundaries that passed before we arrived would archive nearly every session at once (everything
begun before the last atHour), write memory notes for all of them and leave `sessions.json` empty.

So the first start records when the folder was adopted in `<stateDir>/adopted.json`, and the
scheduler never resets a session for a cause that lies before that time: a session's start and
last interaction count as no earlier than the adoption for the proactive jobs (daily boundaries
and idle expiry run from there). A message that arrives is judged on the session's real times,
exactly as OpenClaw would have judged it.

A folder on which sessiond's scheduler has already run (it has a `scheduler.json`) is ours: it is
not adopted, and its missed runs apply as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import structlog

from daemon.lifecycle import Policies
from daemon.store.fsutil import atomic_write
from daemon.store.store import Store

log = structlog.get_logger("daemon.adoption")

MARKER = "adopted.json"
SCHEDULER_STATE = "scheduler.json"


def read_marker(state_dir: Path) -> int | None:
    """The adoption time recorded in the state folder, or None when there is none."""
    try:
        doc = orjson.loads((state_dir / MARKER).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as e:
        # An unreadable marker must not turn into a purge: treat the folder as adopted now.
        log.warning("state.adoption_marker_unreadable", file=MARKER, error=str(e))
        return None
    at = doc.get("adoptedAt") if isinstance(doc, dict) else None
    return at if isinstance(at, int) else None


def adopt(store: Store, policies: Policies, now: int) -> tuple[int, dict[str, Any] | None]:
    """The time before which the scheduler applies no reset (0 for a folder that is ours), and
    the marker to write when this start adopts the folder (None otherwise).

    Reads the marker's file and the store's in-memory state: call it from the event loop at
    start-up, before the first job, then `record` the marker (in a worker thread)."""
    state_dir = store.state_dir
    known = read_marker(state_dir)
    if known is not None:
        return known, None
    if (state_dir / SCHEDULER_STATE).exists() and not (state_dir / MARKER).exists():
        return 0, None
    return now, {"adoptedAt": now, **adoption_counts(store, policies, now)}


def record(state_dir: Path, doc: dict[str, Any]) -> None:
    """Write the marker and log the adoption. Raises OSError: a scheduler that could not record
    the adoption would purge the folder at its next start, so the daemon must not go on."""
    atomic_write(state_dir / MARKER, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    if doc.get("sessions") or doc.get("archives"):
        log.info("state.adopted", **doc)


def adoption_counts(store: Store, policies: Policies, now: int) -> dict[str, int]:
    """Agents, active sessions, archives, and the sessions that a purge would have archived
    (stale now by OpenClaw's rules: they are judged on their next message instead)."""
    sessions = deferred = 0
    for reg in store.agents.values():
        for st in reg.sessions.values():
            sessions += 1
            if policies.staleness(st, now).stale:
                deferred += 1
    return {
        "agents": len(store.agents),
        "sessions": sessions,
        "archives": len(store.archived_by_id),
        "staleJudgedOnNextMessage": deferred,
    }

"""Filling the backup mirror from a state folder, synchronously: after `import-openclaw` and for
`doctor --repair`, which work on the folder while no daemon runs (the caller holds its lock).

Every transcript's lines beyond its mirror are appended (`catch_up`), and every archived
session's state record is written (`write_states`), so that right after an import the mirror
is as the running daemon would have left it: `doctor` finds nothing behind, and a restore from
it gives back the same active and archived sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.backup import backup_root
from daemon.core.exclusions import excluded
from daemon.errors import os_reason
from daemon.store import archive
from daemon.store.backup import Job, catch_up, state_record, write_states
from daemon.verify import (
    _header_key,
    first_line,
    known_keys,
    session_id_of,
    state_diffs,
    transcript_files,
)

if TYPE_CHECKING:
    from daemon.config import Config


@dataclass(frozen=True, slots=True)
class Filled:
    sessions: int
    records: int
    states: int


def mirror_jobs(state_dir: Path, patterns: tuple[str, ...]) -> list[Job]:
    """One job per session (its first transcript file, active first), from wherever its
    mirror stands to the end of the file."""
    jobs: list[Job] = []
    seen: set[str] = set()
    # OpenClaw's headers carry no key (imported transcripts are copied byte for byte): the
    # registry and the archive index know it, and a restore needs it in the mirror's records.
    keys = known_keys(state_dir)
    for f in transcript_files(state_dir):
        first = first_line(f.path)
        sid = session_id_of(f.path, first)
        key = _header_key(first) or keys.get(sid)
        if sid in seen or excluded(key, patterns):
            continue
        seen.add(sid)
        jobs.append(Job(sid, f.agent_id, key, None, (f.path,), None, None))
    return jobs


def archived_states(state_dir: Path, patterns: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """The state record of every archived session (its index line; the latest one wins)."""
    out: dict[str, dict[str, object]] = {}
    agents = state_dir / "agents"
    if not agents.is_dir():
        return out
    for agent in sorted(agents.iterdir()):
        for rec in archive.read_index(agent / "sessions"):
            if not excluded(rec.sessionKey, patterns):
                out[rec.sessionId] = state_record(rec.to_json())
    return out


def mirror_session(cfg: Config, root: Path, job: Job) -> None:
    """Mirror one transcript written outside the daemon (doctor --repair re-created it), as
    the daemon would have: the next doctor must not find it behind. Raises OSError."""
    bc = cfg.sessions.backup
    if bc.enabled and not excluded(job.session_key, bc.exclude_patterns):
        catch_up(root, [job])


def record_states(cfg: Config, state_dir: Path) -> int:
    """Write the state records that differ; returns how many. Raises OSError."""
    bc = cfg.sessions.backup
    if not bc.enabled:
        return 0
    root = backup_root(cfg, state_dir)
    return write_states(root, archived_states(state_dir, bc.exclude_patterns))


def try_record_states(cfg: Config, state_dir: Path) -> str | None:
    """`record_states`, or why it failed."""
    try:
        record_states(cfg, state_dir)
    except OSError as e:
        return f"the mirror's state records could not be written: {os_reason(e)}"
    return None


def misstated(cfg: Config, state_dir: Path) -> list[str]:
    """Sessions whose state the mirror does not record as it is (`verify.state_diffs`)."""
    bc = cfg.sessions.backup
    root = backup_root(cfg, state_dir)
    if not bc.enabled or not root.is_dir():
        return []
    keys = known_keys(state_dir)
    return state_diffs(state_dir, root, keys, lambda k: excluded(k, bc.exclude_patterns))


def fill_mirror(cfg: Config, state_dir: Path) -> Filled | None:
    """Bring the mirror up to the state folder (None when the mirror is disabled).
    Raises OSError."""
    bc = cfg.sessions.backup
    if not bc.enabled:
        return None
    root = backup_root(cfg, state_dir)
    done = catch_up(root, mirror_jobs(state_dir, bc.exclude_patterns))
    return Filled(done.sessions, done.records, record_states(cfg, state_dir))

"""`doctor`'s checks of each agent's sessions folder: the registry against the transcripts
(entries without a file, entries naming archived sessions), transcripts no entry names (orphans,
closed but unmoved), and the archive index (files without an index line, index lines naming a
file a crash kept from being written, archives lost but in the backup mirror).

Repairs only move, adopt, append or rebuild from the mirror; sessions.json (derived data) is
rewritten atomically. Nothing is deleted.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import orjson

from daemon import backfill
from daemon.backup import backup_root
from daemon.core.ids import now_ms
from daemon.doctor_findings import SHOW, Checkup
from daemon.store import archive, transcript
from daemon.store import backup as mirror_files
from daemon.store.archive import ArchiveRecord
from daemon.store.backup import Job
from daemon.store.fsutil import atomic_write, fsync_dir, write_new_file
from daemon.store.registry import (
    SESSIONS_JSON,
    AgentRegistry,
    fill_registry,
    is_active_transcript_name,
    load_agent,
    read_registry,
    rebuild_from_transcripts,
    session_file_name,
)


def check_agent(doc: Checkup, agent_id: str, folder: Path) -> None:
    if not folder.is_dir():
        return
    reg, problem = _registry(doc, agent_id, folder)
    _check_entries(doc, agent_id, folder, reg)
    _check_unregistered(doc, agent_id, folder, reg, rebuilt=problem is not None)
    _check_index(doc, agent_id, folder)


def _registry(doc: Checkup, agent_id: str, folder: Path) -> tuple[AgentRegistry, str | None]:
    """The registry as the daemon will see it (rebuilt in memory when it cannot be read)."""
    path = folder / SESSIONS_JSON
    data, problem = read_registry(path)
    reg = AgentRegistry(agent_id, folder)
    if data is not None:
        fill_registry(reg, data)
        return reg, None
    rebuild_from_transcripts(doc.state_dir, reg)
    if path.exists() or reg.sessions:

        def fix(agent_id: str = agent_id, folder: Path = folder) -> None:
            new, _ = load_agent(doc.state_dir, agent_id, folder)  # keeps a corrupt copy
            new.save(new.serialize())

        doc.add(
            "registry",
            "error" if path.exists() else "warning",
            f"agents/{agent_id}/sessions/sessions.json {problem}",
            f"rebuild it from the transcript headers ({len(reg.sessions)} session(s))"
            + (f", keeping the old one as {SESSIONS_JSON}.corrupt-<ms>" if path.exists() else ""),
            fix,
        )
    return reg, problem


def _check_entries(doc: Checkup, agent_id: str, folder: Path, reg: AgentRegistry) -> None:
    root = backup_root(doc.cfg, doc.state_dir)
    archived = {r.sessionId for r in archive.read_index(folder)}
    stale: list[str] = []
    missing = 0
    for key, st in reg.sessions.items():
        name = session_file_name(st.entry, st.session_id)
        path = folder / name
        if path.exists():
            continue
        missing += 1
        if st.session_id in archived or (folder / archive.ARCHIVE_DIR / name).exists():
            stale.append(key)
            continue
        has_mirror = mirror_files.last_record(root, st.session_id) is not None
        if has_mirror:
            action = "rebuild the transcript from the backup mirror"
        else:
            action = (
                "begin the transcript again with its header (the daemon does the same at "
                "the session's next message; its earlier entries are not in the backup)"
            )
        doc.add(
            "registry",
            "error",
            f"{key} names {doc.rel(path)}, which does not exist",
            action,
            partial(_recreate, doc, path, st.session_id, key, agent_id, has_mirror),
        )
    if stale:

        def drop(folder: Path = folder, keys: tuple[str, ...] = tuple(stale)) -> None:
            path = folder / SESSIONS_JSON
            doc = orjson.loads(path.read_bytes())
            for k in keys:
                doc.pop(k, None)
            atomic_write(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))

        doc.add(
            "registry",
            "warning",
            f"agents/{agent_id}: {len(stale)} registry entr(ies) name sessions that are "
            f"archived: {', '.join(stale[:SHOW])}",
            "take them out of sessions.json (their keys begin new sessions with the next "
            "message; the archives stay readable)",
            drop,
        )
    if not missing:
        doc.add(
            "registry",
            "ok",
            f"agents/{agent_id}: {len(reg.sessions)} session(s), every transcript present",
        )


def _move(
    doc: Checkup,
    path: Path,
    agent_id: str,
    reason: str,
    sid: str,
    key: str | None,
    succ: str | None,
) -> ArchiveRecord:
    """Adopt a transcript into archive/ (a rename, synced) with its index line."""
    return archive.archive_transcript(
        path,
        agent_id,
        reason,
        session_id=sid,
        session_key=key,
        predecessor=None,
        successor=succ,
        now=now_ms(),
    )


def _recreate(
    doc: Checkup, path: Path, sid: str, key: str, agent_id: str, from_mirror: bool
) -> None:
    from daemon.restore import rebuild

    root = backup_root(doc.cfg, doc.state_dir)
    cwd = str(doc.state_dir / "workspace")
    s = rebuild(root, sid, cwd) if from_mirror else None
    lines = s.lines if s is not None else [transcript.header_line(sid, key, now_ms(), cwd)]
    _write_new(path, lines)
    backfill.mirror_session(doc.cfg, root, Job(sid, agent_id, key, None, (path,), None, None))


def _check_unregistered(
    doc: Checkup, agent_id: str, folder: Path, reg: AgentRegistry, *, rebuilt: bool
) -> None:
    named = {session_file_name(st.entry, st.session_id) for st in reg.sessions.values()}
    orphans = 0
    openclaw = []
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if not e.is_file() or e.name.startswith("."):
            continue
        path = Path(e.path)
        if archive.OPENCLAW_SUFFIX.match(e.name):
            openclaw.append(e.name)
            continue
        if not is_active_transcript_name(e.name) or e.name in named:
            continue
        header = transcript.read_header(path) or {}
        sid = str(header.get("id") or e.name.split(".jsonl")[0])
        key = header.get("sessionKey") if isinstance(header.get("sessionKey"), str) else None
        closed = archive.closing_entry(path)
        if closed is not None:
            reason = str(closed.get("reason") or "reset")
            succ = closed.get("successor") if isinstance(closed.get("successor"), str) else None
            doc.add(
                "half-done-move",
                "warning",
                f"{doc.rel(path)} was closed ({reason}) but not yet moved into archive/",
                f"move it into archive/ with its index line (reason {reason})",
                partial(_move, doc, path, agent_id, reason, sid, key, succ),
            )
            continue
        orphans += 1
        doc.add(
            "orphan",
            "warning",
            f"{doc.rel(path)} is not named by sessions.json"
            + (f" (its key {key} belongs to another session)" if key in reg.sessions else ""),
            "adopt it into archive/ with reason orphan (readable with sessions history --id)",
            partial(_move, doc, path, agent_id, "orphan", sid, key, None),
        )
    if openclaw:
        doc.add(
            "half-done-move",
            "info",
            f"agents/{agent_id}: {len(openclaw)} OpenClaw archive(s) not yet adopted: "
            f"{', '.join(openclaw[:SHOW])}",
            "adopt them into archive/ (the daemon does the same at start-up)",
            partial(archive.adopt_openclaw_archives, folder, agent_id, {}, now_ms()),
        )
    if not orphans:
        doc.add("orphan", "ok", f"agents/{agent_id}: no orphan transcripts")


def _check_index(doc: Checkup, agent_id: str, folder: Path) -> None:
    arch = folder / archive.ARCHIVE_DIR
    if not arch.is_dir():
        return
    for p in archive.missing_index_entries(folder):
        doc.add(
            "half-done-move",
            "warning",
            f"{doc.rel(p)} is in archive/ without an index line (a crash after the move)",
            "append its index line",
            partial(archive.index_orphan, p, agent_id, now_ms()),
        )
    latest: dict[str, ArchiveRecord] = {}
    for rec in archive.read_index(folder):
        latest[rec.sessionId] = rec
    root = backup_root(doc.cfg, doc.state_dir)
    for rec in latest.values():
        if rec.reason == archive.MISSING_TRANSCRIPT:
            continue  # imported from a registry row whose transcript was already gone
        path = arch / rec.file
        plain = arch / rec.file.removesuffix(".gz")
        if path.is_file():
            if path != plain and plain.is_file():
                doc.add(
                    "half-done-move",
                    "info",
                    f"{doc.rel(plain)} is still beside its verified {path.name} (a "
                    "retention sweep was interrupted)",
                    None,
                )
            continue
        if plain.is_file():
            doc.add(
                "half-done-move",
                "warning",
                f"the index names {rec.file}, which a crash kept from being written; "
                f"{plain.name} is there and is what readers use",
                f"append an index line naming {plain.name} (the next sweep compresses it)",
                partial(archive.append_index, folder, [replace(rec, file=plain.name)]),
            )
            continue
        if mirror_files.last_record(root, rec.sessionId) is not None:
            doc.add(
                "registry",
                "error",
                f"archived session {rec.sessionId}: {rec.file} is missing",
                "rebuild it from the backup mirror as archive/"
                f"{plain.name} and append its index line",
                partial(_rearchive, doc, rec, plain, folder),
            )
        else:
            doc.add(
                "registry",
                "error",
                f"archived session {rec.sessionId}: {rec.file} is missing and not in the "
                "backup mirror",
            )


def _rearchive(doc: Checkup, rec: ArchiveRecord, path: Path, folder: Path) -> None:
    from daemon.restore import rebuild

    s = rebuild(backup_root(doc.cfg, doc.state_dir), rec.sessionId, "")
    if s is None:
        raise FileNotFoundError(2, "the mirror has no records for it", rec.sessionId)
    _write_new(path, s.lines)
    stats = archive.transcript_stats(path)
    archive.append_index(
        folder, [replace(rec, file=path.name, bytes=stats.bytes, sha256=stats.sha256)]
    )


def _write_new(path: Path, lines: list[bytes]) -> None:
    """A transcript that must not exist yet (O_EXCL), synced with its folder."""
    write_new_file(path, b"".join(line + b"\n" for line in lines))
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)

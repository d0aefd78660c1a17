"""Opening a state folder: journal replay into transcripts and registries, then archive
recovery (moves a crash interrupted, OpenClaw's renamed archives, the archive index). Runs once,
in a worker thread, from `Store.open`, before the daemon listens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog

from daemon.core.ids import now_ms
from daemon.core.ingest import ingest_answer
from daemon.store import archive, fileio, recovery, transcript
from daemon.store.fsutil import FILE_MODE, ensure_dir
from daemon.store.journal import Record
from daemon.store.registry import SessionState, is_active_transcript_name
from daemon.store.store import (
    Store,
    _int_or_none,
    _str_or_none,
    write_all_at_end,
)
from daemon.store.transcript import json_object, parse_iso_ms

log = structlog.get_logger("daemon.store")


def replay(store: Store, records: list[Record]) -> int:
    """Bring transcripts (and the registry and idempotency index) up to the journal.

    Idempotent (invariant 3). Idempotency records are rebuilt from the replayed entries'
    `origin.messageId`, so the journal needs no record of its own for them.
    """
    by_rel = {st.rel_path: st for st in store.by_id.values()}
    after_header: set[str] = set()
    count = 0
    for rec in records:
        if rec.kind != "T":
            continue
        rel = rec.a
        if ".." in Path(rel).parts or not rel.startswith("agents/") or rel.count("/") != 3:
            log.error("journal.bad_path", path=rel)
            continue
        live = replay_line(store, rel, int(rec.b), rec.payload)
        count += 1
        obj = json_object(rec.payload)
        if obj is not None:
            replay_registry(store, rel, obj, by_rel, after_header, live=live)
    store._gz_content.clear()
    return count


def replay_line(store: Store, rel: str, offset: int, line: bytes) -> bool:
    """Put one journal line in its transcript unless it is there already. Returns whether
    the transcript is a live one (False: the session is archived)."""
    path = store.state_dir / rel
    live = True
    if not path.exists():
        moved = path.parent / archive.ARCHIVE_DIR / path.name
        gz = moved.with_name(moved.name + ".gz")
        if moved.exists():
            # Archived after this line was written; archiving synced the file first.
            path, live = moved, False
        elif gz.exists():
            # Archived, then compressed by the retention sweep: the archive is complete
            # (archiving synced every line before the move); never begin a second copy.
            check_compressed(store, rel, gz, offset, line)
            return False
    ensure_dir(path.parent)
    data = line + b"\n"
    fd = fileio.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size > offset:
            if os.pread(fd, len(data), offset) == data:
                return live
            # What follows `offset` was never acknowledged in that form: keep it aside.
            os.close(fd)
            fd = -1
            side = transcript.cut_tail(path, offset, now_ms())
            log.warning("journal.replaced_tail", path=rel, offset=offset, kept=str(side))
            fd = os.open(path, os.O_RDWR)
        elif size < offset:
            log.error("journal.gap", path=rel, expected=offset, size=size)
        write_all_at_end(fd, data)
    finally:
        if fd >= 0:
            os.close(fd)
    store._replayed.add(str(path.relative_to(store.state_dir)))
    return live


def check_compressed(store: Store, rel: str, gz: Path, offset: int, line: bytes) -> None:
    content = store._gz_content.get(rel)
    if content is None:
        content = store._gz_content[rel] = recovery.archive_content(gz)
    recovery.check_archived_line(rel, gz, content, offset, line)


def replay_registry(
    store: Store,
    rel: str,
    obj: dict[str, Any],
    by_rel: dict[str, SessionState],
    after_header: set[str],
    *,
    live: bool,
) -> None:
    agent_id = rel.split("/")[1]
    reg = store.agent(agent_id)
    ts = parse_iso_ms(obj.get("timestamp"))
    if obj.get("type") == "session":
        key, sid = obj.get("sessionKey"), obj.get("id")
        if not isinstance(key, str) or not isinstance(sid, str):
            return
        after_header.add(rel)
        if not live and rel not in by_rel:
            # An archived session: its key belongs to its successor (or to nobody).
            return
        old = reg.sessions.get(key)
        if old is None or old.session_id != sid:
            entry = {
                "sessionId": sid,
                "sessionFile": str(store.state_dir / rel),
                "updatedAt": ts,
                "sessionStartedAt": ts,
                "compactionCount": 0,
            }
            st = SessionState(agent_id, key, sid, rel, reg.entry(entry, key), new=True)
            reg.sessions[key] = st
            store.by_id[sid] = st
            by_rel[rel] = st
            reg.dirty = True
        return
    found = by_rel.get(rel)
    if found is None:
        # Closed by a reset the registry already knows: no state to update, but its message
        # ids must stay known, or a resend would be stored a second time.
        if obj.get("customType") != archive.CLOSED:
            created = rel in after_header
            after_header.discard(rel)
            origin = obj.get("origin")
            if isinstance(origin, dict) and isinstance(origin.get("messageId"), str):
                key3 = (
                    str(origin.get("channel")),
                    str(origin.get("accountId")),
                    origin["messageId"],
                )
                store._unowned_ids.append((agent_id, rel, key3, ts, str(obj.get("id")), created))
        return
    st = found
    store._recount.add(st.session_id)
    if obj.get("customType") == archive.CLOSED:
        # Closed by a reset: the key no longer points at it (its successor, if any, does).
        if reg.sessions.get(st.session_key) is st:
            del reg.sessions[st.session_key]
            reg.dirty = True
        store.by_id.pop(st.session_id, None)
        return
    created = rel in after_header
    after_header.discard(rel)
    st.entry.updated_at = max(st.entry.updated_at, ts)
    msg = obj.get("message")
    if isinstance(msg, dict) and msg.get("role") == "user":
        st.entry.last_interaction_at = ts
    reg.dirty = True
    origin = obj.get("origin")
    if not isinstance(origin, dict) or not isinstance(origin.get("messageId"), str):
        return
    key3 = (str(origin.get("channel")), str(origin.get("accountId")), origin["messageId"])
    if store.dedup.lookup(agent_id, key3) is None:
        answer = ingest_answer(st.session_key, st.session_id, str(obj.get("id")), created)
        store.dedup.remember(agent_id, key3, ts, answer)


UNWRITTEN_SUFFIX = ".unwritten"  # an empty transcript set aside at start-up


def recover_archives(store: Store) -> dict[str, int]:
    """Finish archive moves a crash interrupted, adopt OpenClaw's renamed archives, and load
    every agent's archive index. Reads only the tails of transcripts no session owns."""
    now = now_ms()
    finished = indexed = adopted = 0
    for agent_id, reg in list(store.agents.items()):
        folder = reg.folder
        if not folder.is_dir():
            continue
        for p in archive.missing_index_entries(folder):
            archive.index_orphan(p, agent_id, now)
            indexed += 1
        registered = {Path(st.rel_path).name for st in reg.sessions.values()}
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            name = entry.name
            if name in registered or not is_active_transcript_name(name):
                continue
            path = Path(entry.path)
            if not entry.is_file():
                continue
            if entry.stat().st_size == 0:
                set_aside_unwritten(path, agent_id)
                continue
            closed = archive.closing_entry(path)
            header = transcript.read_header(path) or {}
            if closed is None and not header:
                # Empty or headless: a new session whose first write failed (nothing was
                # acknowledged in it), not a session to adopt.
                continue
            if closed is None:
                # No registry entry names it and no reset closed it (an OpenClaw folder
                # whose sessions.json moved on): adopted into archive/, readable by id,
                # as `doctor --repair` does; its key may belong to a newer session.
                closed = {"reason": "orphan"}
                adopted += 1
                log.warning("archive.orphan_adopted", agentId=agent_id, file=name)
            else:
                finished += 1
                log.warning("archive.completed", agentId=agent_id, file=name)
            archive.archive_transcript(
                path,
                agent_id,
                str(closed.get("reason") or "reset"),
                session_id=str(header.get("id") or name.split(".jsonl")[0]),
                session_key=header.get("sessionKey"),
                predecessor=None,
                successor=_str_or_none(closed.get("successor")),
                now=now,
            )
        key_of: dict[str, str] = {}
        for key, st in reg.sessions.items():
            family = st.entry.get("usageFamilySessionIds")
            for sid in family if isinstance(family, list) else []:
                if isinstance(sid, str) and sid != st.session_id:
                    key_of.setdefault(sid, key)
        current = {
            key: (st.session_id, _int_or_none(st.entry.get("sessionStartedAt")))
            for key, st in reg.sessions.items()
        }
        for rec in archive.adopt_openclaw_archives(folder, agent_id, key_of, now, current):
            adopted += 1
            log.info("archive.adopted", agentId=agent_id, sessionId=rec.sessionId, file=rec.file)
        for rec in archive.read_index(folder):
            store._add_archived(rec)
    return {
        "archivesCompleted": finished,
        "archivesIndexed": indexed,
        "archivesAdopted": adopted,
        "archives": len(store.archived_by_id),
    }


def set_aside_unwritten(path: Path, agent_id: str) -> None:
    """Rename an empty transcript that no registry entry and no journal line names to
    `<name>.unwritten`, no longer a transcript's name (so no reader counts it as a session).

    Most likely a new session's transcript created ahead of its first batch, which a crash
    kept from being written (store/open_transcripts.py): replay runs first, so a file the
    journal knows has its lines by now. It is set aside, not removed: found at start-up, it
    cannot be told from an empty file someone else put there, and we remove nothing we did not
    create in this run. The name keeps the session id; nothing reads it again."""
    target = path.with_name(path.name + UNWRITTEN_SUFFIX)
    if target.exists():  # set aside before, and this empty name made again: keep both
        target = path.with_name(f"{path.name}{UNWRITTEN_SUFFIX}.{now_ms()}")
    fileio.rename(path, target)
    log.warning("store.unwritten_transcript_set_aside", agentId=agent_id, file=path.name)


def remember_unowned(store: Store) -> None:
    """Message ids of replayed lines whose sessions are closed: their answers name the
    session as it was (its key from the archive index, else from its header)."""
    keys: dict[str, str | None] = {}
    for agent_id, rel, key3, ts, entry_id, created in store._unowned_ids:
        sid = Path(rel).name.removesuffix(".jsonl")
        if rel not in keys:
            known = store.archived_by_id.get(sid)
            key = known.session_key if known is not None else None
            if key is None:
                path = archive.locate_transcript(store.state_dir / rel)
                header = recovery.read_any_header(path)
                key = _str_or_none(header.get("sessionKey"))
            keys[rel] = key
        key = keys[rel]
        if key is None:
            log.warning("dedup.session_unknown", path=rel, messageId=key3[2])
            continue
        if store.dedup.lookup(agent_id, key3) is None:
            answer = ingest_answer(key, sid, entry_id, created)
            store.dedup.remember(agent_id, key3, ts, answer)
    store._unowned_ids.clear()

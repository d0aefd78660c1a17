"""The store: registry, transcripts, journal and idempotency index of one state folder.

Ownership: the store's in-memory state is read and changed from the event loop only. File I/O
runs in worker threads, one batch at a time for writes (`commit`), and in a separate thread for
the checkpoint's syncs, which open their own file descriptors. The committer (pipeline.py) is the
only caller of `prepare`, `write_batch`, `apply` and `switch_journal`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from daemon.core.ids import new_session_id, next_entry_id, now_ms
from daemon.errors import os_reason, storage_unavailable
from daemon.failpoints import failpoint
from daemon.store import archive, context, fileio, recovery, transcript
from daemon.store.archive import ArchiveRecord
from daemon.store.dedup import DedupIndex, DedupKey, Snapshot
from daemon.store.fsutil import (
    Staged,
    ensure_dir,
    fsync_dir,
    raise_fd_limit,
    sync_filesystem,
    write_all,
)
from daemon.store.journal import START_AHEAD, Journal
from daemon.store.open_transcripts import OpenTranscripts
from daemon.store.registry import (
    AgentRegistry,
    RegistryWrite,
    SessionState,
    load_agent,
    plan_writes,
)
from daemon.store.registry_log import WritePolicy
from daemon.store.transcript import iso_ms

log = structlog.get_logger("daemon.store")

SYNCFS_ABOVE = 16  # transcripts per checkpoint beyond which one syncfs beats many fsyncs


@dataclass(slots=True)
class NewSession:
    """What a new session needs beyond its key: its registry entry's first fields."""

    chat_type: str
    entry_fields: dict[str, Any]


@dataclass(slots=True)
class Archived:
    """An archived session as the daemon knows it: its index record (None while the move is
    still under way) and where its transcript is right now."""

    agent_id: str
    session_id: str
    session_key: str | None
    reason: str
    rel_path: str
    archived_at: int
    successor: str | None = None
    record: ArchiveRecord | None = None


@dataclass(slots=True)
class Closing:
    """A session closed by a batch: archived once the batch is durable."""

    state: SessionState
    reason: str
    successor: str | None
    predecessor: str | None


@dataclass(slots=True)
class Batch:
    """A prepared batch: lines per transcript and their journal records.

    Writer positions (size, last entry id) advance when a line is added, so the next batch can
    be prepared while this one is being synced; `Store.fail` undoes that if the write fails,
    which is why the batch also names the sessions it creates and closes.
    """

    # per touched session: (state, size before the batch, lines)
    touched: dict[int, tuple[SessionState, int, list[bytes]]] = field(default_factory=dict)
    journal: list[bytes] = field(default_factory=list)
    created: list[SessionState] = field(default_factory=list)
    closing: list[Closing] = field(default_factory=list)


class Store:
    """One state folder, opened by a daemon that holds its lock."""

    def __init__(self, state_dir: Path, *, dedup_max: int, dedup_window_ms: int) -> None:
        self.state_dir = state_dir
        self._root = str(state_dir)  # for paths built per write: str joins, not pathlib
        self.agents: dict[str, AgentRegistry] = {}
        self.by_id: dict[str, SessionState] = {}
        self.journal = Journal(state_dir / "journal")
        self.dedup = DedupIndex(state_dir / "dedup", dedup_max, dedup_window_ms)
        self.files = OpenTranscripts(self._root)  # open transcripts (store/open_transcripts.py)
        self.written_since_switch: set[str] = set()  # rel paths to fsync at the next checkpoint
        self.index_touched: set[str] = set()  # rel paths written since the search index took them
        self.new_dirs: set[str] = set()
        self.broken: str | None = None  # set when a sync failed: no more writes
        # `broken` only until there is space again (a start-up on a full disk: daemon/storage.py)
        self.recoverable = False
        self.write_error: str | None = None  # the last write failed (ENOSPC...): for `status`
        self.workspaces: dict[str, str] = {}
        # Archived sessions per agent, oldest first; `archived_by_id` finds one by session id.
        self.archives: dict[str, list[Archived]] = {}
        self.archived_by_id: dict[str, Archived] = {}
        # The newest archived session of each (agent, key): the predecessor of its next session.
        self.latest_by_key: dict[tuple[str, str], Archived] = {}
        self._replayed: set[str] = set()
        # Replay only: decompressed archives (rel path -> content), and message ids of replayed
        # lines whose session no registry entry names (closed by a reset, maybe archived):
        # remembered once the archive index is loaded (`_remember_unowned`).
        self._gz_content: dict[str, bytes] = {}
        self._unowned_ids: list[tuple[str, str, DedupKey, int, str, bool]] = []
        # Sessions whose token fields the registry may have behind their transcript (replayed
        # after a crash, or a rebuilt registry): recounted from the tail at start-up.
        self._recount: set[str] = set()
        self.registry_policy = WritePolicy()

    # ------------------------------------------------------------------------------------------
    # Start-up

    def open(self) -> dict[str, float]:
        """Load the registry, replay the journal, repair torn tails, then checkpoint.

        Runs in a worker thread before the daemon listens. Reads only transcript heads and tails,
        so its time does not grow with transcript size; sessions the journal replay touched are
        recounted from their end back to their latest compaction (store/context.py), which the
        compaction threshold bounds. Returns counts for the log.
        """
        from daemon.store import opening  # it builds on this module

        phases = recovery.Phases()
        raise_fd_limit()
        ensure_dir(self.state_dir)
        os.chmod(self.state_dir, 0o700)
        ensure_dir(self.state_dir / "agents")
        rebuilt = 0
        for entry in sorted(os.scandir(self.state_dir / "agents"), key=lambda e: e.name):
            folder = Path(entry.path) / "sessions"
            if not entry.is_dir() or not folder.is_dir():
                continue
            reg, reason = load_agent(self.state_dir, entry.name, folder)
            if reason is not None:
                rebuilt += 1
                log.warning(
                    "registry.rebuilt",
                    agentId=entry.name,
                    reason=reason,
                    sessions=len(reg.sessions),
                )
                self._recount.update(st.session_id for st in reg.sessions.values())
            self._add_agent(reg)
        ids = self.dedup.load(now_ms())
        phases.mark("load")
        records = self.journal.open_and_read()
        replayed = opening.replay(self, records)
        phases.mark("replay")
        torn = 0
        for st in list(self.by_id.values()):
            path = self.state_dir / st.rel_path
            try:
                side = transcript.repair_torn_tail(path, now_ms())
            except FileNotFoundError:
                continue
            if side is not None:
                torn += 1
                log.warning(
                    "transcript.torn_tail_repaired", sessionId=st.session_id, kept=str(side)
                )
        for sid in self._recount:
            rst = self.by_id.get(sid)
            counted = None if rst is None else context.recount(self.state_dir / rst.rel_path)
            if rst is not None and counted is not None:
                context.apply_recount(rst.entry, counted)
        phases.mark("tails")
        archived = opening.recover_archives(self)
        opening.remember_unowned(self)
        phases.mark("archives")
        # Everything replayed is made durable before the journal is emptied (invariant 2).
        self._sync_paths({st.rel_path for st in self.by_id.values() if st.new} | self._replayed)
        for reg in self.agents.values():
            reg.save_if_changed()
        self.dedup.save(self.dedup.snapshots())
        for st in self.by_id.values():
            st.new = False
        # Written ahead: the first generations' fdatasyncs overwrite, as later ones do.
        self.journal.start_fresh(ahead=START_AHEAD)
        phases.mark("sync")
        return {
            "agents": len(self.agents),
            "sessions": len(self.by_id),
            "journalRecords": replayed,
            "tornTails": torn,
            "registriesRebuilt": rebuilt,
            "dedupIds": ids,
            **archived,
            **phases.seconds,
        }

    def _add_archived(self, rec: ArchiveRecord) -> Archived:
        a = Archived(
            agent_id=rec.agentId,
            session_id=rec.sessionId,
            session_key=rec.sessionKey,
            reason=rec.reason,
            rel_path=f"agents/{rec.agentId}/sessions/{archive.ARCHIVE_DIR}/{rec.file}",
            archived_at=rec.archivedAt,
            successor=rec.successor,
            record=rec,
        )
        prior = self.archived_by_id.get(rec.sessionId)
        if prior is not None:
            # A later index line for the same session (e.g. after a restore) replaces the earlier.
            self.archives[rec.agentId].remove(prior)
        self.archives.setdefault(rec.agentId, []).append(a)
        self.archived_by_id[rec.sessionId] = a
        self._note_latest(a)
        return a

    def _note_latest(self, a: Archived) -> None:
        if a.session_key is None:
            return
        k = (a.agent_id, a.session_key)
        prior = self.latest_by_key.get(k)
        if prior is None or prior is a or a.archived_at >= prior.archived_at:
            self.latest_by_key[k] = a

    def predecessor_of(self, agent_id: str, session_key: str) -> Archived | None:
        """The ended session a new session of this key follows, when nothing named its
        successor yet (ended by the scheduler, deleted, or adopted without one)."""
        a = self.latest_by_key.get((agent_id, session_key))
        return a if a is not None and a.successor is None else None

    def record_successor(self, a: Archived, successor: str) -> ArchiveRecord | None:
        """Append an index line that names `a`'s successor (worker thread; index lines are
        append-only, the later line for a session wins). None while `a` has no index record
        (its move failed: start-up finishes it). Raises OSError."""
        if a.record is None:
            return None
        rec = replace(a.record, successor=successor)
        archive.append_index(self.state_dir / "agents" / a.agent_id / "sessions", [rec])
        return rec

    def close_session(
        self, batch: Batch, st: SessionState, reason: str, successor: str | None, now: int
    ) -> None:
        """Append the closing entry, take the session out of the registry, and queue its
        archiving for when the batch is durable. Until then it is readable where it is."""
        eid = next_entry_id(st.last_entry_id)
        data = {"reason": reason, "successor": successor}
        line = transcript.custom_line(eid, st.last_entry_id, iso_ms(now), archive.CLOSED, data)
        self.add_line(batch, st, line, eid)
        reg = self.agents[st.agent_id]
        if reg.sessions.get(st.session_key) is st:
            del reg.sessions[st.session_key]
        self.by_id.pop(st.session_id, None)
        reg.changed(st.session_key)
        batch.closing.append(Closing(st, reason, successor, None))
        self.archives.setdefault(st.agent_id, []).append(
            pending := Archived(
                st.agent_id,
                st.session_id,
                st.session_key,
                reason,
                st.rel_path,
                now,
                successor,
            )
        )
        self.archived_by_id[st.session_id] = pending
        self._note_latest(pending)

    def release_fd(self, st: SessionState) -> None:
        """Close a closed session's descriptor (event loop, between batches)."""
        self.files.release(st)

    def archived_done(self, rec: ArchiveRecord) -> None:
        a = self.archived_by_id.get(rec.sessionId)
        if a is None:
            self._add_archived(rec)
            return
        a.record = rec
        a.successor = rec.successor or a.successor
        a.rel_path = f"agents/{rec.agentId}/sessions/{archive.ARCHIVE_DIR}/{rec.file}"

    def _add_agent(self, reg: AgentRegistry) -> None:
        self.agents[reg.agent_id] = reg
        for st in reg.sessions.values():
            self.by_id[st.session_id] = st

    def agent(self, agent_id: str) -> AgentRegistry:
        reg = self.agents.get(agent_id)
        if reg is None:
            folder = self.state_dir / "agents" / agent_id / "sessions"
            if not folder.is_dir():
                # No fsync here (this runs on the event loop): the journal can recreate the
                # folder, and the next checkpoint makes it durable.
                for d in (folder.parent, folder):
                    try:
                        fileio.mkdir(d, 0o700)
                    except FileExistsError:
                        pass
                    except OSError as e:  # ENOSPC: this request fails (1004), not the committer
                        raise storage_unavailable(e, f"cannot create {d}", hint="retry") from e
                self.new_dirs.update(
                    ("agents", f"agents/{agent_id}", f"agents/{agent_id}/sessions")
                )
            reg = AgentRegistry(agent_id, folder)
            self.agents[agent_id] = reg
        return reg

    # ------------------------------------------------------------------------------------------
    # Writing (the committer's side)

    def ensure_loaded(self, states: list[SessionState]) -> None:
        """Read the tails of sessions not yet touched since start-up (worker thread)."""
        for st in states:
            if st.loaded:
                continue
            path = self.state_dir / st.rel_path
            try:
                tail = transcript.read_tail(path)
            except FileNotFoundError:
                # A registry entry whose transcript is gone: begin the file again with a header.
                st.size = 0
                st.last_entry_id = None
                continue
            st.size = tail.size
            st.last_entry_id = tail.last_entry_id

    def read_tails(self, states: list[SessionState]) -> list[tuple[int, str | None]]:
        """(size, last entry id) of each session's transcript, as `ensure_loaded` reads them
        (worker thread; nothing is changed): a caller reads them ahead of the committer and
        hands them to `set_tails` on the event loop. Raises OSError."""
        out: list[tuple[int, str | None]] = []
        for st in states:
            try:
                tail = transcript.read_tail(self.state_dir / st.rel_path)
            except FileNotFoundError:
                out.append((0, None))
                continue
            out.append((tail.size, tail.last_entry_id))
        return out

    def set_tails(self, states: list[SessionState], tails: list[tuple[int, str | None]]) -> None:
        """Take tails read by `read_tails` (event loop), for the sessions still not loaded: one
        the committer loaded meanwhile may have been written to since."""
        for st, (size, last_entry_id) in zip(states, tails, strict=True):
            if not st.loaded:
                st.size = size
                st.last_entry_id = last_entry_id

    def create_session(
        self,
        agent_id: str,
        session_key: str,
        now: int,
        entry_fields: dict[str, Any],
        predecessor: str | None = None,
    ) -> tuple[SessionState, bytes]:
        """A new session's state and header line (not yet written). Its transcript is being
        created meanwhile (OpenTranscripts.create_ahead): the caller puts the session in a
        batch's `created`, whose write takes the file, or whose failure removes it."""
        sid = new_session_id()
        rel = f"agents/{agent_id}/sessions/{sid}.jsonl"
        entry: dict[str, Any] = {
            "sessionId": sid,
            "sessionFile": f"{self._root}/{rel}",
            "updatedAt": now,
            "sessionStartedAt": now,
            "lastInteractionAt": now,
        }
        entry.update(entry_fields)
        entry.setdefault("compactionCount", 0)
        entry.setdefault("totalTokens", 0)
        entry_of = self.agent(agent_id).entry
        st = SessionState(
            agent_id, session_key, sid, rel, entry_of(entry, session_key), size=0, new=True
        )
        self.files.create_ahead(st)
        cwd = self.workspaces.get(agent_id) or f"{self._root}/workspace"
        return st, transcript.header_line(sid, session_key, now, cwd, predecessor)

    def register(self, st: SessionState) -> None:
        reg = self.agent(st.agent_id)
        reg.sessions[st.session_key] = st
        self.by_id[st.session_id] = st
        reg.changed(st.session_key)

    def add_line(self, batch: Batch, st: SessionState, data: bytes, entry_id: str | None) -> int:
        """Queue one line for `st` and advance its writer position; return the line's offset."""
        t = batch.touched.get(id(st))
        if t is None:
            t = batch.touched[id(st)] = (st, st.size, [])
        t[2].append(data)
        start = st.size
        st.size = start + len(data) + 1
        if entry_id is not None:
            st.last_entry_id = entry_id
        batch.journal.append(b"T\t%s\t%d\t%s\n" % (st.rel_path.encode(), start, data))
        return start

    def write_batch(self, batch: Batch) -> None:
        """Journal a batch and sync it, then write its lines to their transcripts (worker thread).

        The journal comes first: a line may only reach a transcript once the journal holds it,
        so that whatever a crash leaves in a transcript is also known to replay (and its message
        id to the idempotency index): a retry can then never store a message twice.

        Errors (OSError is raised; nothing in the batch may be acknowledged):
        - writing the journal fails (ENOSPC, EIO): the frame is cut off again, no garbage stays;
        - the journal's sync fails: the store is marked broken and takes no more writes (a failed
          fsync is never retried: the kernel may have dropped the pages);
        - a transcript write (or open) fails after the sync (ENOSPC, EMFILE): the batch is
          taken back everywhere (`_take_back`) and the store goes on; if that fails too, the
          store is marked broken (the journal still holds the batch, which a restart replays).
        """
        journal_size = self.journal.size
        failpoint("append.before_journal_write")
        try:
            self.journal.append(batch.journal)
        except OSError:
            self._undo_journal(journal_size)
            raise
        failpoint("append.after_journal_write")
        try:
            self.journal.sync()
        except OSError as e:
            self.broken = f"journal sync failed: {os_reason(e)}"
            self._undo_journal(journal_size)
            raise
        failpoint("append.after_journal_sync")
        written: list[tuple[int, int]] = []
        created = {id(st) for st in batch.created}
        try:
            for st, before, lines in batch.touched.values():
                fd = self.files.fd(st, new=before == 0 and id(st) in created)
                written.append((fd, before))
                write_all(fd, b"\n".join(lines) + b"\n")
            self.files.written()
        except OSError as e:
            self._take_back(written, journal_size, e)
            raise
        failpoint("append.after_transcript_write")

    def _take_back(self, written: list[tuple[int, int]], journal_size: int, e: OSError) -> None:
        """Remove a batch whose transcript write failed from the transcripts and the journal.

        The transcripts are cut back and synced before the journal frame goes: a crash in
        between must never leave a line in a transcript that replay (and so the idempotency
        index) does not know, or a retry would store its message twice. Every sync here is a
        new one (nothing is retried); if any step fails, the store stops taking writes.
        """
        try:
            for fd, size in written:
                fileio.ftruncate(fd, size)
                fileio.fdatasync(fd)
            self.journal.truncate_to(journal_size)
            self.journal.sync()
            self.files.taken_back()  # new transcripts, empty again: their sessions are forgotten
        except OSError as undo:
            self.broken = (
                f"transcript write failed: {os_reason(e)}, and taking the batch back failed: "
                f"{os_reason(undo)}; a restart replays it"
            )

    def _undo_journal(self, journal_size: int) -> None:
        """Cut an unacknowledged frame off the journal again (no garbage left behind)."""
        try:
            self.journal.truncate_to(journal_size)
        except OSError as e:
            log.error("journal.undo_failed", error=str(e))

    def apply(self, batch: Batch) -> None:
        """After a successful write: remember what the next checkpoint must sync (event loop)."""
        for st, _before, _lines in batch.touched.values():
            self.written_since_switch.add(st.rel_path)
            self.index_touched.add(st.rel_path)
        for st in batch.created:
            self.new_dirs.add(st.rel_path.rpartition("/")[0])

    def take_index_touched(self) -> set[str]:
        """The transcripts written since the last call (the search index reads just those)."""
        paths, self.index_touched = self.index_touched, set()
        return paths

    def fail(self, batch: Batch) -> None:
        """After a failed (or abandoned) write: nothing of the batch was acknowledged. Touched
        sessions re-read their tails before their next write; new sessions are forgotten, and
        sessions the batch closed are active again (their closing entry was never written).
        Call it once per batch: called again after a newer batch reloaded and advanced the same
        sessions, it would unload them under that batch (daemon/committer.py `voided`)."""
        for st, _before, _lines in batch.touched.values():
            st.size = -1
            st.last_entry_id = None
        for st in batch.created:
            reg = self.agents.get(st.agent_id)
            if reg is not None and reg.sessions.get(st.session_key) is st:
                del reg.sessions[st.session_key]
            if self.by_id.get(st.session_id) is st:
                del self.by_id[st.session_id]
            self.files.release(st)
        for c in batch.closing:
            old = c.state
            reg = self.agents[old.agent_id]
            reg.sessions.setdefault(old.session_key, old)
            reg.changed(old.session_key)
            self.by_id[old.session_id] = old
            pending = self.archived_by_id.get(old.session_id)
            if pending is not None and pending.record is None:
                del self.archived_by_id[old.session_id]
                with contextlib.suppress(ValueError):
                    self.archives[old.agent_id].remove(pending)

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def switch_journal(self) -> tuple[set[str], set[str]]:
        """Start a new journal generation (between batches: on the event loop when the journal
        is `ready`, which takes no I/O, else in a worker thread) and return what the checkpoint
        must sync: transcripts written before the switch and folders with new files."""
        self.journal.switch()
        paths, dirs = self.written_since_switch, self.new_dirs
        self.written_since_switch, self.new_dirs = set(), set()
        return paths, dirs

    def checkpoint_sync(
        self,
        paths: set[str],
        dirs: set[str],
        registries: list[tuple[AgentRegistry, RegistryWrite]],
        dedup: list[tuple[str, Snapshot]],
    ) -> None:
        """Sync transcripts and folders, write registries and id logs, then make the journal
        file the switch freed ready for the next switch (worker thread, concurrent with
        batches). Raises OSError: SyncFailed when a sync failed (the caller marks the store
        broken), another OSError when a step may simply be tried again (ENOSPC, EMFILE).

        The registries' and id logs' bytes are written before the transcripts' sync (new
        sessions.json into its temporary file, id lines appended), so that when that sync is a
        syncfs it makes them durable too: each then skips its own flush (an fsync or fdatasync,
        which the journal's fdatasync of a batch would queue behind), and new folders need no
        fsync either. Renames come after the sync, as in `atomic_write`: a power cut before it
        leaves the old sessions.json (and its log) whole, and the journal file that covers
        them is reused only by `prepare_next`, last."""
        staged = self._stage(registries, dedup)
        try:
            covered = self._sync_paths(paths)
            for d in sorted(dirs, key=len):
                if not covered or self._device(d) not in covered:
                    fsync_dir(self.state_dir / d)
            failpoint("checkpoint.after_sync")
            while staged:
                staged[0].finish(covered)
                staged.pop(0)
        except BaseException:
            for s in staged:
                s.discard()  # our temporary files only
            raise
        # Last: until the checkpoint is complete, the freed file is still needed (invariant 2).
        self.journal.prepare_next()

    def _stage(
        self,
        registries: list[tuple[AgentRegistry, RegistryWrite]],
        dedup: list[tuple[str, Snapshot]],
    ) -> list[Staged]:
        """Write the registries' and id logs' bytes, not yet synced (`checkpoint_sync`)."""
        staged: list[Staged] = []
        try:
            for reg, w in registries:
                staged.append(reg.stage(w))
            staged.extend(self.dedup.stage(dedup))
        except BaseException:
            for s in staged:
                s.discard()
            raise
        return staged

    def _device(self, rel: str) -> int | None:
        try:
            return os.stat(self.state_dir / rel).st_dev
        except FileNotFoundError:
            return None

    def _sync_paths(self, paths: set[str]) -> frozenset[int]:
        """Make the given transcripts durable: one syncfs per file system when there are many
        (a fsync per file would cost one disk flush each), else one fdatasync per file. Returns
        the devices a syncfs covered (empty when synced file by file): everything written on
        them before the call is durable, folders included."""
        folders = {r.rpartition("/")[0] for r in paths}
        if len(paths) > SYNCFS_ABOVE:
            devices: dict[int, Path] = {}
            for d in folders:
                try:
                    devices.setdefault(os.stat(self.state_dir / d).st_dev, self.state_dir / d)
                except FileNotFoundError:
                    continue
            if all(sync_filesystem(folder) for folder in devices.values()):
                return frozenset(devices)
        for rel in paths:
            try:
                fd = fileio.open(self.state_dir / rel, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fileio.fdatasync(fd)
            finally:
                fileio.close(fd)
        for d in folders:
            fsync_dir(self.state_dir / d)
        return frozenset()

    def dirty_registries(
        self, unwritten: Iterable[Batch] = (), *, final: bool = False
    ) -> list[tuple[AgentRegistry, RegistryWrite]]:
        """What each changed registry writes at this checkpoint, as of the batches written so
        far (event loop; `plan_writes` says how batches prepared but not yet written are left
        out). Costs what changed, except when sessions.json is rewritten whole."""
        batches = list(unwritten)
        created = [st for b in batches for st in b.created]
        closed = [c.state for b in batches for c in b.closing]
        return plan_writes(self.agents.values(), created, closed, self.registry_policy, final=final)

    def close(self) -> None:
        self.files.close()
        self.journal.close()
        for reg in self.agents.values():
            reg.close()

    def check_writable(self) -> None:
        if self.broken is not None:
            hint = "nothing was stored, retry later" if self.recoverable else "restart the daemon"
            raise storage_unavailable(self.broken, hint=hint)


def write_all_at_end(fd: int, data: bytes) -> None:
    os.lseek(fd, 0, os.SEEK_END)
    write_all(fd, data)


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) else None

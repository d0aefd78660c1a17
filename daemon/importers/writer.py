"""Carrying out an import plan in a state folder: verified writes, never an overwrite.

Ownership and order, per agent: transcripts are written to a temporary name in their final
folder, synced, re-read and checked against the plan (size, sha256, entry and message counts),
then linked into place (a link fails rather than replace a file that appeared meanwhile).
`sessions.json` is rewritten (atomically) only after every transcript it names is in place, and
`archive/index.jsonl` lines are appended after their files, so a crash part-way leaves nothing
that points at a missing file, and a re-run completes the rest.

A re-run never duplicates: a session counts as already present when the state folder holds a
transcript with its id whose content begins with the bytes the import would write (the daemon
may have appended to it since), in `sessions/` or in `archive/`.

The caller holds the state folder's lock; with `dry_run` nothing is written at all.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from daemon.core.ids import now_ms
from daemon.importers.events import describe, file_chunks
from daemon.importers.plan import (
    Outcome,
    Plan,
    PlannedMemory,
    PlannedMissing,
    PlannedTranscript,
    Problem,
    Progress,
    Report,
)
from daemon.store.archive import (
    ARCHIVE_DIR,
    MISSING_TRANSCRIPT,
    ArchiveRecord,
    append_index,
    read_index,
)
from daemon.store.fsutil import FILE_MODE, atomic_write, ensure_dir, fsync_dir, write_all
from daemon.store.registry import SESSIONS_JSON, session_file_name


class VerifyError(Exception):
    """What was written does not match what was read; the written file was removed."""


def starts_with(path: Path, size: int, sha256: str) -> bool | None:
    """Whether `path` begins with the `size` bytes hashing to `sha256` (None: no such file).

    A `.gz` file (compressed later by the retention sweep) is compared by its content.
    """
    opener: Callable[[Path], BinaryIO] = _open_gz if path.name.endswith(".gz") else _open
    try:
        f = opener(path)
    except FileNotFoundError:
        return None
    with f:
        h = hashlib.sha256()
        left = size
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                return False
            h.update(chunk)
            left -= len(chunk)
        return h.hexdigest() == sha256


def _open(path: Path) -> BinaryIO:
    return open(path, "rb")


def _open_gz(path: Path) -> BinaryIO:
    return cast(BinaryIO, gzip.open(path, "rb"))


def write_verified(dest: Path, t: PlannedTranscript) -> None:
    """Write a planned transcript at `dest` (mode 0600), verified, without replacing anything.

    Raises VerifyError on a mismatch and OSError on a disk error; the temporary file is ours
    and is removed in both cases. `dest` appears only once its content is synced and checked.
    """
    ensure_dir(dest.parent)
    tmp = dest.with_name(f".{dest.name}.import-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            for chunk in t.content.produce():
                write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        got = describe(file_chunks(tmp), byte_copy=t.content.byte_copy, produce=lambda: iter(()))
        want = t.content
        if (got.size, got.sha256) != (want.size, want.sha256):
            raise VerifyError(
                f"written copy differs from the source: {got.size} bytes sha256 {got.sha256[:12]}"
                f", expected {want.size} bytes sha256 {want.sha256[:12]}"
            )
        if (got.entries, got.messages) != (want.entries, want.messages):
            raise VerifyError(
                f"written copy has {got.entries} entries ({got.messages} messages), "
                f"the source {want.entries} ({want.messages})"
            )
        if t.mtime_ns is not None:
            os.utime(tmp, ns=(t.mtime_ns, t.mtime_ns))
        os.link(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(dest.parent)


def copy_memory(dest: Path, m: PlannedMemory) -> None:
    """Copy one memory file byte for byte (mode 0600, mtime kept); same guarantees as above."""
    ensure_dir(dest.parent)
    data = m.source.read_bytes()
    if hashlib.sha256(data).hexdigest() != m.sha256:
        raise VerifyError("the source file changed since it was read")
    tmp = dest.with_name(f".{dest.name}.import-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if hashlib.sha256(tmp.read_bytes()).hexdigest() != m.sha256:
            raise VerifyError("written copy differs from the source")
        st = m.source.stat()
        os.utime(tmp, ns=(st.st_mtime_ns, st.st_mtime_ns))
        os.link(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(dest.parent)


class AgentTarget:
    """One agent's sessions folder in the state folder: what is there, and what is added."""

    def __init__(self, state_dir: Path, agent_id: str, report: Report, dry_run: bool) -> None:
        self.state_dir = state_dir
        self.agent_id = agent_id
        self.folder = state_dir / "agents" / agent_id / "sessions"
        self.report = report
        self.dry_run = dry_run
        self.registry: dict[str, Any] = {}
        self.registry_ok = True
        self.new_entries: dict[str, dict[str, Any]] = {}
        self.index = read_index(self.folder)
        self.new_records: list[ArchiveRecord] = []
        path = self.folder / SESSIONS_JSON
        try:
            doc = orjson.loads(path.read_bytes())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            self.registry = doc
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            self.registry_ok = False
            report.problems.append(
                Problem(str(path), f"target registry unreadable ({e}); no session registered")
            )

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.state_dir))

    # -- presence --------------------------------------------------------------------------

    def archived_copy(self, t: PlannedTranscript) -> bool:
        """Whether archive/ already holds this session (by id, with the same content)."""
        for r in self.index:
            if r.sessionId != t.session_id:
                continue
            if r.sha256 == t.content.sha256:
                return True
            path = self.folder / ARCHIVE_DIR / r.file
            if starts_with(path, t.content.size, t.content.sha256):
                return True
        return any(
            r.sessionId == t.session_id and r.sha256 == t.content.sha256 for r in self.new_records
        )

    # -- actives ---------------------------------------------------------------------------

    def add_active(self, t: PlannedTranscript) -> tuple[Outcome, str] | str:
        """Import a live session; returns the outcome and its file, or, when the key already
        has another session here, that session's id (the caller keeps `t` as an archive).

        Raises VerifyError when the target holds something else under this session's name.
        """
        key = t.session_key
        assert key is not None and t.entry is not None
        if not self.registry_ok:
            raise VerifyError("the target registry is unreadable")
        existing = self.registry.get(key)
        if isinstance(existing, dict) and isinstance(existing.get("sessionId"), str):
            if existing["sessionId"] != t.session_id:
                return str(existing["sessionId"])
            path = self.folder / session_file_name(existing, t.session_id)
            held = starts_with(path, t.content.size, t.content.sha256)
            if held:
                return "already-present", self.rel(path)
            if held is False:
                raise VerifyError(
                    f"{self.rel(path)} holds session {t.session_id} with other content; "
                    "not overwritten"
                )
            if self.archived_copy(t):
                return "already-present", self.rel(path)
            return self.write(path, t), self.rel(path)
        for other_key, e in self.registry.items():
            if isinstance(e, dict) and e.get("sessionId") == t.session_id:
                raise VerifyError(
                    f"session id {t.session_id} is already registered for {other_key!r}"
                )
        if self.archived_copy(t):
            return "already-present", self.rel(self.folder / t.name)
        path = self.folder / t.name
        held = starts_with(path, t.content.size, t.content.sha256)
        if held is False:
            raise VerifyError(f"{self.rel(path)} exists with other content; not overwritten")
        outcome: Outcome = "already-present" if held else self.write(path, t)
        entry = dict(t.entry)
        entry["sessionFile"] = str(path)
        self.new_entries[key] = entry
        self.registry[key] = entry
        return outcome, self.rel(path)

    def write(self, path: Path, t: PlannedTranscript) -> Outcome:
        if self.dry_run:
            return "would-import"
        write_verified(path, t)
        return "imported"

    # -- archives --------------------------------------------------------------------------

    def add_archive(self, t: PlannedTranscript) -> tuple[Outcome, str]:
        archive = self.folder / ARCHIVE_DIR
        if self.archived_copy(t):
            return "already-present", self.rel(archive / t.name)
        for e in self.registry.values():
            if isinstance(e, dict) and e.get("sessionId") == t.session_id:
                path = self.folder / session_file_name(e, t.session_id)
                if starts_with(path, t.content.size, t.content.sha256):
                    return "already-present", self.rel(path)
        name, n = t.name, 0
        while True:
            held = starts_with(archive / name, t.content.size, t.content.sha256)
            if held is None or held:
                break
            n += 1
            name = f"{t.name}.{n}"
        path = archive / name
        outcome: Outcome = "already-present" if held else self.write(path, t)
        # The record is added even for a file already there: a crash between file and index.
        self.new_records.append(
            ArchiveRecord(
                sessionId=t.session_id,
                sessionKey=t.session_key,
                agentId=self.agent_id,
                reason=t.reason or "import",
                startedAt=t.content.started_at,
                endedAt=t.content.ended_at,
                archivedAt=t.archived_at if t.archived_at is not None else now_ms(),
                messages=t.content.messages,
                bytes=t.content.size,
                sha256=t.content.sha256,
                predecessor=t.predecessor,
                successor=t.successor,
                file=name,
            )
        )
        return outcome, self.rel(path)

    def add_missing(self, m: PlannedMissing) -> Outcome:
        """Keep a registry row whose transcript is gone as an archived record (no file)."""
        for r in [*self.index, *self.new_records]:
            if r.sessionId == m.session_id:
                return "already-present"
        for e in self.registry.values():
            if isinstance(e, dict) and e.get("sessionId") == m.session_id:
                return "already-present"
        started = m.entry.get("sessionStartedAt")
        ended = next(
            (v for k in ("lastInteractionAt", "updatedAt") if isinstance(v := m.entry.get(k), int)),
            None,
        )
        self.new_records.append(
            ArchiveRecord(
                sessionId=m.session_id,
                sessionKey=m.session_key,
                agentId=self.agent_id,
                reason=MISSING_TRANSCRIPT,
                startedAt=started if isinstance(started, int) else None,
                endedAt=ended,
                archivedAt=ended if ended is not None else now_ms(),
                messages=0,
                bytes=0,
                sha256="",
                predecessor=None,
                successor=None,
                file=m.name,
                registry=m.entry,
            )
        )
        return "would-import" if self.dry_run else "imported"

    # -- finishing -------------------------------------------------------------------------

    def finish(self) -> None:
        """Write the merged registry and the new index lines (after their files are in place)."""
        if self.dry_run:
            return
        if self.new_entries:
            ensure_dir(self.folder)
            atomic_write(
                self.folder / SESSIONS_JSON,
                orjson.dumps(self.registry, option=orjson.OPT_INDENT_2),
            )
        if self.new_records:
            append_index(self.folder, self.new_records)


def apply_plan(
    plan: Plan,
    state_dir: Path,
    workspace_of: Callable[[str], Path],
    *,
    dry_run: bool,
    progress: Progress,
) -> Report:
    """Write (or, for a dry run, only check) everything in `plan`; never raises for one item:
    each failure becomes a problem in the report and the rest is imported."""
    report = Report(source=str(plan.source), state_dir=str(state_dir), dry_run=dry_run)
    report.eras = sorted(plan.eras)
    report.agents = list(plan.agents)
    report.problems.extend(plan.problems)
    report.skipped.extend(plan.skipped)
    report.notes.extend(plan.notes)
    if not dry_run:
        ensure_dir(state_dir)
    total = len(plan.transcripts)
    done = 0
    for agent_id in plan.agents:
        mine = [t for t in plan.transcripts if t.agent_id == agent_id]
        missing = [m for m in plan.missing if m.agent_id == agent_id]
        if not mine and not missing:
            continue
        target = AgentTarget(state_dir, agent_id, report, dry_run)
        demoted: list[PlannedTranscript] = []
        for t in [t for t in mine if t.active]:
            done += 1
            progress.show(f"[{done}/{total}] {agent_id} {t.session_key}")
            try:
                result = target.add_active(t)
            except (OSError, VerifyError) as e:
                _failed(report, t, str(e))
                continue
            if isinstance(result, str):
                why = f"{t.session_key} already has session {result} here; kept as an archive"
                demoted.append(_as_archive(t, why))
                continue
            _item(report, t, *result)
        for t in [t for t in mine if not t.active] + demoted:
            done += 1
            progress.show(f"[{done}/{total}] {agent_id} archive {t.session_id}")
            try:
                outcome, where = target.add_archive(t)
            except (OSError, VerifyError) as e:
                _failed(report, t, str(e))
                continue
            if any(t is d for d in demoted) and outcome != "already-present":
                report.notes.append(f"{t.session_id}: {t.note}")
            _item(report, t, outcome, where)
        for gone in missing:
            _missing(report, gone, target.add_missing(gone))
        try:
            target.finish()
        except OSError as e:
            report.problems.append(
                Problem(target.rel(target.folder), f"could not write registry/index: {e}")
            )
    for m in plan.memory:
        progress.show(f"memory {m.origin}")
        dest = workspace_of(m.agent_id) / "memory" / m.rel
        _memory(report, m, dest, dry_run)
    for path, (size, mtime) in sorted(plan.read_files.items()):
        try:
            st = path.stat()
            changed = (st.st_size, st.st_mtime_ns) != (size, mtime)
        except OSError:
            changed = True
        if changed:
            report.problems.append(
                Problem(str(path), "the source changed during the import (is OpenClaw running?)")
            )
    progress.done()
    return report


def _as_archive(t: PlannedTranscript, why: str) -> PlannedTranscript:
    from dataclasses import replace

    return replace(t, active=False, entry=None, reason="import", note=why)


def _memory(report: Report, m: PlannedMemory, dest: Path, dry_run: bool) -> None:
    item: dict[str, Any] = {
        "kind": "memory",
        "agentId": m.agent_id,
        "source": m.origin,
        "file": str(dest),
        "bytes": m.size,
        "sha256": m.sha256,
    }
    try:
        if dest.exists():
            if hashlib.sha256(dest.read_bytes()).hexdigest() != m.sha256:
                raise VerifyError(f"{dest} exists with other content; not overwritten")
            item["outcome"] = "already-present"
            report.already_present.memoryFiles += 1
        else:
            if not dry_run:
                copy_memory(dest, m)
            item["outcome"] = "would-import" if dry_run else "imported"
            report.imported.memoryFiles += 1
    except (OSError, VerifyError) as e:
        item["outcome"] = "failed"
        report.problems.append(Problem(m.origin, f"not imported: {e}"))
    report.items.append(item)


def _item(report: Report, t: PlannedTranscript, outcome: Outcome, where: str) -> None:
    report.count(t, outcome)
    report.items.append(
        {
            "kind": "session" if t.active else "archive",
            "agentId": t.agent_id,
            "sessionKey": t.session_key,
            "sessionId": t.session_id,
            "reason": t.reason,
            "source": t.origin,
            "file": where,
            "messages": t.content.messages,
            "entries": t.content.entries,
            "bytes": t.content.size,
            "sha256": t.content.sha256,
            "verifiedBy": "sha256" if t.content.byte_copy else "entry count and sha256",
            "predecessor": t.predecessor,
            "successor": t.successor,
            "note": t.note,
            "outcome": outcome,
        }
    )


def _missing(report: Report, m: PlannedMissing, outcome: Outcome) -> None:
    (
        report.already_present if outcome == "already-present" else report.imported
    ).missingTranscripts += 1
    report.warnings.append(
        Problem(
            m.origin,
            f"transcript {m.name} is missing; the registry row is kept as an archived record "
            f"(reason {MISSING_TRANSCRIPT})",
        )
    )
    report.items.append(
        {
            "kind": MISSING_TRANSCRIPT,
            "agentId": m.agent_id,
            "sessionKey": m.session_key,
            "sessionId": m.session_id,
            "reason": MISSING_TRANSCRIPT,
            "source": m.origin,
            "file": m.name,
            "messages": 0,
            "outcome": outcome,
        }
    )


def _failed(report: Report, t: PlannedTranscript, why: str) -> None:
    report.problems.append(Problem(t.origin, f"not imported: {why}"))
    _item(report, t, "failed", "")

"""The retention sweep (SPEC 5): old archives and finished backups are compressed, never deleted.

    agents/<a>/sessions/archive/<file>        -> archive/<file>.gz   (archivedAt older than
                                                 retention.compressAfterDays)
    <backup>/<sessionId>/history.jsonl        -> <backup>/archive/<sessionId>/history.jsonl.gz
                                                 (session ended, mirror unchanged for
                                                 sessions.backup.retention_days); the emptied
                                                 <backup>/<sessionId>/ folder goes too (only
                                                 when empty: never a file)

Order of one compression, so that a crash at any point leaves a complete copy in place:
1. write `<dest>.gz` under a temporary name in its final folder and fsync it;
2. decompress the temporary file and compare its sha256 with the original's (a mismatch removes
   the temporary file, ours, and leaves the original alone);
3. for an archive, append an index line naming the `.gz` (readers that find no `.gz` yet fall
   back to the plain file: `archive.locate_transcript`);
4. rename the temporary file to its final name (never over an existing file) and fsync the folder;
5. only then remove the original (the one removal sessiond ever makes of user data, and the delete
   guard checks the compressed copy itself before it allows it) and fsync the folder.
A sweep that finds both a `.gz` its index names and the plain original (a crash between 4 and 5)
verifies the pair again and finishes step 5.

The sweep runs as a scheduled job in the daemon (daily, and once after downtime) and as
`sessiond retention [--dry-run]` on a stopped daemon's folder.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from daemon import backup
from daemon.core.ids import now_ms
from daemon.errors import os_reason
from daemon.failpoints import failpoint
from daemon.guard import BACKUP_MARKER
from daemon.store import archive
from daemon.store import backup as mirror_files
from daemon.store.archive import ArchiveRecord
from daemon.store.fsutil import FILE_MODE, ensure_dir, fsync_dir

if TYPE_CHECKING:
    from daemon.backup import Mirror
    from daemon.pipeline import Pipeline

log = structlog.get_logger("daemon.retention")

DAY_MS = 86_400_000
RUN_BUDGET_SECONDS = 60.0  # one scheduled run; what is left is done by the next (hourly) one
CHUNK = 1 << 20
_OUR_TEMP = re.compile(r"^\..+\.gz\.tmp-(\d+)$")


class VerifyFailed(Exception):
    """A compressed copy does not decompress to the original's bytes; the original stays."""


@dataclass(frozen=True, slots=True)
class ArchiveItem:
    """An archived transcript to compress, or (`finish`) whose verified `.gz` is already in
    place and whose original is still there."""

    folder: Path  # the agent's sessions folder
    record: ArchiveRecord  # the session's latest index line
    finish: bool = False

    @property
    def plain(self) -> Path:
        name = self.record.file.removesuffix(".gz")
        return self.folder / archive.ARCHIVE_DIR / name

    @property
    def bytes(self) -> int:
        return self.record.bytes


@dataclass(frozen=True, slots=True)
class BackupItem:
    session_id: str
    path: Path  # <backup>/<sessionId>/history.jsonl
    bytes: int


@dataclass(slots=True)
class Plan:
    archives: list[ArchiveItem] = field(default_factory=list)
    backups: list[BackupItem] = field(default_factory=list)
    stale_temps: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "archives": [
                {"sessionId": a.record.sessionId, "file": a.record.file, "finish": a.finish}
                for a in self.archives
            ],
            "backups": [b.session_id for b in self.backups],
            "staleTemporaryFiles": [str(p) for p in self.stale_temps],
        }


@dataclass(slots=True)
class SweepResult:
    archives: int = 0
    backups: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "archivesCompressed": self.archives,
            "backupsCompressed": self.backups,
            "bytesBefore": self.bytes_before,
            "bytesAfter": self.bytes_after,
            "failed": self.failed,
        }


# ---------------------------------------------------------------------------------------------
# Planning (reads only)


def plan(
    state_dir: Path,
    backup_root: Path | None,
    *,
    compress_after_days: int,
    retention_days: int,
    now_ms: int,
    active: set[str],
    busy: Callable[[str], bool] = lambda _sid: False,
) -> Plan:
    """What a sweep would do. `active` are session ids still in a registry (their mirrors grow);
    `busy` says which mirrors the running daemon still writes."""
    out = Plan()
    archive_cutoff = now_ms - compress_after_days * DAY_MS
    agents = state_dir / "agents"
    for agent in sorted(os.scandir(agents), key=lambda e: e.name) if agents.is_dir() else []:
        folder = Path(agent.path) / "sessions"
        arch = folder / archive.ARCHIVE_DIR
        if not arch.is_dir():
            continue
        out.stale_temps += _stale_temps(arch)
        latest: dict[str, ArchiveRecord] = {}
        for rec in archive.read_index(folder):
            latest[rec.sessionId] = rec  # a later line for a session wins
        for rec in latest.values():
            plain = arch / rec.file.removesuffix(".gz")
            if rec.file.endswith(".gz"):
                if plain.is_file() and (arch / rec.file).is_file():
                    out.archives.append(ArchiveItem(folder, rec, finish=True))
                elif plain.is_file():
                    out.archives.append(ArchiveItem(folder, rec))  # crashed before the rename
            elif rec.archivedAt <= archive_cutoff and plain.is_file():
                out.archives.append(ArchiveItem(folder, rec))
    if backup_root is not None and (backup_root / BACKUP_MARKER).is_file():
        backup_cutoff = now_ms / 1000 - retention_days * 86_400
        for sid in mirror_files.mirrored_sessions(backup_root):
            live = mirror_files.live_path(backup_root, sid)
            try:
                st = live.stat()
            except FileNotFoundError:
                continue
            if sid in active or busy(sid) or st.st_mtime > backup_cutoff or st.st_size == 0:
                continue
            out.backups.append(BackupItem(sid, live, st.st_size))
        arch = backup_root / mirror_files.ARCHIVE
        if arch.is_dir():
            for e in os.scandir(arch):
                if e.is_dir():
                    out.stale_temps += _stale_temps(Path(e.path))
    return out


def _stale_temps(folder: Path) -> list[Path]:
    """Temporary files of a sweep that crashed (ours: never the only copy of anything)."""
    out = []
    for e in os.scandir(folder):
        m = _OUR_TEMP.match(e.name)
        if m is not None and int(m.group(1)) != os.getpid():
            out.append(Path(e.path))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Verified compression (worker thread or command line)


def sha256_file(path: Path, *, gz: bool = False) -> tuple[str, int]:
    """sha256 and size of a file's content (decompressed for `gz`)."""
    h = hashlib.sha256()
    size = 0
    f = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115
    with f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def write_verified_gz(src: Path, dest: Path) -> tuple[Path, str, int]:
    """Compress `src` into a temporary file beside `dest`, fsync it, decompress it and compare.

    Returns (temporary path, sha256, size) of the original's content. Raises VerifyFailed or
    OSError; the temporary file is ours and is removed then. Nothing else is touched.
    """
    ensure_dir(dest.parent)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as f, open(tmp, "wb", opener=_private) as out:
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    gz.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        want = h.hexdigest()
        if sha256_file(tmp, gz=True) != (want, size):
            raise VerifyFailed(f"{dest.name}: the compressed copy decompresses to other bytes")
    except (OSError, VerifyFailed, EOFError, gzip.BadGzipFile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp, want, size


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, FILE_MODE)


def _install(tmp: Path, dest: Path) -> None:
    """Rename the verified temporary file to its final name, never over an existing file."""
    if dest.exists():
        os.unlink(tmp)
        raise FileExistsError(17, "will not replace an existing file", str(dest))
    os.rename(tmp, dest)
    fsync_dir(dest.parent)


def _remove_original(original: Path, gz: Path, sha: str) -> None:
    """Remove `original` once `gz` is known to hold exactly its bytes; fsync the folder."""
    if sha256_file(gz, gz=True)[0] != sha or sha256_file(original)[0] != sha:
        raise VerifyFailed(f"{gz.name} does not hold exactly {original.name}; both are kept")
    os.unlink(original)
    fsync_dir(original.parent)


@dataclass(frozen=True, slots=True)
class Compressed:
    gz: Path
    record: ArchiveRecord | None  # an archive's new index record (None for a backup)


def compress_archive(item: ArchiveItem) -> Compressed:
    """Compress one archived transcript (or finish a crashed compression). Returns the `.gz`
    and the index record naming it. Raises OSError or VerifyFailed with the original in place."""
    rec = item.record
    plain = item.plain
    gz = plain.with_name(plain.name + ".gz")
    new = replace(rec, file=gz.name)
    if gz.is_file():
        sha, _size = sha256_file(plain)
        _remove_original(plain, gz, sha)
        if rec.file != gz.name:
            archive.append_index(item.folder, [new])
        return Compressed(gz, new)
    tmp, sha, _size = write_verified_gz(plain, gz)
    failpoint("compress.temp_synced")
    if rec.sha256 and rec.sha256 != sha:
        os.unlink(tmp)
        raise VerifyFailed(f"{plain.name} no longer matches the sha256 in its index line")
    if rec.file != gz.name:
        archive.append_index(item.folder, [new])
    failpoint("compress.indexed")
    _install(tmp, gz)
    failpoint("compress.installed")
    _remove_original(plain, gz, sha)
    failpoint("compress.original_removed")
    return Compressed(gz, new)


def compress_backup(root: Path, item: BackupItem) -> Compressed:
    """Compress one finished mirror into <backup>/archive/<sessionId>/."""
    name = mirror_files.next_segment_name(root, item.session_id)
    dest = root / mirror_files.ARCHIVE / item.session_id / name
    tmp, sha, _size = write_verified_gz(item.path, dest)
    _install(tmp, dest)
    _remove_original(item.path, dest, sha)
    remove_emptied_folder(item.path.parent)
    return Compressed(dest, None)


def remove_emptied_folder(folder: Path) -> bool:
    """Remove a mirror's `<backup>/<sessionId>/` folder if it is empty now (rmdir never removes
    a file: a folder with anything in it stays, such as the session's state record). Returns
    whether it went."""
    try:
        with os.scandir(folder) as it:
            if any(True for _ in it):
                return False  # not even an attempt: the delete guard audits every rmdir
        os.rmdir(folder)
    except OSError:
        return False
    fsync_dir(folder.parent)
    return True


def emptied_mirror_folders(root: Path | None) -> list[Path]:
    """Empty `<backup>/<sessionId>/` folders whose mirror is compressed (left by older sweeps)."""
    if root is None or not (root / BACKUP_MARKER).is_file():
        return []
    out = []
    with os.scandir(root) as it:
        for e in it:
            if e.name == mirror_files.ARCHIVE or not e.is_dir(follow_symlinks=False):
                continue
            if not os.listdir(e.path) and mirror_files.compressed_segments(root, e.name):
                out.append(Path(e.path))
    return out


def remove_stale_temp(path: Path) -> None:
    """Remove a temporary file a crashed sweep left (ours; it never was the only copy)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def attempt(
    out: SweepResult, work: Callable[[], Compressed], size: int, what: str
) -> Compressed | None:
    """Run one compression, counting it; a failure is logged and counted, never raised."""
    try:
        c = work()
    except (OSError, VerifyFailed, EOFError, gzip.BadGzipFile) as e:
        out.failed.append(f"{what}: {e}")
        log.error("retention.failed", target=what, error=str(e))
        return None
    if c.record is not None:
        out.archives += 1
    else:
        out.backups += 1
    out.bytes_before += size
    with contextlib.suppress(OSError):
        out.bytes_after += c.gz.stat().st_size
    return c


def execute(
    p: Plan,
    backup_root: Path | None,
    progress: Callable[[int, int], None] = lambda _d, _t: None,
) -> SweepResult:
    """Carry out a plan (the command line; the caller holds the state folder's lock)."""
    out = SweepResult()
    total = len(p.archives) + len(p.backups)
    done = 0
    for path in p.stale_temps:
        remove_stale_temp(path)
    for a in p.archives:
        attempt(out, partial(compress_archive, a), a.bytes, a.record.sessionId)
        done += 1
        progress(done, total)
    for b in p.backups:
        assert backup_root is not None
        attempt(out, partial(compress_backup, backup_root, b), b.bytes, b.session_id)
        done += 1
        progress(done, total)
    try:
        for folder in emptied_mirror_folders(backup_root):
            remove_emptied_folder(folder)
    except OSError as e:
        out.failed.append(f"empty mirror folders: {os_reason(e)}")
    return out


# ---------------------------------------------------------------------------------------------
# The scheduled job in the daemon


class Retention:
    """The daemon's retention job: the same sweep, in worker threads, coordinated with the mirror
    (a mirror still being written is never compressed) and the store (readers see the `.gz` at
    once). Config comes from the pipeline, so a reload applies to the next run."""

    def __init__(self, pipeline: Pipeline, mirror: Mirror | None) -> None:
        self.pipeline = pipeline
        self.mirror = mirror

    async def run_job(self, name: str) -> dict[str, Any]:
        started = time.monotonic()
        store = self.pipeline.store
        cfg = self.pipeline.config
        root = backup.backup_root(cfg, store.state_dir)
        mirror = self.mirror
        busy = mirror.busy if mirror is not None else (lambda _sid: False)
        active = set(store.by_id)
        out = SweepResult()
        try:
            p = await anyio.to_thread.run_sync(
                lambda: plan(
                    store.state_dir,
                    root,
                    compress_after_days=cfg.retention.compressAfterDays,
                    retention_days=cfg.sessions.backup.retention_days,
                    now_ms=now_ms(),
                    active=active,
                    busy=busy,
                )
            )
        except OSError as e:
            # The folder could not be listed: logged, and the next run tries again.
            log.error("retention.failed", target="plan", error=os_reason(e))
            out.failed.append(f"plan: {os_reason(e)}")
            p = Plan()
        for path in p.stale_temps:
            await anyio.to_thread.run_sync(remove_stale_temp, path)
        left = 0
        for a in p.archives:
            if time.monotonic() - started > RUN_BUDGET_SECONDS:
                left += 1
                continue
            c = await anyio.to_thread.run_sync(
                attempt, out, partial(compress_archive, a), a.bytes, a.record.sessionId
            )
            if c is not None and c.record is not None:
                store.archived_done(c.record)  # readers go to the .gz from now on
        for b in p.backups:
            if time.monotonic() - started > RUN_BUDGET_SECONDS:
                left += 1
                continue
            work = partial(compress_backup, root, b)
            if mirror is None:
                await anyio.to_thread.run_sync(attempt, out, work, b.bytes, b.session_id)
                continue
            async with mirror.lock:
                # Re-checked under the lock: a session may have been written to meanwhile.
                if mirror.busy(b.session_id) or b.session_id in store.by_id:
                    continue
                await anyio.to_thread.run_sync(attempt, out, work, b.bytes, b.session_id)
        await self._tidy(root)
        info = {
            "job": name,
            **out.to_json(),
            "leftForNextRun": left,
            "seconds": round(time.monotonic() - started, 4),
        }
        if out.archives or out.backups or out.failed or left:
            log.info("job.run", **info)
        else:
            log.debug("job.run", **info)  # the hourly run says nothing when it did nothing
        return info

    async def _tidy(self, root: Path | None) -> None:
        """Remove mirror folders that older sweeps emptied (under the mirror's lock, so a round
        that is about to write into one finds it, or makes it again)."""
        try:
            folders = await anyio.to_thread.run_sync(emptied_mirror_folders, root)
        except OSError as e:
            log.warning("retention.failed", target="empty mirror folders", error=str(e))
            return
        if not folders:
            return
        lock = self.mirror.lock if self.mirror is not None else anyio.Lock()
        async with lock:
            for folder in folders:
                await anyio.to_thread.run_sync(remove_emptied_folder, folder)

"""The object-storage backup (docs/backup.md, "Object storage"): the local mirror, uploaded.

The local mirror stays the source (daemon/backup.py writes it); `Uploader` follows it, in rounds,
and copies to the bucket what is new: closed segments of each `history.jsonl` (a segment closes
when it reaches SEGMENT_BYTES, when its oldest byte has waited `segmentSeconds`, when the
session's state record says it is archived, or at a clean stop), each `state.json`, and each
compressed mirror under `archive/`. Every object carries its sha256 (in the key for segments,
in the metadata otherwise), checked by `download`. Nothing in the bucket is ever deleted, and
an object is only ever written again with the same content or, for `state.json`, a newer record.

`download` turns a bucket back into the local mirror's layout, so `backup verify` and `backup
restore` run the folder code on it. The bucket's names: daemon/core/bucket.py.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from daemon.core.bucket import Segment, Target, chain, parse_rel, segment_rel
from daemon.core.ids import now_ms
from daemon.guard import BACKUP_MARKER
from daemon.store.fsutil import atomic_write, ensure_dir

if TYPE_CHECKING:
    from obstore.store import S3Store

log = structlog.get_logger("daemon.remote")

SEGMENT_BYTES = 8 << 20  # a segment closes at this size (and no segment is larger)
ROUND_INTERVAL = 1.0
BACKOFF_MAX = 20.0
SHA_META = "sha256"
HISTORY = "history.jsonl"


class RemoteError(Exception):
    """The bucket cannot be read, or what it holds does not check out."""


def open_store(target: Target) -> S3Store:
    """An S3 client for the target. Endpoint, region and credentials come from the URL's
    options, else the environment (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...), else
    the credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, AWS_PROFILE)."""
    from obstore.store import S3Store

    config: dict[str, Any] = {}
    if target.endpoint:
        config["endpoint"] = target.endpoint
    if target.region:
        config["region"] = target.region
    elif not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        config["region"] = "us-east-1"
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        config.update(_credentials_file())
    endpoint = target.endpoint or os.environ.get("AWS_ENDPOINT_URL") or ""
    return S3Store(
        target.bucket,
        config=config,  # type: ignore[arg-type]
        client_options={
            "allow_http": endpoint.startswith("http://"),
            "connect_timeout": "5s",
            "timeout": "20s",
        },
        # Few retries: an unreachable store should show in `status` within seconds; the
        # uploader's own back-off does the long waiting.
        retry_config={
            "max_retries": 2,
            "backoff": {"init_backoff": timedelta(milliseconds=100)},
            "retry_timeout": timedelta(seconds=10),
        },
    )


def _credentials_file() -> dict[str, str]:
    path = Path(
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"
    ).expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except (OSError, configparser.Error):
        return {}
    profile = os.environ.get("AWS_PROFILE") or "default"
    if not parser.has_section(profile):
        return {}
    sec = parser[profile]
    out = {}
    for ours, theirs in (
        ("access_key_id", "aws_access_key_id"),
        ("secret_access_key", "aws_secret_access_key"),
        ("token", "aws_session_token"),
    ):
        if sec.get(theirs):
            out[ours] = sec[theirs]
    return out


def _list(store: S3Store, target: Target) -> list[dict[str, Any]]:
    import obstore

    prefix = target.prefix + "/" if target.prefix else None
    return [m for batch in obstore.list(store, prefix=prefix) for m in batch]  # type: ignore[misc]


def _put(store: S3Store, target: Target, rel: str, data: bytes, sha: str | None = None) -> None:
    import obstore

    attrs = {SHA_META: sha} if sha else None
    obstore.put(store, target.key(rel), data, attributes=attrs)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# ---------------------------------------------------------------------------------------------
# Upload


@dataclass(slots=True)
class Chain:
    """How far one session's history.jsonl is in the bucket."""

    gen: int = 1
    end: int = 0
    last: Segment | None = None
    ino: int | None = None  # the local file the chain was last checked against
    pending_since: float | None = None


@dataclass(slots=True)
class RoundResult:
    uploaded: int = 0
    lag: int = 0  # objects (closed or not) still to upload


@dataclass(slots=True)
class Uploader:
    """Runs in a worker thread; the bucket's state is loaded once (`load`), then kept."""

    root: Path
    target: Target
    store: S3Store | None = None
    chains: dict[str, Chain] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)  # rel -> md5 of other objects
    loaded: bool = False
    # state.json files as last uploaded (inode, size, mtime): unchanged ones are not read again
    seen: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def load(self) -> None:
        if self.store is None:
            self.store = open_store(self.target)
        chains: dict[str, Chain] = {}
        etags: dict[str, str] = {}
        segments: dict[str, list[Segment]] = {}
        for m in _list(self.store, self.target):
            rel = self.target.rel(m["path"])
            seg = parse_rel(rel)
            if seg is not None:
                segments.setdefault(seg.session_id, []).append(seg)
            else:
                etags[rel] = str(m.get("e_tag") or "").strip('"')
        for sid, segs in segments.items():
            ordered, _gap = chain(segs)
            gen = max(s.gen for s in segs)
            c = chains[sid] = Chain(gen=gen)
            if ordered:
                c.end, c.last = ordered[-1].end, ordered[-1]
        self.chains, self.etags, self.loaded = chains, etags, True

    def round(self, final: bool = False) -> RoundResult:
        """Upload what is due; raises OSError (or obstore's errors) when the bucket fails."""
        if not self.loaded:
            self.load()
        res = RoundResult()
        marker = self.root / BACKUP_MARKER
        if BACKUP_MARKER not in self.etags and marker.is_file():
            self._put_file(BACKUP_MARKER, marker.read_bytes(), res)
        archive = self.root / "archive"
        with contextlib.suppress(FileNotFoundError):
            for d in sorted(archive.iterdir()):
                if not d.is_dir():
                    continue
                for f in sorted(d.iterdir()):
                    rel = f"archive/{d.name}/{f.name}"
                    # Compressed mirrors never change once in place (retention renames them in).
                    due = f.name.endswith(".gz") and not f.name.startswith(".")
                    if due and rel not in self.etags:
                        self._put_file(rel, f.read_bytes(), res)
        now = time.monotonic()
        for d in sorted(self.root.iterdir()):
            if d.name in ("archive",) or d.name.startswith(".") or not d.is_dir():
                continue
            state = d / "state.json"
            try:
                sst = state.stat()
            except FileNotFoundError:
                sst = None
            self._history(d.name, d / HISTORY, now, final or sst is not None, res)
            if sst is not None:
                rel = f"{d.name}/state.json"
                sig = (sst.st_ino, sst.st_size, sst.st_mtime_ns)
                if self.seen.get(rel) == sig:
                    continue
                data = state.read_bytes()
                if self.etags.get(rel) != _md5(data):
                    self._put_file(rel, data, res)
                self.seen[rel] = sig
        return res

    def _put_file(self, rel: str, data: bytes, res: RoundResult) -> None:
        assert self.store is not None
        _put(self.store, self.target, rel, data, _sha(data))
        self.etags[rel] = _md5(data)
        res.uploaded += 1

    def _history(self, sid: str, path: Path, now: float, close: bool, res: RoundResult) -> None:
        assert self.store is not None
        c = self.chains.get(sid)
        try:
            if c is not None and c.pending_since is None:
                # The common case, each round for every session: nothing new since the upload.
                st0 = os.stat(path)
                if st0.st_ino == c.ino and st0.st_size == c.end:
                    return
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            c = self.chains.setdefault(sid, Chain())
            if c.ino != st.st_ino:
                if not self._continues(f, st.st_size, c):
                    # Not what the bucket holds (compressed, begun again, or refilled): a
                    # new generation, uploaded from the start.
                    c.gen, c.end, c.last = (c.gen + 1 if c.last else c.gen), 0, None
                c.ino = st.st_ino
            while st.st_size > c.end:
                f.seek(c.end)
                data = f.read(min(st.st_size - c.end, SEGMENT_BYTES))
                cut = data.rfind(b"\n") + 1  # whole records only (the last may be in writing)
                if not cut:
                    break
                data = data[:cut]
                if c.pending_since is None:
                    c.pending_since = now
                if (
                    len(data) < SEGMENT_BYTES
                    and not close
                    and now - c.pending_since < self.target.segment_seconds
                ):
                    res.lag += 1
                    return
                seg_sha = _sha(data)
                rel = segment_rel(sid, c.gen, c.end, c.end + len(data), seg_sha)
                _put(self.store, self.target, rel, data)
                c.last = parse_rel(rel)
                c.end += len(data)
                c.pending_since = None
                res.uploaded += 1

    def _continues(self, f: Any, size: int, c: Chain) -> bool:
        """Whether the local file still begins with what the bucket holds (its last segment's
        bytes are where they were): a compressed-then-restarted or refilled file does not."""
        if c.last is None:
            return c.end == 0
        if size < c.end:
            return False
        f.seek(c.last.start)
        return bool(_sha(f.read(c.last.end - c.last.start)) == c.last.sha256)


# ---------------------------------------------------------------------------------------------
# Download


@dataclass(slots=True)
class Downloaded:
    sessions: int = 0
    objects: int = 0
    bytes: int = 0


def download(
    target: Target,
    dest: Path,
    *,
    marker: bool,
    store: S3Store | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Downloaded:
    """Write the bucket's mirror into `dest` in the local layout, checking every sha256.
    `marker`: write `sessiond-backup.json` (a mirror a daemon will go on with) or not (a
    temporary copy that may be removed afterwards). Raises RemoteError."""
    import obstore

    try:
        store = store or open_store(target)
        metas = _list(store, target)
    except Exception as e:  # obstore raises its own error classes, OSError among them
        raise RemoteError(f"cannot list {target.url}: {_reason(e)}") from e
    segments: dict[str, list[Segment]] = {}
    others: list[str] = []
    for m in metas:
        rel = target.rel(m["path"])
        seg = parse_rel(rel)
        if seg is not None:
            segments.setdefault(seg.session_id, []).append(seg)
        elif rel == BACKUP_MARKER or rel.endswith("/state.json") or rel.startswith("archive/"):
            others.append(rel)
    if not metas or (BACKUP_MARKER not in others and not segments):
        raise RemoteError(f"{target.url} is not a sessiond backup (no {BACKUP_MARKER})")

    def get(rel: str) -> tuple[bytes, dict[str, str]]:
        try:
            r = obstore.get(store, target.key(rel))
            return bytes(r.bytes()), dict(r.attributes)
        except Exception as e:
            raise RemoteError(f"cannot read {target.key(rel)}: {_reason(e)}") from e

    out = Downloaded()
    ensure_dir(dest)
    total = len(others) + len(segments)
    for rel in sorted(others):
        if rel == BACKUP_MARKER and not marker:
            continue
        data, attrs = get(rel)
        want = attrs.get(SHA_META)
        if want is not None and _sha(data) != want:
            raise RemoteError(f"{target.key(rel)}: content does not match its sha256 {want}")
        path = dest / rel
        ensure_dir(path.parent)
        atomic_write(path, data)
        out.objects += 1
        out.bytes += len(data)
        if progress:
            progress(out.objects, total)
    for sid, segs in sorted(segments.items()):
        ordered, gap = chain(segs)
        if gap is not None or not ordered:
            raise RemoteError(
                f"{target.url}: session {sid}'s history has a gap at byte {gap or 0} "
                f"(generation g{max(s.gen for s in segs):04d})"
            )
        parts = []
        for s in ordered:
            data, _ = get(s.rel)
            if len(data) != s.end - s.start or _sha(data) != s.sha256:
                raise RemoteError(f"{target.key(s.rel)}: content does not match its name")
            parts.append(data)
        path = dest / sid / HISTORY
        ensure_dir(path.parent)
        blob = b"".join(parts)
        atomic_write(path, blob)
        out.sessions += 1
        out.objects += len(parts)
        out.bytes += len(blob)
        if progress:
            progress(len(others) + out.sessions, total)
    return out


def _reason(e: BaseException) -> str:
    # obstore's messages carry a long debug dump after the first line.
    return (str(e).splitlines() or [type(e).__name__])[0]


# ---------------------------------------------------------------------------------------------
# The daemon's task


class RemoteMirror:
    """Uploads the local mirror in rounds (a task beside the mirror's); never raises for the
    bucket's trouble: it reports it in `status` and tries again with a growing pause."""

    def __init__(self, root: Path, target: Target) -> None:
        self.target = target
        self.uploader = Uploader(root, target)
        self.error: str | None = None
        self.lag = 0
        self.last_upload_ms = 0
        self.uploaded = 0
        self._limiter = anyio.CapacityLimiter(1)

    async def run(self, stopping: anyio.Event) -> None:
        log.info("backup.remote_started", target=self.target.url)
        backoff = 0.0
        while not stopping.is_set():
            ok = await self._round(final=False)
            backoff = 0.0 if ok else min(BACKOFF_MAX, max(1.0, backoff * 2))
            with anyio.move_on_after(backoff or ROUND_INTERVAL):
                await stopping.wait()
        # A clean stop closes every open segment (bounded: a dead store must not hold it up).
        with anyio.move_on_after(10.0):
            await self._round(final=True)
        log.info("backup.remote_stopped", target=self.target.url, lagObjects=self.lag)

    async def _round(self, *, final: bool) -> bool:
        try:
            res = await anyio.to_thread.run_sync(
                self.uploader.round, final, limiter=self._limiter, abandon_on_cancel=False
            )
        except Exception as e:  # the bucket's trouble, whatever its class: report, retry
            reason = _reason(e)
            if self.error != reason:
                log.error("backup.remote_degraded", target=self.target.url, error=reason)
            self.error = reason
            self.lag = max(self.lag, 1)  # the round had something to upload
            return False
        if self.error is not None:
            log.warning("backup.remote_recovered", target=self.target.url, was=self.error)
            self.error = None
        self.lag = res.lag
        if res.uploaded:
            self.uploaded += res.uploaded
            self.last_upload_ms = now_ms()
        return True

    def status(self) -> dict[str, Any]:
        if self.error is not None:
            state = "degraded"
        elif not self.uploader.loaded:
            state = "starting"
        else:
            state = "ok"
        return {
            "target": self.target.url,
            "state": state,
            "error": self.error,
            "lagSegments": self.lag,
            "uploaded": self.uploaded,
            "lastUploadAt": self.last_upload_ms or None,
        }

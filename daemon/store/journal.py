"""The shared journal that makes acknowledgements durable with one sync per batch.

Every transcript line and every idempotency record of a batch is written to the journal as well as
to its real file; one fdatasync of the journal then covers the whole batch, whatever number of
sessions it touched. Transcripts are synced later, at a checkpoint, after which the journal's
records are no longer needed. After a crash, start-up replays the journal into the transcripts.

Two journal files take turns (`a.wal`, `b.wal`), so that nothing is ever unlinked:

  invariant 1: a record is acknowledged only after an fdatasync of the file that holds it.
  invariant 2: a journal file is given a new header (made active again) only after the
               checkpoint that switched away from it has synced every transcript line written
               before the switch.
  invariant 3: replay is idempotent: a record whose bytes are already at their offset is skipped.
  invariant 4: the inactive file is made ready (next generation's header, synced) by
               the checkpoint that freed it (`prepare_next`, in the checkpoint's thread), so that
               the next switch is a change of index, with no I/O between two batches. A ready
               file holds only its header (then zeros or older frames, which its salt ends
               replay at) and a generation above the active file's: replay finds nothing in it,
               and records written into it after a switch replay last.

Format: a file is a sequence of frames, one per batch: `B\t<crc32 hex8>\t<length>\n` followed
by `length` bytes of records, one per line, `<kind>\t<a>\t<b>\t<payload>\n`; the CRC covers the
records. Kinds: H (header, first frame of a file: a = generation, b = its salt), T (transcript
line: a = path relative to the state folder, b = byte offset, payload = the line, which holds no
newline).

Salts: a file is reused in place: its new header is written on top of its old frames (when it
is written ahead, see below), or after a truncation that a power cut before the header's sync
may lose. Either way the file's old frames may follow a new header. So every frame after the
header carries a CRC seeded with a salt that the header names (`~` and random hex in its b
field; the seed is the CRC of the header's record): frames written under another header fail
their CRC, and replay stops there. A header whose b is `-` (files written before salts) seeds
nothing.
Idempotency records need no kind of their own: they are rebuilt from the replayed lines'
`origin.messageId`. Replay of a file stops at its first damaged or torn frame: a batch is
acknowledged only after its whole frame is synced, so nothing after that point was.

Written ahead: an fdatasync of a file that grew must also commit the file system's own journal
(the new size, the new blocks), and on ext4 that commit waits for every other file's metadata
and ordered data of the moment: a checkpoint's syncfs, the mirror's files, other programs'.
Overwriting bytes already on disk changes no metadata, so its fdatasync is a data write and a
cache flush (measured here beside a syncfs a second: p50 0.45 against 0.6-1.4 ms, p99 6-8
against 11-12 ms). So `prepare_next` does not truncate the file it makes ready: it keeps its
length and writes zeros beyond it up to about twice what the last generation used (PREWRITE_*),
and that generation's appends overwrite. The salts make whatever follows the last frame (zeros,
older frames) end replay. At start-up (`start_fresh(ahead=START_AHEAD)`) both files are written
ahead too, so a daemon's first generations (a cold start creating every session at once) and
one that was idle before a burst overwrite as well: no file made ready gets less.
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.failpoints import failpoint
from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE, ensure_dir, fsync_dir

log = structlog.get_logger("daemon.store")

NAMES = ("a.wal", "b.wal")
# Zeros written ahead by `prepare_next`: twice what the generation before used, when that was
# more than PREWRITE_FROM (idle and test folders stay small), at least PREWRITE_MIN and at most
# PREWRITE_MAX; a file a burst grew beyond PREWRITE_MAX is cut back to what is written ahead.
PREWRITE_FROM = 64 << 10
PREWRITE_MIN = 1 << 20
PREWRITE_MAX = 64 << 20
# Written ahead into both files at start-up, and the least any file made ready keeps: about two
# seconds of a cold start at 5,000 msgs/s (each new session's header is journaled too).
START_AHEAD = 4 << 20
ZEROS = bytes(1 << 20)
FRAME_START = b"B\t"
HEAD_MAX = 48  # `B\t<crc8>\t<length>\n` is at most 31 bytes for any length below 10^19
READ_CHUNK = 1 << 20  # replay reads a file this much at a time, then four times more, ...


@dataclass(frozen=True, slots=True)
class Record:
    """One journal record as read back at start-up."""

    kind: str
    a: str
    b: str
    payload: bytes


def record(kind: str, a: str, b: str | int, payload: bytes) -> bytes:
    """One record line. `a` and `b` must not contain tabs or newlines, `payload` no newline."""
    return b"%s\t%s\t%s\t%s\n" % (kind.encode(), a.encode(), str(b).encode(), payload)


def frame(records: list[bytes], salt: int = 0) -> bytes:
    """One batch's records, framed with their length and CRC (seeded with the file's salt)."""
    body = b"".join(records)
    return b"B\t%08x\t%d\n%s" % (zlib.crc32(body, salt), len(body), body)


SALTED = "~"  # a header record's b field that begins with this salts its file's later frames


def header(kind: str, a: str) -> tuple[bytes, int]:
    """A file's first frame (a header record of `kind`), with a fresh salt; and that salt."""
    rec = record(kind, a, SALTED + os.urandom(8).hex(), b"")
    return frame([rec]), zlib.crc32(rec)


def salt_of(first: Record) -> int:
    """The salt a file's first record gives the frames after it (0: none, an older file)."""
    if not first.b.startswith(SALTED):
        return 0
    return zlib.crc32(record(first.kind, first.a, first.b, first.payload))


def decode_file(data: bytes, ended: list[bool] | None = None) -> Iterator[Record]:
    """Records of one journal file, in order, stopping at the first damaged or torn frame (or
    the first written under another header: see Salts). `ended` (when given) gets True when
    reading stopped because `data` ended inside a frame: more of the file may hold more."""
    pos = 0
    n = len(data)
    salt: int | None = None  # the first frame is the header: not salted
    while pos < n:
        # Only `B\t` begins a frame, and its head line is short: zeros written ahead (or any
        # damage) end reading here, not at a newline megabytes on.
        if not data.startswith(FRAME_START, pos):
            if ended is not None and FRAME_START.startswith(data[pos:]):
                ended.append(True)
            return
        nl = data.find(b"\n", pos, pos + HEAD_MAX)
        if nl < 0:
            if ended is not None and n - pos < HEAD_MAX:
                ended.append(True)
            return
        head = data[pos:nl].split(b"\t")
        if len(head) != 3 or head[0] != b"B":
            return
        try:
            length = int(head[2])
        except ValueError:
            return
        body = data[nl + 1 : nl + 1 + length]
        if len(body) != length:
            if ended is not None:
                ended.append(True)
            return
        # The CRC as written (`%08x`), byte for byte: "A" for "a" is damage, not the same CRC.
        if head[1] != b"%08x" % zlib.crc32(body, salt or 0):
            return
        pos = nl + 1 + length
        for line in body.split(b"\n")[:-1]:
            parts = line.split(b"\t", 3)
            if len(parts) != 4:
                return
            rec = Record(parts[0].decode(), parts[1].decode(), parts[2].decode(), parts[3])
            if salt is None:
                salt = salt_of(rec)
            yield rec
        if salt is None:  # an empty first frame
            salt = 0


class Journal:
    """The two journal files of a state folder; used from one thread at a time.

    Errors: every method raises OSError as the system reports it; the caller decides (a failed
    sync means the batch is not acknowledged and the store stops taking writes).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths = tuple(folder / n for n in NAMES)
        self.fds: list[int] = []
        self.active = 0
        self.generation = 0
        self.size = 0
        # The inactive file's size when it is ready (invariant 4), else None: switching then
        # truncates it and writes its header first.
        self._ready: int | None = None
        self._salts = [0, 0]  # each file's salt (its header's), for the frames appended to it
        # Each file's length on disk (frames, then zeros or older frames, all written), and where
        # the generation last switched away from ended (what the next one writes ahead from).
        self._lengths = [0, 0]
        self._last_used = 0
        self._least_ahead = 0  # what `start_fresh` wrote ahead: every ready file keeps that much

    def open_and_read(self) -> list[Record]:
        """Open both files and return the records to replay, oldest generation first."""
        ensure_dir(self.folder)
        created = False
        for p in self.paths:
            if not p.exists():
                created = True
            self.fds.append(fileio.open(p, os.O_RDWR | os.O_CREAT, FILE_MODE))
        if created:
            fsync_dir(self.folder)
        files: list[tuple[int, int, list[Record]]] = []
        for i, fd in enumerate(self.fds):
            size = self._lengths[i] = os.fstat(fd).st_size
            records = self._read(fd, size)
            if records and records[0].kind == "H":
                self._salts[i] = salt_of(records[0])
                files.append((int(records[0].a), i, records[1:]))
        files.sort()
        if files:
            self.generation = files[-1][0]
        out: list[Record] = []
        for _gen, _i, recs in files:
            out.extend(recs)
        return out

    @staticmethod
    def _read(fd: int, size: int) -> list[Record]:
        """A file's records, read a chunk at a time: a file written ahead is mostly zeros or
        older frames after its last frame, which need not be read."""
        chunk = READ_CHUNK
        while True:
            data = os.pread(fd, min(size, chunk), 0) if size else b""
            ended: list[bool] = []
            records = list(decode_file(data, ended))
            if not ended or len(data) >= size:
                return records
            chunk *= 4

    def start_fresh(self, ahead: int = 0) -> None:
        """After replay and a full checkpoint: empty both files and begin a new generation;
        the other file is made ready for the first switch. `ahead` (start-up: START_AHEAD)
        bytes are written ahead into both, and every file made ready later keeps at least that
        much; 0 (a clean stop: the next start begins again anyway) writes nothing ahead."""
        other = 1 - self.active
        self._ready = None
        self._last_used = 0
        self._least_ahead = ahead
        fileio.ftruncate(self.fds[other], 0)
        fileio.fsync(self.fds[other])
        self._lengths[other] = 0
        if ahead:
            # The active file keeps its length: what follows its new header is replayed and
            # synced already, and its salt ends replay there (see Salts).
            self.size = self._write_header(self.active, ahead=ahead)
        else:
            self._activate(self.active)
        self.prepare_next()
        if ahead:
            log.debug("journal.written_ahead", bytes=ahead)

    @property
    def ready(self) -> bool:
        """Whether the next `switch` is a mere change of index (no I/O: invariant 4)."""
        return self._ready is not None

    def switch(self) -> None:
        """Make the other file active: the ready one as it is, else truncated with a new
        generation header and synced first.

        A failure before the header is synced leaves the active file as it was (still taking
        appends); the other file was already free to reuse. Raises OSError (SyncFailed when
        the sync failed)."""
        self._last_used = self.size
        self._note_length(self.active, self.size)
        if self._ready is not None:
            self.active, self.size, self._ready = 1 - self.active, self._ready, None
        else:
            self._activate(1 - self.active)
        failpoint("journal.after_switch")

    def prepare_next(self) -> None:
        """Make the inactive file ready for the next switch (invariant 4): only once nothing
        in it is needed any more (invariant 2: the checkpoint that switched away from it has
        synced all it covered). Runs beside appends to the active file (another descriptor).
        Raises OSError (SyncFailed when the sync failed); the file is then not ready."""
        self._ready = None
        index = 1 - self.active
        self._ready = self._write_header(index, ahead=self._ahead())

    def _ahead(self) -> int:
        """How far `prepare_next` writes the file ahead (PREWRITE_*)."""
        used = self._last_used
        if used < PREWRITE_FROM:
            return self._least_ahead
        return max(self._least_ahead, PREWRITE_MIN, min(PREWRITE_MAX, 2 * used))

    def _activate(self, index: int) -> None:
        self.size = self._write_header(index)
        self.active = index

    def _write_header(self, index: int, ahead: int | None = None) -> int:
        """Give file `index` the next generation's header, synced; its size. Truncated first,
        unless written `ahead`: then it keeps its length (cut back to `ahead` when longer than
        PREWRITE_MAX) and gets zeros up to `ahead` bytes."""
        fd = self.fds[index]
        self.generation += 1
        length = self._lengths[index]
        if ahead is None or length > max(ahead, PREWRITE_MAX):
            length = 0 if ahead is None else ahead
            fileio.ftruncate(fd, length)
            self._lengths[index] = length
        head, self._salts[index] = header("H", str(self.generation))
        fileio.pwrite(fd, head, 0)
        length = max(length, len(head))
        try:
            while ahead is not None and length < ahead:
                length += fileio.pwrite(fd, ZEROS[: ahead - length], length)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # No room for the zeros: ready without them (appends then grow the file). Failing
            # would fail every checkpoint while the disk stays full: the journal never switched.
            log.warning("journal.written_ahead_less", wanted=ahead, written=length)
        fileio.fdatasync(fd)
        self._note_length(index, length)
        return len(head)

    def _note_length(self, index: int, end: int) -> None:
        self._lengths[index] = max(self._lengths[index], end)

    def append(self, records: list[bytes]) -> None:
        """Write one frame of records at the end of the active file (not yet durable)."""
        fd = self.fds[self.active]
        view = memoryview(frame(records, self._salts[self.active]))
        off = self.size
        while view:
            n = fileio.pwrite(fd, view, off)
            view = view[n:]
            off += n
        self.size = off

    def truncate_to(self, size: int) -> None:
        """Cut the active file back to `size` (to remove an unacknowledged, failed batch)."""
        fileio.ftruncate(self.fds[self.active], size)
        self.size = size
        self._lengths[self.active] = size

    def sync(self) -> None:
        """fdatasync the active file; after it returns, every appended record is durable."""
        fileio.fdatasync(self.fds[self.active])

    def close(self) -> None:
        for fd in self.fds:
            fileio.close(fd)
        self.fds.clear()


__all__ = ["Journal", "Record", "decode_file", "frame", "header", "record", "salt_of"]

"""The shared journal that makes acknowledgements durable with one sync per batch.

Every transcript line and every idempotency record of a batch is written to the journal as well as
to its real file; one fdatasync of the journal then covers the whole batch, whatever number of
sessions it touched. Transcripts are synced later, at a checkpoint, after which the journal's
records are no longer needed. After a crash, start-up replays the journal into the transcripts.

Two journal files take turns (`a.wal`, `b.wal`), so that nothing is ever unlinked:

  invariant 1: a record is acknowledged only after an fdatasync of the file that holds it.
  invariant 2: a journal file is truncated (made active again) only after the checkpoint that
               switched away from it has synced every transcript line written before the switch.
  invariant 3: replay is idempotent: a record whose bytes are already at their offset is skipped.
  invariant 4: the inactive file is made ready (truncated, next generation's header, synced) by
               the checkpoint that freed it (`prepare_next`, in the checkpoint's thread), so that
               the next switch is a change of index, with no I/O between two batches. A ready
               file holds only its header and a generation above the active file's: replay
               finds nothing in it, and records written into it after a switch replay last.

Format: a file is a sequence of frames, one per batch: `B\t<crc32 hex8>\t<length>\n` followed
by `length` bytes of records, one per line, `<kind>\t<a>\t<b>\t<payload>\n`; the CRC covers the
records. Kinds: H (header, first frame of a file: a = generation), T (transcript line: a = path
relative to the state folder, b = byte offset, payload = the line, which holds no newline).
Idempotency records need no kind of their own: they are rebuilt from the replayed lines'
`origin.messageId`. Replay of a file stops at its first damaged or torn frame: a batch is
acknowledged only after its whole frame is synced, so nothing after that point was.

Files are reused in place, not emptied. An fdatasync of a file that grew must also commit the
file system's own journal (the new size, the new blocks), and on ext4 that commit waits for
every other file's metadata and ordered data of the moment: a checkpoint's syncfs, the mirror's
files, other programs'. Overwriting bytes already on disk changes no metadata, so its fdatasync
is a data write and a cache flush (measured here beside a syncfs every second: p50 0.45 against
0.6-1.4 ms, p99 6-8 against 11-12 ms). So a freed file keeps its length, and `prepare_next`
writes zeros beyond its end up to about twice what the last generation used (PREWRITE_*): the
next generation's appends then overwrite. What lies beyond a generation's last frame is then
zeros or an older generation's frames, and replay must not take those for its own:

  invariant 5: a header whose b field is SEEDED marks a file whose later frames carry CRCs
               seeded with the header's generation (`crc32(body, generation)`); a frame of any
               other generation fails that CRC (CRC is linear: two seeds never give the same
               CRC of one body), so replay stops where the current generation's frames end.
               Headers themselves carry plain CRCs (seed 0), as do the files of older
               versions (b = "-"), which were always truncated before reuse. A file whose
               header cannot be read holds frames of unknown generations: it is truncated
               before its next header.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.failpoints import failpoint
from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE, ensure_dir, fsync_dir

NAMES = ("a.wal", "b.wal")
SEEDED = "s"  # a header's b field: the frames after it are seeded with its generation (inv. 5)
# Zeros written ahead, by `prepare_next`: twice what the file's last generation used, when that
# was more than PREWRITE_FROM (idle or test folders stay small), at least PREWRITE_MIN and at
# most PREWRITE_MAX; a file grown beyond PREWRITE_MAX by a burst is cut back to the target.
PREWRITE_FROM = 64 << 10
PREWRITE_MIN = 1 << 20
PREWRITE_MAX = 64 << 20
ZEROS = bytes(1 << 20)
READ_CHUNK = 1 << 20


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


def frame(records: list[bytes], seed: int = 0) -> bytes:
    """One batch's records, framed with their length and CRC (seeded: invariant 5)."""
    body = b"".join(records)
    return b"B\t%08x\t%d\n%s" % (zlib.crc32(body, seed), len(body), body)


def seed_of(generation: int) -> int:
    return generation & 0xFFFFFFFF


def decode_file(data: bytes) -> Iterator[Record]:
    """Records of one journal file, in order, stopping at the first damaged or torn frame."""
    records, _short = decode(data)
    return iter(records)


def decode(data: bytes) -> tuple[list[Record], bool]:
    """Records of one journal file (see `decode_file`), and whether reading stopped because
    `data` ended inside a frame (more bytes of the file might hold more frames)."""
    out: list[Record] = []
    pos = 0
    n = len(data)
    seed = 0
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return out, True
        head = data[pos:nl].split(b"\t")
        if len(head) != 3 or head[0] != b"B":
            return out, False
        try:
            length = int(head[2])
        except ValueError:
            return out, False
        body = data[nl + 1 : nl + 1 + length]
        if len(body) != length:
            return out, True
        # The CRC as written (`%08x`), byte for byte: "A" for "a" is damage, not the same CRC.
        if head[1] != b"%08x" % zlib.crc32(body, seed):
            return out, False
        first = not out
        for line in body.split(b"\n")[:-1]:
            parts = line.split(b"\t", 3)
            if len(parts) != 4:
                return out, False
            out.append(Record(parts[0].decode(), parts[1].decode(), parts[2].decode(), parts[3]))
        if first and out and out[0].kind == "H" and out[0].b == SEEDED:
            try:
                seed = seed_of(int(out[0].a))
            except ValueError:
                return out, False
        pos = nl + 1 + length
    return out, False


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
        self.size = 0  # the active file's end of frames (where the next batch is written)
        # The inactive file's size when it is ready (invariant 4), else None: switching then
        # truncates it and writes its header first.
        self._ready: int | None = None
        # Each file's length on disk (frames, then zeros or older frames: invariant 5), and
        # whether its header was read or written by us (else it is truncated before reuse).
        self._lengths = [0, 0]
        self._known = [False, False]
        self._last_used = 0  # where the generation switched away from ended
        self._generations = [0, 0]  # each file's generation (its frames' CRC seed)

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
                self._known[i] = True
                self._generations[i] = int(records[0].a)
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
        """A file's records, read a chunk at a time: a file reused in place is mostly zeros or
        older frames after its last frame (invariant 5), which need not be read."""
        chunk = READ_CHUNK
        while True:
            data = os.pread(fd, min(size, chunk), 0) if size else b""
            records, short = decode(data)
            if not short or len(data) >= size:
                return records
            chunk *= 4

    def start_fresh(self) -> None:
        """After replay and a full checkpoint: begin a new generation in the active file (its
        records are all synced where they belong) and make the other file ready for the first
        switch."""
        self._ready = None
        self._activate(self.active)
        self.prepare_next()

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
            self._activate(1 - self.active, truncate=True)
        failpoint("journal.after_switch")

    def prepare_next(self) -> None:
        """Make the inactive file ready for the next switch (invariant 4): only once nothing
        in it is needed any more (invariant 2: the checkpoint that switched away from it has
        synced all it covered). Runs beside appends to the active file (another descriptor).
        Raises OSError (SyncFailed when the sync failed); the file is then not ready."""
        self._ready = None
        index = 1 - self.active
        self._ready = self._write_header(index, prewrite=self._target())

    def _target(self) -> int:
        """How far the next file is written ahead (PREWRITE_*)."""
        used = self._last_used
        if used < PREWRITE_FROM:
            return 0
        return max(PREWRITE_MIN, min(PREWRITE_MAX, 2 * used))

    def _activate(self, index: int, *, truncate: bool = False) -> None:
        self.size = self._write_header(index, truncate=truncate)
        self.active = index

    def _write_header(self, index: int, *, truncate: bool = False, prewrite: int = 0) -> int:
        """Give file `index` the next generation's header (truncated first when asked, or when
        its frames' generations are unknown: invariant 5), zeros up to `prewrite` bytes, and
        sync it; return the header's size."""
        fd = self.fds[index]
        self.generation += 1
        length = self._lengths[index]
        if truncate or not self._known[index] or length > max(prewrite, PREWRITE_MAX):
            length = min(length, prewrite) if self._known[index] and not truncate else 0
            fileio.ftruncate(fd, length)
            self._lengths[index] = length
        header = frame([record("H", str(self.generation), SEEDED, b"")])
        fileio.pwrite(fd, header, 0)
        self._known[index] = True
        self._generations[index] = self.generation
        length = max(length, len(header))
        while length < prewrite:
            n = fileio.pwrite(fd, ZEROS[: prewrite - length], length)
            length += n
        fileio.fdatasync(fd)
        self._note_length(index, length)
        return len(header)

    def _note_length(self, index: int, end: int) -> None:
        self._lengths[index] = max(self._lengths[index], end)

    def append(self, records: list[bytes]) -> None:
        """Write one batch's records as a frame at the end of the active file (not yet
        durable)."""
        data = frame(records, seed_of(self._generations[self.active]))
        fd = self.fds[self.active]
        view = memoryview(data)
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


__all__ = ["Journal", "Record", "decode", "decode_file", "frame", "record", "seed_of"]

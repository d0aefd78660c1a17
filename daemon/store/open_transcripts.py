"""The transcripts the store holds open for appending: one descriptor per session, the most
recently written MAX_OPEN of them (an LRU), and the transcripts the batch being written created.

A new transcript is created under its own name, exclusively (its id is fresh, so nothing can be
there), in the same step that opens it: one change to the sessions folder per new session. (It
used to be created under a temporary name and renamed once its first lines were in, two changes
to a folder of 100,000 files, each one costing as much kernel time as the lines' writes.)

If the batch that created it fails to write (ENOSPC, EIO), the store takes the batch back
(Store._take_back): the lines are cut off again, and the transcripts the batch created are
removed once empty again. They are our own files of that batch, holding nothing anyone was
told is stored, and a transcript without a header must not stay behind: `doctor` and readers
would take it for a session (tests/test_first_write.py). A crash before they are removed leaves
an empty file, which start-up sets aside (below).

New transcripts are created ahead, off the path that acknowledges (`create_ahead`): in a
folder of 100,000 sessions, creating a file costs the kernel 25-90 us (its directory index and
inode work), and the committer's write thread used to do it for every new session of a batch
between the journal's sync and the acknowledgements, one after the other (a tenth of the
daemon's samples at 100,000 sessions). A thread of its own now creates the file as soon as the
event loop begins the session, while earlier batches are written; the write thread takes the
open descriptor. Nothing changes for durability: the lines still reach the file only after the
journal holds them, and the file is synced at the checkpoint as before. A file created ahead
whose batch is not written (the batch failed, the daemon stops) is ours and empty: `release`
and `close` remove it, as `taken_back` does (this process created it, with O_EXCL, and wrote
nothing to it). A crash in between leaves an empty file that no registry entry and no journal
line names: start-up cannot tell it from an empty file someone else put there, so it removes
nothing and renames it `<name>.unwritten`, no transcript's name (store/opening.py,
set_aside_unwritten; replay runs first, so a file the journal knows has its lines by then).

Owned by the store; used from the committer's write thread (`fd`, `taken_back`) and from the
event loop between batches (`create_ahead`, `release`, `close`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import OrderedDict

from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE
from daemon.store.registry import SessionState

MAX_OPEN = 4096
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_CREATE = _APPEND | os.O_CREAT | os.O_EXCL


class OpenTranscripts:
    """Descriptors of open transcripts (on each SessionState, `st.fd`), closed least recently
    written first beyond MAX_OPEN; and the paths the batch being written created."""

    def __init__(self, root: str) -> None:
        self.root = root  # the state folder, for paths joined as strings (one per new session)
        self.lru: OrderedDict[str, SessionState] = OrderedDict()
        self.created: list[str] = []  # by the batch being written (`written` forgets them)
        # Sessions whose transcripts are created ahead (`create_ahead`), id -> path, until
        # `fd` takes the descriptor (or `release`/`close` remove the file again).
        self.ahead: dict[str, str] = {}
        # The creating thread (one, started with the first session created ahead, until
        # `close`): what it has to create, in order (a queue without a Python-level lock: the
        # event loop's side of a hand-off costs one C call), and what it made (a descriptor, or
        # the exception that creation raised), which the write thread waits for in `_take`.
        # A thread pool's submit per new session took a twentieth of the event loop at
        # 100,000 sessions; a future per file cost twice the creation in lock switches.
        self._todo: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._made: dict[str, int | BaseException] = {}
        self._waiting = 0  # write threads in `_take`
        self._creator: threading.Thread | None = None

    def create_ahead(self, st: SessionState) -> None:
        """Begin creating a new session's transcript in the creating thread (event loop, when
        the session is begun; its first batch takes the descriptor in `fd`)."""
        path = f"{self.root}/{st.rel_path}"
        self.ahead[st.session_id] = path
        if self._creator is None:
            # A daemon thread: a crash (os._exit aside) must not wait for it; `close` ends it.
            self._creator = threading.Thread(
                target=self._create, name="transcript-create", daemon=True
            )
            self._creator.start()
        self._todo.put((st.session_id, path))

    def _create(self) -> None:
        """The creating thread: create what is asked for, in order, until `close` says stop."""
        todo = self._todo
        while (item := todo.get()) is not None:
            sid, path = item
            made: int | BaseException
            try:
                made = fileio.open(path, _CREATE, FILE_MODE)
            except BaseException as e:  # handed to the writer, which raises it
                made = e
            with self._cond:
                self._made[sid] = made
                if self._waiting:
                    self._cond.notify_all()

    def _take(self, sid: str) -> int | BaseException:
        """What creating `sid`'s transcript ahead made, once it is made."""
        with self._cond:
            while sid not in self._made:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            return self._made.pop(sid)

    def fd(self, st: SessionState, *, new: bool = False) -> int:
        """The session's open transcript; `new`: created by this batch, so no file exists yet
        and it is created without trying to open it first. A registry entry whose transcript
        is gone gets it created again (the batch begins it with a header). Raises OSError."""
        if st.fd is not None:
            self.lru.move_to_end(st.session_id)
            return st.fd
        path = f"{self.root}/{st.rel_path}"
        try:
            if self.ahead.pop(st.session_id, None) is not None:
                made = self._take(st.session_id)
                if isinstance(made, BaseException):
                    raise made
                st.fd = made
                self.created.append(path)
            elif new:
                raise FileNotFoundError
            else:
                st.fd = fileio.open(path, _APPEND, FILE_MODE)
        except FileNotFoundError:
            st.fd = fileio.open(path, _CREATE, FILE_MODE)
            self.created.append(path)
        self.lru[st.session_id] = st
        while len(self.lru) > MAX_OPEN:
            _sid, old = self.lru.popitem(last=False)
            if old.fd is not None:
                os.close(old.fd)
                old.fd = None
        return st.fd

    def written(self) -> None:
        """The batch's lines are in: what it created stays."""
        self.created.clear()

    def taken_back(self) -> None:
        """The batch was taken back (its transcripts cut back to where they were, and synced):
        remove the ones it created, empty again. Raises OSError."""
        while self.created:
            path = self.created[-1]
            try:
                if os.stat(path).st_size == 0:  # never a byte anyone else wrote
                    fileio.unlink(path)
            except FileNotFoundError:
                pass
            self.created.pop()

    def release(self, st: SessionState) -> None:
        """Close one session's descriptor (a closed session, a forgotten new one). A transcript
        created ahead for a session forgotten before its first write is removed again."""
        self.lru.pop(st.session_id, None)
        if st.fd is not None:
            os.close(st.fd)
            st.fd = None
        path = self.ahead.pop(st.session_id, None)
        if path is not None:
            _remove_unwritten(path, self._take(st.session_id))

    def close(self) -> None:
        for st in self.lru.values():
            if st.fd is not None:
                os.close(st.fd)
                st.fd = None
        self.lru.clear()
        if self._creator is not None:
            self._todo.put(None)  # after every file asked for: each is made when it ends
            self._creator.join()
            self._creator = None
        # Sessions begun in batches that were never written (the daemon stops).
        while self.ahead:
            sid, path = self.ahead.popitem()
            _remove_unwritten(path, self._take(sid))


def _remove_unwritten(path: str, made: int | BaseException) -> None:
    """Close a transcript created ahead whose batch was not written, and remove it if still
    empty (never a byte anyone else wrote). An error leaves it: start-up sets an empty
    transcript that nothing names aside as `<name>.unwritten` (daemon/store/opening.py)."""
    if isinstance(made, BaseException):
        return  # it was never created
    fd = made
    try:
        if os.fstat(fd).st_size == 0:
            with contextlib.suppress(OSError):
                fileio.unlink(path)
    finally:
        os.close(fd)

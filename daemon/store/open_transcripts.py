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
an empty file, which start-up passes over (store/opening.py, recover_archives).

New transcripts are created ahead, off the path that acknowledges (`create_ahead`): in a
folder of 100,000 sessions, creating a file costs the kernel 25-90 us (its directory index and
inode work), and the committer's write thread used to do it for every new session of a batch
between the journal's sync and the acknowledgements, one after the other (a tenth of the
daemon's samples at 100,000 sessions). A thread of its own now creates the file as soon as the
event loop begins the session, while earlier batches are written; the write thread takes the
open descriptor. Nothing changes for durability: the lines still reach the file only after the
journal holds them, and the file is synced at the checkpoint as before. A file created ahead
whose batch is not written (the batch failed, the daemon stops) is ours and empty: `release`
and `close` remove it, as `taken_back` does; a crash in between leaves an empty file, which
start-up passes over, as before.

Owned by the store; used from the committer's write thread (`fd`, `taken_back`) and from the
event loop between batches (`create_ahead`, `release`, `close`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

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
        # The creating thread's work: what it has to create, and what it made (a descriptor,
        # or the exception that creation raised). It takes the whole list at a time: a hand-off
        # per file (a future each) cost twice the creation's CPU in interpreter-lock switches.
        self._cond = threading.Condition()
        self._todo: list[tuple[str, str]] = []
        self._made: dict[str, int | BaseException] = {}
        self._creating = False
        self._creator: ThreadPoolExecutor | None = None

    def create_ahead(self, st: SessionState) -> None:
        """Begin creating a new session's transcript in the creating thread (event loop, when
        the session is begun; its first batch takes the descriptor in `fd`)."""
        path = f"{self.root}/{st.rel_path}"
        self.ahead[st.session_id] = path
        with self._cond:
            self._todo.append((st.session_id, path))
            if self._creating:
                return  # the running job takes it with the rest
            self._creating = True
        if self._creator is None:
            self._creator = ThreadPoolExecutor(1, thread_name_prefix="transcript-create")
        self._creator.submit(self._create)

    def _create(self) -> None:
        """The creating thread: create what was asked for until nothing is left."""
        while True:
            with self._cond:
                todo, self._todo = self._todo, []
                if not todo:
                    self._creating = False
                    return
            for sid, path in todo:
                made: int | BaseException
                try:
                    made = fileio.open(path, _CREATE, FILE_MODE)
                except BaseException as e:  # handed to the writer, which raises it
                    made = e
                with self._cond:
                    self._made[sid] = made
                    self._cond.notify_all()

    def _take(self, sid: str) -> int | BaseException:
        """What creating `sid`'s transcript ahead made, once it is made."""
        with self._cond:
            while sid not in self._made:
                self._cond.wait()
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
            self._creator.shutdown(wait=True)
            self._creator = None
        # Sessions begun in batches that were never written (the daemon stops).
        while self.ahead:
            sid, path = self.ahead.popitem()
            _remove_unwritten(path, self._take(sid))


def _remove_unwritten(path: str, made: int | BaseException) -> None:
    """Close a transcript created ahead whose batch was not written, and remove it if still
    empty (never a byte anyone else wrote). An error leaves it: start-up passes over an empty
    transcript."""
    if isinstance(made, BaseException):
        return  # it was never created
    fd = made
    try:
        if os.fstat(fd).st_size == 0:
            with contextlib.suppress(OSError):
                fileio.unlink(path)
    finally:
        os.close(fd)

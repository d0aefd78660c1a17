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

Owned by the store; used from the committer's write thread (`fd`, `taken_back`) and from the
event loop between batches (`release`, `close`).
"""

from __future__ import annotations

import os
from collections import OrderedDict

from daemon.store import fileio
from daemon.store.fsutil import FILE_MODE
from daemon.store.registry import SessionState

MAX_OPEN = 4096
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


class OpenTranscripts:
    """Descriptors of open transcripts (on each SessionState, `st.fd`), closed least recently
    written first beyond MAX_OPEN; and the paths the batch being written created."""

    def __init__(self, root: str) -> None:
        self.root = root  # the state folder, for paths joined as strings (one per new session)
        self.lru: OrderedDict[str, SessionState] = OrderedDict()
        self.created: list[str] = []  # by the batch being written (`written` forgets them)

    def fd(self, st: SessionState, *, new: bool = False) -> int:
        """The session's open transcript; `new`: created by this batch, so no file exists yet
        and it is created without trying to open it first. A registry entry whose transcript
        is gone gets it created again (the batch begins it with a header). Raises OSError."""
        if st.fd is not None:
            self.lru.move_to_end(st.session_id)
            return st.fd
        path = f"{self.root}/{st.rel_path}"
        try:
            if new:
                raise FileNotFoundError
            st.fd = fileio.open(path, _APPEND, FILE_MODE)
        except FileNotFoundError:
            st.fd = fileio.open(path, _APPEND | os.O_CREAT | os.O_EXCL, FILE_MODE)
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
        """Close one session's descriptor (a closed session, a forgotten new one)."""
        self.lru.pop(st.session_id, None)
        if st.fd is not None:
            os.close(st.fd)
            st.fd = None

    def close(self) -> None:
        for st in self.lru.values():
            if st.fd is not None:
                os.close(st.fd)
                st.fd = None
        self.lru.clear()

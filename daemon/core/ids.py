"""Identifiers and the wall clock in milliseconds: the one place each is made.

No dependencies beyond the standard library, so every layer can use them. Session ids are
random UUIDs (as OpenClaw makes them); entry ids count up within a session (see
`next_entry_id`); times are epoch milliseconds, the unit of transcripts and sessions.json.
"""

from __future__ import annotations

import os
import threading
import time


def now_ms() -> int:
    """The wall clock as epoch milliseconds."""
    return time.time_ns() // 1_000_000


_RANDOM_CHUNK = 4096
_random = bytearray()
_random_pid = 0
_random_lock = threading.Lock()


def _random_bytes(n: int) -> bytearray:
    """`n` (at most 16) bytes from os.urandom, never handed out twice (any thread; a forked
    child draws its own)."""
    global _random, _random_pid
    with _random_lock:
        if len(_random) < n or _random_pid != os.getpid():
            _random, _random_pid = bytearray(os.urandom(_RANDOM_CHUNK)), os.getpid()
        out = _random[-n:]
        del _random[-n:]
    return out


def _random16() -> bytearray:
    return _random_bytes(16)


def new_session_id() -> str:
    """A fresh session id: a random (version 4) UUID, as OpenClaw names its transcripts.

    Formatted from the random bytes directly: `str(uuid.uuid4())` builds a UUID object and an
    int on the way, and the random bytes are drawn from the system 4 KiB at a time (a burst of
    100,000 new sessions spent more on their ids than on the rest of creating them)."""
    b = _random16()
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def next_entry_id(last_id: str | None) -> str:
    """The id after `last_id`: sequential 8-hex ids never collide within a session.

    Random 8-hex ids (as OpenClaw draws them) collide by the birthday bound once a session holds
    tens of thousands of entries; counting up from the last id cannot, and needs no id index.
    A session's first id, or one after an id of another form (UUIDs in newer OpenClaw), is random.
    """
    if last_id is not None and len(last_id) == 8:
        try:
            return f"{(int(last_id, 16) + 1) & 0xFFFFFFFF:08x}"
        except ValueError:
            pass
    # From the buffer too: a system call per new session's first entry let the event loop's
    # thread give up the interpreter lock, which the write threads then held (100,000 sessions).
    return _random_bytes(4).hex()

"""Identifiers (daemon/core/ids.py): session ids are version-4 UUIDs in their usual spelling,
as OpenClaw names its transcripts."""

from __future__ import annotations

import uuid

from daemon.core.ids import new_session_id


def test_a_session_id_is_a_random_uuid_in_its_canonical_spelling() -> None:
    ids = [new_session_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for sid in ids:
        u = uuid.UUID(sid)
        assert str(u) == sid, "lowercase, hyphenated: the name of its transcript"
        assert u.version == 4 and u.variant == uuid.RFC_4122


def test_session_ids_drawn_from_many_threads_at_once_never_repeat() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_session_id() for _ in range(500)], range(16)))
    ids = [sid for batch in batches for sid in batch]
    assert len(set(ids)) == len(ids) == 8000


def test_a_first_entry_id_is_random_8_hex_and_never_repeats_the_buffered_bytes() -> None:
    from daemon.core.ids import next_entry_id

    firsts = [next_entry_id(None) for _ in range(5_000)]  # more than one 4 KiB draw
    assert all(len(i) == 8 and int(i, 16) >= 0 for i in firsts)
    assert len(set(firsts)) > 4_990  # 32 random bits each: a repeat or two by chance at most
    assert next_entry_id("0000000f") == "00000010"
    assert next_entry_id("ffffffff") == "00000000"

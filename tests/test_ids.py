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

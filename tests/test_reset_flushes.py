"""The groups the memory flushes of reset sessions run in (daemon/reset_flushes.py): in the order
they were queued, bounded in sessions and in transcript bytes to read, a big session alone."""

from __future__ import annotations

from daemon.compaction_state import ResetFlush
from daemon.config import CompactionConfig
from daemon.reset_flushes import RESET_FLUSH_GROUP, RESET_FLUSH_GROUP_BYTES, due_groups

CC = CompactionConfig()
WINDOW_BYTES = CC.contextWindow * 4


def flush(i: int, size: int = 400, running: bool = False, retry_at: float = 0.0) -> ResetFlush:
    rf = ResetFlush("main", f"agent:main:telegram:direct:{i}", f"s{i}", f"s{i}.jsonl", CC, size)
    rf.running, rf.retry_at = running, retry_at
    return rf


def ids(groups: list[list[ResetFlush]]) -> list[list[str]]:
    return [[rf.session_id for rf in g] for g in groups]


def never(_sid: str) -> bool:
    return False


def test_small_sessions_go_in_full_groups_as_many_as_there_are_free_workers() -> None:
    queued = [flush(i) for i in range(RESET_FLUSH_GROUP * 3 + 1)]
    groups, wait = due_groups(queued, 0.0, never, 2)
    assert [len(g) for g in groups] == [RESET_FLUSH_GROUP, RESET_FLUSH_GROUP]
    assert ids(groups)[0][0] == "s0" and wait is None
    assert due_groups(queued, 0.0, never, 0) == ([], None)


def test_a_big_session_is_flushed_in_a_group_of_its_own() -> None:
    big = flush(99, size=150_000_000)  # reads a context window's worth, more than a group's bytes
    assert WINDOW_BYTES > RESET_FLUSH_GROUP_BYTES
    queued = [flush(0), flush(1), big, flush(2), flush(3)]
    groups, _ = due_groups(queued, 0.0, never, 5)
    assert ids(groups) == [["s0", "s1"], ["s99"], ["s2", "s3"]]


def test_sessions_of_middling_size_share_groups_up_to_the_byte_bound() -> None:
    size = RESET_FLUSH_GROUP_BYTES // 3
    groups, _ = due_groups([flush(i, size=size) for i in range(7)], 0.0, never, 10)
    assert [len(g) for g in groups] == [3, 3, 1]


def test_running_busy_and_backed_off_flushes_wait_and_the_next_retry_is_reported() -> None:
    queued = [
        flush(0, running=True),
        flush(1),
        flush(2, retry_at=30.0),
        flush(3, retry_at=12.5),
        flush(4),
    ]
    groups, wait = due_groups(queued, 10.0, lambda sid: sid == "s4", 2)
    assert ids(groups) == [["s1"]]
    assert wait == 2.5

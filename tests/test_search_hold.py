"""When the index's next pass is due (daemon/search/service.py `pass_due`): new writes wait
WRITE_GAP_SECONDS, the sweep SWEEP_SECONDS, and both wait while moves into archive/ are under
way (a reset job's), up to HOLD_FOR_MOVES_SECONDS after the last pass."""

from __future__ import annotations

import pytest

from daemon.search.service import (
    HOLD_FOR_MOVES_SECONDS,
    SWEEP_SECONDS,
    WRITE_GAP_SECONDS,
    pass_due,
)


def test_the_gaps_are_ordered() -> None:
    assert WRITE_GAP_SECONDS < SWEEP_SECONDS < HOLD_FOR_MOVES_SECONDS


@pytest.mark.parametrize(
    ("since", "indexed", "moving", "due"),
    [
        (0.0, False, False, False),  # new writes wait for the write gap
        (WRITE_GAP_SECONDS, False, False, True),
        (WRITE_GAP_SECONDS, True, False, False),  # nothing new: only the sweep
        (SWEEP_SECONDS, True, False, True),
        (WRITE_GAP_SECONDS, False, True, False),  # moves under way: held
        (SWEEP_SECONDS, True, True, False),
        (HOLD_FOR_MOVES_SECONDS - 0.01, False, True, False),
        (HOLD_FOR_MOVES_SECONDS, False, True, True),  # but not for longer than this
        (HOLD_FOR_MOVES_SECONDS, True, True, True),
    ],
)
def test_a_pass_is_due(since: float, indexed: bool, moving: bool, due: bool) -> None:
    assert pass_due(since, indexed, moving) is due

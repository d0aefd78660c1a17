"""A failure that repeats at full speed is logged once per interval per kind, with a count of
the lines left out (daemon/logs.py Throttle)."""

from __future__ import annotations

from daemon.logs import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_failure_is_logged_at_once_and_repeats_counted_until_the_interval_ends() -> None:
    clock = Clock()
    t = Throttle(10.0, clock)
    assert t.allow("enospc") == 0
    for _ in range(500):
        clock.now += 0.01
        assert t.allow("enospc") is None
    clock.now = 110.0
    assert t.allow("enospc") == 500  # the next line says how many were left out
    assert t.allow("enospc") is None


def test_each_kind_of_failure_has_its_own_interval() -> None:
    clock = Clock()
    t = Throttle(10.0, clock)
    assert t.allow("enospc") == 0
    assert t.allow("eio") == 0  # a new kind of failure is news: logged at once
    assert t.allow("enospc") is None
    assert t.allow("eio") is None

"""The committer's histogram (daemon/core/histogram.py): buckets as Prometheus reads them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.core.histogram import LATENCY_BOUNDS, Histogram


def test_a_value_on_a_bound_counts_in_that_bound_s_bucket() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [(1.0, 2), (2.0, 4), (float("inf"), 5)]
    assert h.count == 5
    assert h.total == pytest.approx(8.0)


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0)])
def test_bounds_must_increase(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram(bounds)


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False)))
def test_cumulative_counts_match_a_plain_count(values: list[float]) -> None:
    h = Histogram(LATENCY_BOUNDS)
    for v in values:
        h.observe(v)
    for bound, n in h.cumulative():
        assert n == sum(1 for v in values if v <= bound)
    assert h.count == len(values)

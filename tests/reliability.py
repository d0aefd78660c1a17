"""Counts the reliability suite reports: cuts, failpoints, injected faults, fuzzed frames.

Issue 8 asks every CI run to say how much it exercised, not only that it passed: a fuzzer that
silently ran ten frames proves nothing. Tests call `tally("fuzzed frames", n)`; the suite's
conftest prints the totals at the end of the run (`pytest_terminal_summary`), and each test also
prints its own line (visible with `-s` or when it fails).
"""

from __future__ import annotations

from collections import Counter

TOTALS: Counter[str] = Counter()


def tally(what: str, n: int = 1, *, test: str | None = None) -> None:
    """Add `n` to the run's total for `what` (and print the test's own figure)."""
    TOTALS[what] += n
    if test is not None:
        print(f"[reliability] {test}: {n} {what}")


def summary_lines() -> list[str]:
    """One line per counted kind, for the end-of-run summary (empty when nothing ran)."""
    return [f"{what}: {n:,}" for what, n in sorted(TOTALS.items())]

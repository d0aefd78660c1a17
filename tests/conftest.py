"""Suite-wide: the never-delete guard (daemon/guard.py) watches every test.

During each test, an audit hook refuses and records any removal, rename-over or tree removal
that would make something under a state or backup folder disappear (temporary files and
originals replaced by a verified compressed copy excepted). The daemons and commands a test
starts install the same guard (SESSIOND_DELETE_GUARD, passed on by the e2e harness) and append
their refusals to a file this fixture reads. Any refusal fails the test.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.guard import ENV, GUARD

GUARD.enabled = False  # on only while a test runs (pytest cleans its old tmp folders outside)
GUARD.install()
VIOLATIONS = Path(tempfile.gettempdir()) / f"sessiond-delete-guard-{os.getpid()}.log"
os.environ[ENV] = str(VIOLATIONS)


def _reported_since(offset: int) -> list[str]:
    try:
        with open(VIOLATIONS, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture(autouse=True)
def never_delete(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the test if anything under a state or backup folder disappeared."""
    tmp_path_factory.getbasetemp()  # pytest removes old runs' folders here, before the guard is on
    offset = VIOLATIONS.stat().st_size if VIOLATIONS.exists() else 0
    GUARD.violations.clear()
    GUARD.enabled = True
    try:
        yield
    finally:
        GUARD.enabled = False
    found = [*GUARD.violations, *(f"(daemon) {v}" for v in _reported_since(offset))]
    GUARD.violations.clear()
    if found:
        pytest.fail("user data would have been removed:\n  " + "\n  ".join(found))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Issue 8: the reliability suite's counts (cuts, failpoints, faults, frames) in every run."""
    from reliability import summary_lines

    lines = summary_lines()
    if lines:
        terminalreporter.section("reliability counts")
        for line in lines:
            terminalreporter.write_line(line)

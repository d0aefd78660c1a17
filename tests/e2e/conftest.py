"""Fixtures that run the real daemon on a temporary state folder (SPEC: end-to-end tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Daemon, short_workdir

Launch = Callable[..., Daemon]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start daemons: `launch(config=..., start=True)`; every one is killed after the test."""
    made: list[Daemon] = []
    workdir = short_workdir(tmp_path)
    counter = 0

    def _launch(
        config: str | dict[str, Any] | None = None,
        *,
        start: bool = True,
        wrapper: list[str] | None = None,
        state_dir: Path | None = None,
    ) -> Daemon:
        nonlocal counter
        counter += 1
        folder = workdir if counter == 1 else workdir / f"d{counter}"
        folder.mkdir(exist_ok=True)
        d = Daemon(folder, config=config, wrapper=wrapper, state_dir=state_dir)
        made.append(d)
        if start:
            d.start()
        return d

    try:
        yield _launch
    finally:
        for d in made:
            d.cleanup()
        for d in made:
            out = d.output()
            if out:
                # Shown by pytest only when the test failed.
                print(f"\n===== daemon in {d.workdir} =====\n{out}")


@pytest.fixture
def daemon(launch: Launch) -> Daemon:
    """A running daemon with built-in defaults on an empty state folder."""
    return launch()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon (built-in defaults) for a module's tests that only need it to answer."""
    d = Daemon(short_workdir(tmp_path_factory.mktemp("shared")))
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def served(shared_daemon: Daemon) -> Iterator[Daemon]:
    """The module's shared daemon; after each test its connections are closed, and it must
    still be running: no input may crash it."""
    yield shared_daemon
    shared_daemon.close_clients()
    assert shared_daemon.running, f"the daemon died:\n{shared_daemon.output()}"

"""daemon.socket follows the same rule as daemon.listeners (daemon/listeners.py): a socket file
left by a dead daemon is replaced; one another daemon serves on is never taken over, and a path
that is not a socket is never touched: start-up stops with exit 1 and a message naming it."""

from __future__ import annotations

from pathlib import Path

from e2e.conftest import Launch


def test_a_socket_another_daemon_serves_on_is_not_taken_over(
    launch: Launch, tmp_path: Path
) -> None:
    first = launch()
    # A second state folder whose config names the first daemon's socket.
    second = launch({"daemon": {"socket": str(first.socket)}}, start=False)
    assert second.spawn().wait(timeout=60) == 1
    err = (second.workdir / "daemon-1.err").read_text()
    assert f"cannot listen on {first.socket}: another process is serving on it" in err
    assert "Traceback" not in err
    assert first.call("status", {})["connections"] >= 1  # still the first daemon's socket


def test_a_file_at_the_socket_path_stops_start_up_and_is_kept(launch: Launch) -> None:
    d = launch(start=False)
    d.socket.parent.mkdir(parents=True, exist_ok=True)
    d.socket.write_text("not a socket")
    assert d.spawn().wait(timeout=60) == 1
    err = (d.workdir / "daemon-1.err").read_text()
    assert f"cannot listen on {d.socket}: it exists and is not a socket" in err
    assert d.socket.read_text() == "not a socket"


def test_the_socket_of_a_killed_daemon_is_replaced(launch: Launch) -> None:
    d = launch()
    d.kill()
    assert d.socket.exists()  # SIGKILL leaves the file behind
    d.start()
    assert d.call("status", {})["connections"] >= 1

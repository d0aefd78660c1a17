"""systemd: the units pass systemd's own checks, and the daemon speaks sd_notify correctly.

The notify tests start the real daemon with $NOTIFY_SOCKET pointing at a datagram socket the
test binds, as systemd would, and read what arrives there.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.harness import RawConnection
from ops_harness import Launch, NotifyListener, daemons

from daemon.systemd import Notifier, monotonic_usec, notify_address, watchdog_interval

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM_UNIT = UNITS / "sessiond.service"
USER_UNIT = UNITS / "sessiond-user.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


# ---------------------------------------------------------------------------------------------
# The unit files


def directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def installable_copy(unit: Path, folder: Path) -> Path:
    """The unit with its ExecStart pointed at this checkout's `sessiond`.

    `verify` insists that the program exists; the units name where the install steps put it
    (/opt/sessiond, ~/.local/bin), which is not where the tests run from.
    """
    here = Path(sys.executable).parent / "sessiond"
    text = unit.read_text()
    text = text.replace("/opt/sessiond/venv/bin/sessiond", str(here))
    text = text.replace("%h/.local/bin/sessiond", str(here))
    out = folder / unit.name
    out.write_text(text)
    return out


def analyze(*args: str, user: bool = False, tmp: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = dict(os.environ)
    if user:
        # The user manager's paths need a runtime folder, even offline.
        runtime = tmp / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    cmd = [ANALYZE, *(["--user"] if user else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


@needs_analyze
@pytest.mark.parametrize(("unit", "user"), [(SYSTEM_UNIT, False), (USER_UNIT, True)])
def test_the_units_pass_systemd_analyze_verify(unit: Path, user: bool, tmp_path: Path) -> None:
    copy = installable_copy(unit, tmp_path)
    res = analyze("verify", str(copy), user=user, tmp=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr


def exposure(output: str) -> float:
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", output)
    assert m, output
    return float(m.group(1))


@needs_analyze
def test_the_system_unit_scores_at_most_1_0_in_the_security_analysis(tmp_path: Path) -> None:
    res = analyze("security", "--offline=yes", "--threshold=10", str(SYSTEM_UNIT), tmp=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert exposure(res.stdout) <= 1.0, res.stdout


@needs_analyze
def test_the_user_unit_is_hardened_as_far_as_a_user_manager_allows(tmp_path: Path) -> None:
    # Offline, the analysis counts the capability rows against a user unit although a user
    # manager has no capabilities to give; what is left is what a user manager can restrict.
    res = analyze("security", "--offline=yes", str(USER_UNIT), user=True, tmp=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert exposure(res.stdout) <= 4.0, res.stdout


def test_the_system_unit_is_a_notify_service_with_reload_watchdog_and_its_own_folders() -> None:
    d = directives(SYSTEM_UNIT)
    assert d["Type"] == ["notify"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["WatchdogSec"] and d["TimeoutStopSec"]
    assert d["StateDirectory"] == ["sessiond"]
    assert d["RuntimeDirectory"] == ["sessiond"]
    assert d["ConfigurationDirectory"] == ["sessiond"]
    assert d["User"] == ["sessiond"]
    start = d["ExecStart"][0].split()
    assert start[1:4] == ["run", "--config", "/etc/sessiond/config.json5"]
    # The state folder comes from $STATE_DIRECTORY, which StateDirectory= sets.
    assert "--state-dir" not in start


def test_the_user_unit_is_a_notify_service_too() -> None:
    d = directives(USER_UNIT)
    assert d["Type"] == ["notify"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["WatchdogSec"]
    assert "StateDirectory" not in d  # v252 would put it under ~/.config
    assert d["ExecStart"][0].split()[1:4] == ["run", "--config", "%E/sessiond/config.json5"]


# ---------------------------------------------------------------------------------------------
# The notify protocol, without a daemon


def test_notify_socket_values_name_a_path_or_an_abstract_socket() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@/org/freedesktop/systemd1/notify") == (
        b"\0/org/freedesktop/systemd1/notify"
    )
    assert notify_address("") is None
    assert notify_address("@") is None
    assert notify_address("relative/path") is None


def test_the_watchdog_pings_at_half_the_interval_and_only_for_its_own_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "200000"}, 42) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "42"}, 42) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    n = Notifier.from_environ({})
    assert not n.enabled
    assert not n.ready() and not n.stopping() and not n.reloading() and not n.status("x")
    assert n.interval is None


def test_the_variables_are_taken_out_of_the_environment_so_children_do_not_inherit_them(
    tmp_path: Path,
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "1000000", "HOME": "/x"}
    env["WATCHDOG_PID"] = str(os.getpid())
    n = Notifier.from_environ(env)
    assert env == {"HOME": "/x"}
    assert n.enabled and n.interval == 0.5


def test_datagrams_reach_an_abstract_socket() -> None:
    name = f"@sessiond-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name[1:].encode())
        sock.settimeout(5)
        n = Notifier.from_environ({"NOTIFY_SOCKET": name})
        assert n.ready("serving\nwith a newline")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving with a newline"
        n.close()


def test_a_vanished_notify_socket_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not n.ready()
    assert not n.notify("WATCHDOG=1")
    n.close()


# ---------------------------------------------------------------------------------------------
# The real daemon


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[NotifyListener, Launch]]:
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    path = folder / f"sd-notify-{os.getpid()}-{time.monotonic_ns()}.sock"
    listener = NotifyListener(path)
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    try:
        with daemons(tmp_path, env) as launch:
            yield listener, launch
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def test_ready_arrives_once_the_socket_accepts_then_watchdog_pings_keep_coming(
    notify: tuple[NotifyListener, Launch],
) -> None:
    listener, launch = notify
    d = launch(start=False)
    d.proc = d.spawn()
    ready, _ = listener.until("READY")
    assert ready["READY"] == "1"
    assert "serving" in ready.get("STATUS", "")
    # READY means "clients may connect now": no retry, no wait.
    with RawConnection(d.socket, timeout=5) as conn:
        assert "result" in conn.call("status")
    assert not any("READY" in f for f in listener.received[:-1])

    pings = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        fields = listener.next(timeout=1.0)
        if "WATCHDOG" in fields:
            assert fields["WATCHDOG"] == "1"
            pings.append(time.monotonic())
    # Every 100 ms for WATCHDOG_USEC=200000; allow for a slow machine.
    assert len(pings) >= 5, listener.received
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.2


def test_sighup_reports_reloading_with_the_monotonic_clock_then_ready(
    notify: tuple[NotifyListener, Launch],
) -> None:
    listener, launch = notify
    d = launch(start=False)
    d.proc = d.spawn()
    listener.until("READY")
    before = monotonic_usec()
    os.kill(d.proc.pid, signal.SIGHUP)
    reloading, _ = listener.until("RELOADING")
    after = monotonic_usec()
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    ready, _ = listener.until("READY")
    assert ready["READY"] == "1"
    assert ready["STATUS"] == f"serving on {d.socket}"


def test_sigterm_reports_stopping_and_the_daemon_exits_cleanly(
    notify: tuple[NotifyListener, Launch],
) -> None:
    listener, launch = notify
    d = launch(start=False)
    d.proc = d.spawn()
    listener.until("READY")
    os.kill(d.proc.pid, signal.SIGTERM)
    stopping, _ = listener.until("STOPPING")
    assert stopping["STOPPING"] == "1"
    assert d.proc.wait(30) == 0
    # Nothing claims readiness after STOPPING.
    after = listener.received[listener.received.index(stopping) + 1 :]
    assert not any("READY" in f for f in after)

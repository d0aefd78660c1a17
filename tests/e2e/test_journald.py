"""Logs under systemd (SPEC 9) with the real daemon: when `$JOURNAL_STREAM` names its stderr,
every line (the daemon's and its workers') starts with the sd-daemon priority of its level and
goes to stderr; otherwise lines are plain JSON on stdout, as before."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from e2e.harness import Daemon, daemon_env, short_workdir

PREFIXED = re.compile(rb"^<([0-7])>(\{.*\})$")


def identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


class JournalDaemon(Daemon):
    """The daemon with stderr on a file that `$JOURNAL_STREAM` names, as systemd runs it; stdout
    either shares that file (systemd's default) or goes elsewhere."""

    def __init__(self, workdir: Path, *, shared_stdout: bool) -> None:
        super().__init__(workdir)
        self.shared_stdout = shared_stdout

    def spawn(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        journal = self.workdir / f"daemon-{self.runs}.out"  # what the harness reads
        stdout = self.workdir / f"daemon-{self.runs}.stdout"
        with open(journal, "wb") as err, open(stdout, "wb") as out:
            env = {**daemon_env(), "JOURNAL_STREAM": identity(journal)}
            return subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err if self.shared_stdout else out,
                stderr=err,
            )

    def records(self) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for line in (self.workdir / f"daemon-{self.runs}.out").read_bytes().splitlines():
            m = PREFIXED.match(line)
            assert m is not None, f"a line without a priority prefix: {line[:200]!r}"
            out.append((int(m.group(1)), orjson.loads(m.group(2))))
        return out


def wait_for_event(d: JournalDaemon, event: str, timeout: float = 30.0) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [(p, r) for p, r in d.records() if r.get("event") == event]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {event} within {timeout}s"
        time.sleep(0.05)


def run_and_reject_a_config(d: JournalDaemon) -> None:
    d.start()
    try:
        d.call("message.ingest", {"channel": "cli", "chatType": "direct", "peer": "1", "text": "x"})
        d.config_path.write_text("{ session: { reset: { atHour: 25 } } }")
        assert d.call("config.reload")["reloaded"] is False
        wait_for_event(d, "config.rejected")
    finally:
        assert d.stop() == 0


def test_lines_carry_priorities_when_stdout_and_stderr_are_the_journal(tmp_path: Path) -> None:
    d = JournalDaemon(short_workdir(tmp_path), shared_stdout=True)
    try:
        run_and_reject_a_config(d)
    finally:
        d.cleanup()
    records = d.records()  # every line has a prefix, or this fails
    by_event = {r["event"]: p for p, r in records}
    assert by_event["daemon.started"] == 6
    assert by_event["session.created"] == 6
    assert by_event["config.rejected"] == 4
    assert by_event["daemon.stopped"] == 6
    levels = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
    assert all(p == levels[r["level"]] for p, r in records)


def test_logs_go_to_stderr_when_only_stderr_is_the_journal(tmp_path: Path) -> None:
    d = JournalDaemon(short_workdir(tmp_path), shared_stdout=False)
    try:
        run_and_reject_a_config(d)
    finally:
        d.cleanup()
    events = {r["event"]: p for p, r in d.records()}
    assert events["daemon.started"] == 6 and events["config.rejected"] == 4
    assert b'"event"' not in (d.workdir / f"daemon-{d.runs}.stdout").read_bytes()


def test_no_prefix_when_journal_stream_names_another_file(tmp_path: Path) -> None:
    workdir = short_workdir(tmp_path)
    other = workdir / "elsewhere"
    other.touch()
    d = Daemon(workdir)
    # A service's child whose output was redirected still inherits the variable.
    d.env["JOURNAL_STREAM"] = identity(other)
    try:
        d.start()
        assert d.stop() == 0
    finally:
        d.cleanup()
    lines = [line for line in (workdir / "daemon-1.out").read_bytes().splitlines() if line]
    assert lines and all(line.startswith(b"{") for line in lines)
    assert {r["event"] for r in d.logs()} >= {"daemon.started", "daemon.stopped"}

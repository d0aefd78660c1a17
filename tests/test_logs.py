"""Log lines and journald (SPEC 9, "Logs under systemd"): the sd-daemon priority prefix when the
stream is the journal that `$JOURNAL_STREAM` names, and none anywhere else."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from daemon import logs


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def log_every_level(path: Path, fmt: str = "json") -> list[str]:
    with open(path, "w", buffering=1) as out:
        logs.configure("debug", fmt, stream=out)
        log = structlog.get_logger("test")
        log.debug("t.debug")
        log.info("t.info", n=1)
        log.warning("t.warning")
        log.error("t.error")
        log.critical("t.critical")
    return path.read_text().splitlines()


def test_each_level_has_its_sd_daemon_priority() -> None:
    assert logs.with_priority("x", "debug") == "<7>x"
    assert logs.with_priority("x", "info") == "<6>x"
    assert logs.with_priority("x", "warning") == "<4>x"
    assert logs.with_priority("x", "error") == "<3>x"
    assert logs.with_priority("x", "critical") == "<2>x"
    assert logs.with_priority("x", "no-such-level") == "<6>x"


def test_every_line_of_a_multi_line_record_is_prefixed() -> None:
    assert logs.with_priority("a\nb", "error") == "<3>a\n<3>b"


def test_lines_on_the_journal_stream_start_with_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "journal"
    out.touch()
    monkeypatch.setenv("JOURNAL_STREAM", identity(out))
    lines = log_every_level(out)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    info = orjson.loads(lines[1][3:])
    assert info["event"] == "t.info" and info["level"] == "info" and info["n"] == 1


def test_the_console_format_is_prefixed_on_the_journal_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "journal"
    out.touch()
    monkeypatch.setenv("JOURNAL_STREAM", identity(out))
    lines = log_every_level(out, fmt="console")
    assert lines[3].startswith("<3>") and "t.error" in lines[3]
    _, fmt = logs.settings()
    assert fmt == "console", "a worker must still be told the daemon's format"


@pytest.mark.parametrize("value", [None, "other", "", "12", "a:b", "1:2:3"])
def test_no_prefix_when_the_stream_is_not_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    other = tmp_path / "other"
    other.touch()
    out = tmp_path / "out"
    out.touch()
    if value is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        # "other": a service's child whose output was redirected still inherits the variable.
        monkeypatch.setenv("JOURNAL_STREAM", identity(other) if value == "other" else value)
    lines = log_every_level(out)
    assert len(lines) == 5
    assert all(line.startswith("{") for line in lines), lines


def test_journal_stream_is_parsed_strictly() -> None:
    assert logs.journal_stream({"JOURNAL_STREAM": "8:12345"}) == (8, 12345)
    assert logs.journal_stream({}) is None
    assert logs.journal_stream({"JOURNAL_STREAM": "8:"}) is None
    assert logs.journal_stream({"JOURNAL_STREAM": "-1:5"}) is None

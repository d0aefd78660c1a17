"""What the command line prints for people (daemon/cli_output.py): relative ages, local times,
sizes, and a status without Python reprs or raw epoch milliseconds."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from daemon import cli_output

NOW = 1_796_529_600_000  # 2026-12-06T04:00:00Z


@pytest.fixture
def tz_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "just now"),
        (44, "just now"),
        (50, "1 min ago"),
        (180, "3 min ago"),
        (3599, "60 min ago"),
        (3600, "1 h ago"),
        (5 * 3600, "5 h ago"),
        (86_400, "1 day ago"),
        (10 * 86_400, "10 days ago"),
        (-600, "in 10 min"),
        (-30, "in a moment"),
    ],
)
def test_relative_ages(seconds: float, text: str) -> None:
    assert cli_output.ago(seconds) == text


def test_times_are_shown_in_the_operators_zone(tz_new_york: None) -> None:
    # 04:00 UTC is 23:00 the day before in New York (EST, UTC-5).
    assert cli_output.when(NOW - 180_000, now_ms=NOW) == "2026-12-05 22:57:00 (3 min ago)"


def test_transcript_times_are_shown_in_the_operators_zone(tz_new_york: None) -> None:
    assert cli_output.local_time("2026-12-06T04:00:00.123Z") == "2026-12-05 23:00:00"
    assert cli_output.local_time("2026-12-06T04:00:00+01:00") == "2026-12-05 22:00:00"
    assert cli_output.local_time("not a time") == "not a time"
    assert cli_output.local_time(None) == "-"


def test_a_missing_time_is_a_dash() -> None:
    assert cli_output.when(None) == "-"
    assert cli_output.when("soon") == "-"
    assert cli_output.when(True) == "-"


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (812, "812 B"), (4300, "4.2 KiB"), (3 << 20, "3.0 MiB")]
)
def test_sizes(n: int, text: str) -> None:
    assert cli_output.size(n) == text


@pytest.mark.parametrize(
    ("s", "text"),
    [(4.78, "4.8 s"), (725, "12 min 5 s"), (3 * 3600 + 120, "3 h 2 min"), (90_000, "1 day 1 h")],
)
def test_durations(s: float, text: str) -> None:
    assert cli_output.duration(s) == text


STATUS = {
    "version": "0.1.0",
    "pid": 20972,
    "startedAt": NOW - 3_600_000,
    "uptimeSeconds": 3600.2,
    "storage": "ok",
    "agents": {"main": 1, "work": 2},
    "sessions": 3,
    "lastCheckpointAt": NOW - 2_000,
    "journalBytes": 20,
    "backup": {"enabled": True, "state": "ok", "error": None, "lagBytes": 0, "lastSyncAt": NOW},
    "search": {"state": "ok", "workerPid": 21035, "error": None},
    "somethingNew": {"countOfThings": 4},
}


def test_status_reads_as_text(tz_new_york: None) -> None:
    lines = cli_output.status_lines(STATUS, now_ms=NOW)
    text = "\n".join(lines)
    assert "started             2026-12-05 22:00:00 (1 h ago)" in lines
    assert "uptime              1 h 0 min" in lines
    assert "sessions per agent  main 1, work 2" in lines
    words = [" ".join(line.split()) for line in lines]
    assert "backup:" in words and "enabled yes" in words and "error -" in words
    assert "somethingNew:" in words and "count of things 4" in words
    assert not re.search(r"\b1[0-9]{12}\b", text), "no raw epoch ms"
    assert not any(r in text for r in ("{", "None", "True", "False"))


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10)


@example({"seconds": [None]})  # Hypothesis found it: a unit key's list went to str() whole
@example({"bytes": {"a": True}, "lastSyncAt": [False]})
@given(st.dictionaries(KEYS, SCALARS | st.lists(SCALARS) | st.dictionaries(KEYS, SCALARS)))
def test_no_status_value_prints_a_python_repr(status: dict[str, object]) -> None:
    text = "\n".join(cli_output.status_lines(status, now_ms=NOW))
    plain = json.dumps(status)  # a text value may itself say "None"
    for r in ("None", "True", "False", "{'", "['"):
        assert r not in text or r in plain


def test_tables_have_a_header_and_whole_ids(capsys: pytest.CaptureFixture[str]) -> None:
    long_key = "agent:main:telegram:group:-1001234567890:topic:42"
    cli_output.print_table(
        cli_output.sessions_table(
            [{"sessionKey": long_key, "sessionId": "0b6c" * 9, "updatedAt": NOW, "totalTokens": 7}],
            now_ms=NOW,
        )
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "UPDATED",
        "SESSION",
        "KEY",
        "SESSION",
        "ID",
        "CHANNEL",
        "TOKENS",
        "COMPACTIONS",
    ]
    assert long_key in out[2] and "0b6c" * 9 in out[2], "nothing wrapped or cut in a pipe"
    assert all(line == line.rstrip() for line in out)

"""Replay's checks against compressed archives (daemon/store/recovery.py, issue 12 item 1)."""

from __future__ import annotations

import gzip
from pathlib import Path

from daemon.store.recovery import archive_content, check_archived_line, has_line

HEADER = b'{"type":"session","id":"s1"}'
LINE = b'{"type":"message","id":"00000001"}'


def test_has_line_matches_whole_lines_only() -> None:
    content = HEADER + b"\n" + LINE + b"\n"
    assert has_line(content, LINE) and has_line(content, HEADER)
    assert not has_line(content, LINE[:-1])  # a prefix of a line is not the line
    assert not has_line(content, LINE[1:])  # nor a suffix


def test_a_line_already_in_the_archive_leaves_nothing_behind(tmp_path: Path) -> None:
    gz = tmp_path / "s1.jsonl.gz"
    gz.write_bytes(gzip.compress(HEADER + b"\n" + LINE + b"\n"))
    content = archive_content(gz)
    check_archived_line("agents/main/sessions/s1.jsonl", gz, content, len(HEADER) + 1, LINE)
    check_archived_line("agents/main/sessions/s1.jsonl", gz, content, 999, LINE)  # moved offset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.jsonl.gz"]


def test_a_line_missing_from_the_archive_is_kept_aside_not_in_a_new_transcript(
    tmp_path: Path,
) -> None:
    gz = tmp_path / "s1.jsonl.gz"
    gz.write_bytes(gzip.compress(HEADER + b"\n"))
    content = archive_content(gz)
    check_archived_line("agents/main/sessions/s1.jsonl", gz, content, len(HEADER) + 1, LINE)
    assert (tmp_path / "s1.unreplayed").read_bytes() == LINE + b"\n"
    assert not (tmp_path / "s1.jsonl").exists()


def test_an_unreadable_archive_counts_as_empty(tmp_path: Path) -> None:
    gz = tmp_path / "s1.jsonl.gz"
    gz.write_bytes(b"not gzip at all")
    assert archive_content(gz) == b""

"""Transcripts: read from the end without reading the whole file; torn tails kept aside."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.ids import next_entry_id
from daemon.store import transcript
from daemon.store.transcript import iter_lines_backwards, read_tail, repair_torn_tail


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    st.integers(min_value=1, max_value=64),
)
def test_lines_backwards_match_lines_forwards(lines: list[bytes], frag: bytes, chunk: int) -> None:
    import tempfile

    content = b"".join(ln + b"\n" for ln in lines) + frag
    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, content)
        got = list(iter_lines_backwards(fd, len(content), chunk))
    finally:
        os.close(fd)
        os.unlink(path)
    expected = []
    off = 0
    for ln in lines:
        expected.append((off, ln))
        off += len(ln) + 1
    assert got == list(reversed(expected))


def test_entry_ids_count_up_and_never_collide() -> None:
    assert next_entry_id("0000000f") == "00000010"
    assert next_entry_id("ffffffff") == "00000000"
    first = next_entry_id(None)
    assert len(first) == 8 and int(first, 16) >= 0
    # An id of another form (newer OpenClaw uses UUIDs) starts a fresh random sequence.
    assert len(next_entry_id("1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed")) == 8
    ids = set()
    cur = None
    for _ in range(100_000):
        cur = next_entry_id(cur)
        ids.add(cur)
    assert len(ids) == 100_000


def test_tail_reads_last_entry_id(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    head = transcript.header_line("sid", "agent:main:main", 0, "/w")
    e1 = transcript.message_line(
        "0000000a", None, "2026-01-01T00:00:00.000Z", {"role": "user", "content": "a"}
    )
    big = transcript.message_line(
        "0000000b",
        "0000000a",
        "2026-01-01T00:00:00.000Z",
        {"role": "user", "content": "x" * 300_000},
    )
    p.write_bytes(head + b"\n" + e1 + b"\n" + big + b"\n")
    t = read_tail(p)
    assert t.last_entry_id == "0000000b" and t.size == p.stat().st_size
    p.write_bytes(head + b"\n")
    t = read_tail(p)
    assert t.last_entry_id is None and t.header is not None


def test_a_torn_last_line_is_moved_to_a_side_file(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    good = b'{"type":"session","version":3}\n{"type":"message","id":"00000001"}\n'
    p.write_bytes(good + b'{"type":"message","id":"dead')
    side = repair_torn_tail(p, 1_700_000_000_000)
    assert side is not None
    assert p.read_bytes() == good
    assert side.read_bytes() == b'{"type":"message","id":"dead'
    assert side.name.startswith("s.jsonl.torn-")
    assert repair_torn_tail(p, 1_700_000_000_000) is None


def test_entries_backwards_page_with_a_cursor(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    lines = [transcript.header_line("sid", "k", 0, "/w")]
    for i in range(10):
        lines.append(orjson.dumps({"type": "message", "id": f"{i:08x}"}))
    p.write_bytes(b"\n".join(lines) + b"\n")
    page, at_start = transcript.read_entries_backwards(p, None, 4)
    assert [e["id"] for _, e in page] == ["00000009", "00000008", "00000007", "00000006"]
    assert not at_start
    page2, at_start2 = transcript.read_entries_backwards(p, page[-1][0], 100)
    assert page2[0][1]["id"] == "00000005"
    assert len(page2) == 6 and at_start2


def test_a_zero_filled_tail_is_cut_without_a_side_file(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    good = b'{"type":"session","version":3}\n{"type":"message","id":"00000001"}\n'
    p.write_bytes(good + b"\0" * 4096)
    assert repair_torn_tail(p, 1_700_000_000_000) is None
    assert p.read_bytes() == good
    assert list(tmp_path.iterdir()) == [p]

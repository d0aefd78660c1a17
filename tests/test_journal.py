"""The journal: frames survive whole or not at all; replay stops at the first damaged frame."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.store.journal import Journal, decode_file, frame, record


def recs(n: int, tag: str = "x") -> list[bytes]:
    return [
        record("T", f"agents/main/sessions/{tag}.jsonl", i * 10, b'{"i":%d}' % i) for i in range(n)
    ]


def test_frames_decode_to_their_records() -> None:
    data = frame(recs(3)) + frame(recs(2, "y"))
    out = list(decode_file(data))
    assert [r.a for r in out] == ["agents/main/sessions/x.jsonl"] * 3 + [
        "agents/main/sessions/y.jsonl"
    ] * 2
    assert [r.b for r in out][:3] == ["0", "10", "20"]
    assert out[1].payload == b'{"i":1}'


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=8))
def test_a_torn_or_damaged_frame_and_everything_after_it_are_ignored(cut: int, junk: bytes) -> None:
    first, second = frame(recs(4)), frame(recs(3, "y"))
    data = first + second
    cut = cut % len(data)
    torn = list(decode_file(data[:cut]))
    # A prefix yields whole frames only.
    assert len(torn) in (0, 4, 7)
    if cut < len(first):
        assert torn == []
    damaged = bytearray(data)
    pos = len(first) + (cut % len(second))
    damaged[pos : pos + len(junk)] = junk
    got = list(decode_file(bytes(damaged)))
    assert len(got) in (4, 7)
    if bytes(damaged[: len(data)]) != data:
        # Bytes of the second frame changed (not merely junk appended after it).
        assert len(got) == 4


def test_generations_replay_oldest_first_and_switching_never_unlinks(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal")
    assert j.open_and_read() == []
    j.start_fresh()
    j.append(frame(recs(2, "a")))
    j.sync()
    j.switch()
    j.append(frame(recs(1, "b")))
    j.sync()
    j.close()
    names = sorted(p.name for p in (tmp_path / "journal").iterdir())
    assert names == ["a.wal", "b.wal"]
    j2 = Journal(tmp_path / "journal")
    out = j2.open_and_read()
    assert [r.a.split("/")[-1] for r in out] == ["a.jsonl", "a.jsonl", "b.jsonl"]
    j2.close()


def test_truncate_to_removes_an_unacknowledged_batch(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    j.append(frame(recs(1)))
    good = j.size
    j.append(frame(recs(5, "bad")))
    j.truncate_to(good)
    j.sync()
    j.close()
    out = Journal(tmp_path / "journal").open_and_read()
    assert len(out) == 1

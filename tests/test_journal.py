"""The journal: frames survive whole or not at all; replay stops at the first damaged frame."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.store import fileio, journal
from daemon.store.journal import Journal, Record, decode_file, frame, record


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
    j.append(recs(2, "a"))
    j.sync()
    j.switch()
    j.append(recs(1, "b"))
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
    j.append(recs(1))
    good = j.size
    j.append(recs(5, "bad"))
    j.truncate_to(good)
    j.sync()
    j.close()
    out = Journal(tmp_path / "journal").open_and_read()
    assert len(out) == 1


class Calls(fileio.FileIO):
    """The production calls, counted; `fail_pwrite` makes the next pwrite fail with ENOSPC."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_pwrite = False

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self.calls.append("pwrite")
        if self.fail_pwrite:
            self.fail_pwrite = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().pwrite(fd, data, offset)

    def ftruncate(self, fd: int, size: int) -> None:
        self.calls.append("ftruncate")
        super().ftruncate(fd, size)

    def fdatasync(self, fd: int) -> None:
        self.calls.append("fdatasync")
        super().fdatasync(fd)


@pytest.fixture
def calls() -> Iterator[Calls]:
    rec = Calls()
    old = fileio.install(rec)
    yield rec
    fileio.install(old)


def names(records: list[Record]) -> list[str]:
    return [r.a.split("/")[-1] for r in records]


def test_a_switch_to_the_ready_file_touches_no_disk(tmp_path: Path, calls: Calls) -> None:
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    assert j.ready
    j.append(recs(2, "a"))
    j.sync()
    calls.calls.clear()
    j.switch()
    assert calls.calls == []
    assert not j.ready
    j.append(recs(1, "b"))
    j.sync()
    j.close()
    # A crash now: both generations replay, the one switched away from first.
    assert names(Journal(tmp_path / "journal").open_and_read()) == ["a.jsonl"] * 2 + ["b.jsonl"]


def test_a_ready_file_replays_nothing_and_making_it_ready_frees_the_old_generation(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    j.append(recs(1, "a"))
    j.sync()
    j.close()
    # A crash with the other file ready (header only, a newer generation): only a's record.
    j = Journal(tmp_path / "journal")
    assert names(j.open_and_read()) == ["a.jsonl"]
    j.start_fresh()
    j.append(recs(1, "a"))
    j.sync()
    j.switch()
    j.append(recs(1, "b"))
    j.sync()
    # The checkpoint synced what a covered: a is ready again (a newer header), b stays active.
    j.prepare_next()
    assert j.ready
    j.append(recs(1, "c"))
    j.sync()
    j.close()
    assert names(Journal(tmp_path / "journal").open_and_read()) == ["b.jsonl", "c.jsonl"]


def test_a_file_that_could_not_be_made_ready_is_prepared_by_the_switch(
    tmp_path: Path, calls: Calls
) -> None:
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    j.switch()
    j.append(recs(1, "a"))
    j.sync()
    calls.fail_pwrite = True
    with pytest.raises(OSError):
        j.prepare_next()
    assert not j.ready
    calls.calls.clear()
    j.switch()
    assert calls.calls == ["ftruncate", "pwrite", "fdatasync"]
    j.append(recs(1, "b"))
    j.sync()
    j.close()
    assert names(Journal(tmp_path / "journal").open_and_read()) == ["a.jsonl", "b.jsonl"]


def test_a_reused_file_whose_truncation_a_power_cut_lost_replays_none_of_its_old_frames(
    tmp_path: Path,
) -> None:
    """A checkpoint makes the file it freed ready again: truncate it, write the next
    generation's header, sync. A power cut before that sync may keep the header's write and
    lose the truncation (unsynced writes survive in any subset): the new header then sits on
    top of the old frames. They were written before the checkpoint synced their transcripts
    and registry, so replaying them now, after the newer generation, would write stale history
    last (a closed session registered again: the power-loss simulation's seed 382835104)."""
    folder = tmp_path / "journal"
    j = Journal(folder)
    j.open_and_read()
    j.start_fresh()
    old_file = j.paths[j.active]
    j.append(recs(3, "old"))
    j.sync()
    old = old_file.read_bytes()
    j.switch()
    j.append(recs(1, "new"))
    j.sync()
    j.prepare_next()  # the checkpoint after the switch: the old file is made ready again
    ready = old_file.read_bytes()  # reused in place: the header, then what was there before
    nl = ready.index(b"\n")
    header = ready[: nl + 1 + int(ready[:nl].split(b"\t")[2])]
    j.close()
    assert len(header) < len(old)
    # The crash image: the header's write survived, the truncation before it did not.
    old_file.write_bytes(header + old[len(header) :])
    out = Journal(folder).open_and_read()
    assert [r.a.split("/")[-1] for r in out] == ["new.jsonl"]


def test_a_file_written_before_salts_still_replays(tmp_path: Path) -> None:
    """An upgrade over a journal that holds acknowledged batches: its header names no salt
    (`-`), and its frames' CRCs are plain; replay must still find them."""
    folder = tmp_path / "journal"
    folder.mkdir()
    old = frame([record("H", "5", "-", b"")]) + frame(recs(2, "a")) + frame(recs(1, "b"))
    (folder / "a.wal").write_bytes(old)
    out = Journal(folder).open_and_read()
    assert [r.a.split("/")[-1] for r in out] == ["a.jsonl", "a.jsonl", "b.jsonl"]


def test_a_file_made_ready_keeps_its_length_and_only_the_new_generation_replays(
    tmp_path: Path,
) -> None:
    """Files are reused in place (not truncated): the frames an older generation left after
    the new generation's end are never replayed, even a whole one that starts exactly where
    the new frames end."""
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    j.append(recs(1, "aa"))
    j.append(recs(1, "a2"))
    j.sync()
    j.switch()
    j.append(recs(1, "b"))
    j.sync()
    length = j.paths[0].stat().st_size
    j.prepare_next()
    assert j.paths[0].stat().st_size == length
    j.switch()
    j.append(recs(1, "cc"))  # as long as "aa": "a2"'s old frame follows it, whole
    j.sync()
    j.close()
    assert b"a2.jsonl" in j.paths[0].read_bytes()
    assert names(Journal(tmp_path / "journal").open_and_read()) == ["b.jsonl", "cc.jsonl"]


BIG = [record("T", "agents/main/sessions/x.jsonl", 0, b"x" * 1000)] * 100


def a_generation_worth_writing_ahead_for(tmp_path: Path) -> tuple[Journal, int]:
    """A journal whose first generation used more than PREWRITE_FROM bytes, synced and switched
    away from (not yet made ready again); and the bytes it used."""
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    while j.size < journal.PREWRITE_FROM:
        j.append(BIG)
    used = j.size
    j.sync()
    j.switch()
    return j, used


def test_the_next_file_is_written_ahead_to_twice_what_the_last_generation_used(
    tmp_path: Path,
) -> None:
    """A generation that used more than PREWRITE_FROM bytes has the file made ready after it
    written with zeros ahead, so the appends there overwrite: the file keeps its length."""
    j, used = a_generation_worth_writing_ahead_for(tmp_path)
    j.prepare_next()
    length = j.paths[0].stat().st_size
    assert length == max(journal.PREWRITE_MIN, 2 * used)
    assert j.paths[0].read_bytes()[-1000:] == bytes(1000)
    j.switch()
    j.append(BIG)
    j.sync()
    assert j.paths[0].stat().st_size == length
    j.close()
    assert len(Journal(tmp_path / "journal").open_and_read()) == 100


def test_a_file_longer_than_the_most_written_ahead_is_cut_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst may grow a file far beyond what is written ahead; making it ready again gives
    the space back (down to what is written ahead)."""
    monkeypatch.setattr(journal, "PREWRITE_FROM", 1000)
    monkeypatch.setattr(journal, "PREWRITE_MIN", 4096)
    monkeypatch.setattr(journal, "PREWRITE_MAX", 8192)
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    for _ in range(200):
        j.append(recs(1, "burst"))
    j.sync()
    assert j.paths[0].stat().st_size > 8192
    j.switch()
    j.append(recs(1, "quiet"))
    j.sync()
    j.prepare_next()
    assert j.paths[0].stat().st_size == 8192
    j.close()
    assert names(Journal(tmp_path / "journal").open_and_read()) == ["quiet.jsonl"]


def test_replay_reads_a_file_with_more_frames_than_one_read_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "READ_CHUNK", 256)
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    for k in range(40):
        j.append(recs(1, f"r{k}"))
    j.sync()
    j.close()
    want = [f"r{k}.jsonl" for k in range(40)]
    assert names(Journal(tmp_path / "journal").open_and_read()) == want


def test_a_clean_stop_writes_nothing_ahead(tmp_path: Path) -> None:
    """`start_fresh` at a stop (and a start) truncates both files: zeros written ahead then
    would be thrown away by the next start."""
    j, _used = a_generation_worth_writing_ahead_for(tmp_path)
    j.start_fresh()  # the committer's last step at a clean stop
    j.close()
    assert sum(p.stat().st_size for p in j.paths) < 1000


def test_a_full_disk_while_writing_ahead_still_makes_the_file_ready(
    tmp_path: Path, calls: Calls
) -> None:
    """Writing ahead is an optimisation: with no room for the zeros (ENOSPC), the file is made
    ready without them (appends then grow it, as before writing ahead). Failing instead would
    fail every checkpoint while the disk stays full, and the journal would never switch."""
    j, _used = a_generation_worth_writing_ahead_for(tmp_path)
    real = calls.pwrite

    def no_room_for_zeros(fd: int, data: bytes | memoryview, offset: int) -> int:
        if offset > 0:  # the header (at 0) fits; the zeros after it do not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    calls.pwrite = no_room_for_zeros  # type: ignore[method-assign]
    j.prepare_next()
    assert j.ready
    calls.pwrite = real  # type: ignore[method-assign]
    j.switch()
    j.append(recs(2, "after"))
    j.sync()
    j.close()
    assert names(Journal(tmp_path / "journal").open_and_read())[-2:] == ["after.jsonl"] * 2


def test_start_up_writes_both_files_ahead_and_replay_is_unchanged(tmp_path: Path) -> None:
    """`start_fresh(ahead=...)` (start-up) writes zeros ahead into the active file and the
    ready one, so the first generation's appends overwrite (the file keeps its length), and a
    restart replays exactly what was appended, nothing of the zeros or the old frames."""
    ahead = 256 << 10
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh()
    j.append(recs(5, "old"))  # a generation replayed by the start below: its frames stay behind
    j.sync()
    j.close()
    j = Journal(tmp_path / "journal")
    assert names(j.open_and_read()) == ["old.jsonl"] * 5
    j.start_fresh(ahead=ahead)
    lengths = [p.stat().st_size for p in j.paths]
    assert lengths == [ahead, ahead]
    j.append(recs(3, "new"))
    j.sync()
    assert [p.stat().st_size for p in j.paths] == lengths
    j.close()
    assert names(Journal(tmp_path / "journal").open_and_read()) == ["new.jsonl"] * 3


def test_a_file_made_ready_after_a_small_generation_keeps_what_start_up_wrote_ahead(
    tmp_path: Path,
) -> None:
    """A generation that used less than PREWRITE_FROM (an idle second) does not shrink what
    start-up wrote ahead: a burst after a quiet start overwrites too."""
    ahead = 256 << 10
    j = Journal(tmp_path / "journal")
    j.open_and_read()
    j.start_fresh(ahead=ahead)
    for n in range(3):
        j.append(recs(1, f"g{n}"))
        j.sync()
        j.switch()
        j.prepare_next()
        assert min(p.stat().st_size for p in j.paths) >= ahead
    j.append(recs(1, "last"))
    j.sync()
    j.close()
    assert names(Journal(tmp_path / "journal").open_and_read())[-1] == "last.jsonl"


def test_reading_stops_at_the_zeros_written_ahead_without_asking_for_more_of_the_file() -> None:
    """Zeros after the last frame end replay where they begin: they cannot begin a frame, so
    replay need not read the rest of a file written ahead (up to 64 MiB) to find a newline."""
    data = frame(recs(2)) + b"\0" * 4096
    ended: list[bool] = []
    assert len(list(decode_file(data, ended))) == 2
    assert ended == []
    # A header line cut short at the end of what was read does ask for more.
    short: list[bool] = []
    assert len(list(decode_file(frame(recs(2)) + b"B\t1234", short))) == 2
    assert short == [True]


def test_replay_of_a_file_written_ahead_reads_only_its_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "READ_CHUNK", 4096)
    path = tmp_path / "journal.0"
    path.write_bytes(frame(recs(3)) + b"\0" * (8 << 20))
    reads: list[int] = []
    real_pread = journal.os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(journal.os, "pread", pread)
    fd = journal.os.open(path, journal.os.O_RDONLY)
    try:
        assert len(Journal._read(fd, path.stat().st_size)) == 3
    finally:
        journal.os.close(fd)
    assert reads == [4096]

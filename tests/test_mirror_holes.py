"""A mirror with a hole: a power cut left a zero-filled page in the middle of a
`history.jsonl`, with complete records after it (issue 12, item 3). The mirror refills it from the
transcript when the session is next located, keeps the damaged file, doubles nothing;
`backup verify` names the lost entries and `doctor` reports the hole."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from test_backup import job, mirrored_lines, write_transcript

from daemon import failpoints
from daemon.core.holes import damaged_lines, is_all_zeros, summarize
from daemon.store import backup as files
from daemon.store.backup import catch_up, key_of_record, read_records
from daemon.verify import verify

PAGE = 4096


def zero_page_in_the_middle(live: Path) -> None:
    """What a power cut leaves: one page of the file never written, later pages written."""
    data = bytearray(live.read_bytes())
    assert len(data) > 3 * PAGE, "the mirror must span a few pages"
    data[PAGE : 2 * PAGE] = bytes(PAGE)
    live.write_bytes(bytes(data))


def setup(tmp_path: Path, n: int = 60) -> tuple[Path, Path, Path, list[bytes]]:
    state = tmp_path / "state"
    t = state / "agents" / "main" / "sessions" / "s1.jsonl"
    root = tmp_path / "backup"
    lines = write_transcript(t, n)
    catch_up(root, [job(t)])
    return state, t, root, lines


def test_damaged_lines_finds_zeros_and_garbage_but_not_the_torn_tail() -> None:
    data = b'{"a":1}\n' + b"\x00" * 10 + b'1}\n{"b":2}\nnot json\n{"torn'
    found = damaged_lines(data, lambda line: line.startswith(b"{"), base=100)
    assert [(d.offset, d.length, d.zeros) for d in found] == [(108, 12, True), (129, 8, False)]
    assert summarize(found) == "2 damaged line(s), 20 bytes, mixed at offset 108, 129"
    assert is_all_zeros(b"\x00" * 5) and not is_all_zeros(b"") and not is_all_zeros(b"\x00a")


def test_a_zeroed_page_in_the_middle_is_reported_by_verify_and_refilled_at_locate(
    tmp_path: Path,
) -> None:
    state, t, root, lines = setup(tmp_path)
    live = files.live_path(root, "s1")
    zero_page_in_the_middle(live)
    damaged = live.read_bytes()
    report = verify(state, root)
    assert not report.ok
    (d,) = report.diffs
    assert len(d.missing) >= 2 and not d.doubled and not d.extra  # the entries in the hole

    # New lines arrive; the next locate (a restart, doctor --repair) refills the hole.
    lines += write_transcript(t, 3, 60, header=False)
    done = catch_up(root, [job(t)])
    assert mirrored_lines(root) == lines  # in transcript order, nothing missing
    keys = [key_of_record(r) for r in read_records(root, "s1")]
    assert len(keys) == len(set(keys))  # nothing doubled
    assert done.records == len(d.missing) + 3
    assert verify(state, root).ok
    (kept,) = live.parent.glob("history.jsonl.damaged-*")
    assert kept.read_bytes() == damaged  # the damaged bytes are kept as they were
    assert catch_up(root, [job(t)]).records == 0


def test_a_hole_is_refilled_even_when_nothing_new_arrives(tmp_path: Path) -> None:
    state, t, root, lines = setup(tmp_path)
    zero_page_in_the_middle(files.live_path(root, "s1"))
    catch_up(root, [job(t)])
    assert mirrored_lines(root) == lines
    assert verify(state, root).ok


def test_a_crash_between_keeping_and_replacing_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, t, root, lines = setup(tmp_path)
    live = files.live_path(root, "s1")
    zero_page_in_the_middle(live)
    monkeypatch.setattr(failpoints, "_armed", failpoints.parse("mirror.refill_kept=eio"))
    with pytest.raises(OSError):
        catch_up(root, [job(t)])
    monkeypatch.setattr(failpoints, "_armed", None)
    assert not live.exists() and list(live.parent.glob("history.jsonl.damaged-*"))
    catch_up(root, [job(t)])  # no live file: mirrored again from the transcript's start
    assert mirrored_lines(root) == lines
    assert verify(state, root).ok


def test_records_only_the_mirror_holds_stay_in_place(tmp_path: Path) -> None:
    _state, t, root, lines = setup(tmp_path)
    live = files.live_path(root, "s1")
    recs = live.read_bytes().splitlines(keepends=True)
    extra = orjson.loads(recs[-5])
    extra["metadata"]["entryId"] = "ffffffff"
    live.write_bytes(b"".join(recs[:-4]) + orjson.dumps(extra) + b"\n" + b"".join(recs[-4:]))
    zero_page_in_the_middle(live)
    catch_up(root, [job(t)])
    got = [key_of_record(r) for r in read_records(root, "s1")]
    assert "ffffffff" in got and len(got) == len(set(got)) == len(lines) + 1

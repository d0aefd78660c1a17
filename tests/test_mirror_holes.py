"""A mirror with a hole: a power cut left a zero-filled page in the middle of a
`history.jsonl`, with complete records after it (issue 12, item 3). The mirror refills it from the
transcript when the session is next located, keeps the damaged file, doubles nothing;
`backup verify` names the lost entries and `doctor` reports the hole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from test_backup import job, mirrored_lines, write_transcript

from daemon import failpoints
from daemon.core.holes import damaged_lines, is_all_zeros, summarize
from daemon.doctor import run_doctor
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


# ---------------------------------------------------------------------------------------------
# doctor


def findings(state: Path, *, repair: bool = False) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for f in run_doctor(state, None, repair=repair).findings:
        out.setdefault(f.check, []).append(f)
    return out


def doctor_folder(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    """A state folder whose one session is mirrored in the default place (<state>/backup)."""
    state = tmp_path / "state"
    t = state / "agents" / "main" / "sessions" / "s1.jsonl"
    lines = write_transcript(t, 60)
    catch_up(state / "backup", [job(t)])
    return state, t, lines


def test_doctor_reports_a_mirror_hole_and_repair_refills_it(tmp_path: Path) -> None:
    state, _t, lines = doctor_folder(tmp_path)
    root = state / "backup"
    live = files.live_path(root, "s1")
    assert [f.level for f in findings(state)["holes"]] == ["ok"]
    zero_page_in_the_middle(live)
    before = live.read_bytes()
    (hole,) = findings(state)["holes"]
    assert hole.level == "warning" and "zero-filled at offset 4," in hole.message
    assert "refill it from the transcript" in (hole.action or "")
    assert live.read_bytes() == before  # nothing changes without --repair
    (fixed,) = [f for f in findings(state, repair=True)["holes"] if f.fix is not None]
    assert fixed.outcome == "repaired"
    assert mirrored_lines(root) == lines and verify(state, root).ok
    assert [f.level for f in findings(state)["holes"]] == ["ok"]


def test_doctor_reports_a_mirror_gap_and_repair_fills_it_in_place(tmp_path: Path) -> None:
    state, _t, lines = doctor_folder(tmp_path)
    root = state / "backup"
    live = files.live_path(root, "s1")
    recs = live.read_bytes().splitlines(keepends=True)
    live.write_bytes(b"".join(recs[:10] + recs[12:]))  # two records lost, no damaged byte
    (gap,) = findings(state)["mirror-gap"]
    assert gap.level == "warning" and "2 record(s) missing" in gap.message
    assert "0000000a, 0000000b" in gap.message
    findings(state, repair=True)
    assert mirrored_lines(root) == lines
    assert [f.level for f in findings(state)["mirror-gap"]] == ["ok"]


def test_doctor_reports_a_transcript_hole_and_zero_filled_torn_files(tmp_path: Path) -> None:
    state, t, _lines = doctor_folder(tmp_path)
    data = bytearray(t.read_bytes())
    data[PAGE : PAGE + 600] = bytes(600)
    t.write_bytes(bytes(data))
    (state / "backup" / "s1" / "history.jsonl.torn-1795000000000").write_bytes(bytes(4096))
    (t.parent / "s1.jsonl.torn-1795000000001").write_bytes(b'{"type":"mess')  # real data
    found = findings(state)
    (hole,) = found["holes"][:1]
    assert hole.level == "warning" and "transcript agents/main/sessions/s1.jsonl" in hole.message
    assert "zero-filled" in hole.message and hole.fix is None  # a transcript is never rewritten
    (zeros,) = found["torn-zeros"]
    assert zeros.level == "info" and "1 torn side file(s), 4,096 bytes" in zeros.message
    assert "history.jsonl.torn-1795000000000" in zeros.message
    assert "s1.jsonl.torn-" not in zeros.message


def test_a_line_of_a_transcript_that_is_not_json_is_only_noted(tmp_path: Path) -> None:
    state, t, _lines = doctor_folder(tmp_path)
    data = t.read_bytes().split(b"\n")
    t.write_bytes(b"\n".join([*data[:5], b"an OpenClaw fragment", *data[5:]]))
    (hole,) = findings(state)["holes"][:1]
    assert hole.level == "info" and "garbled" in hole.message and hole.fix is None

"""The idempotency index's persistence: each checkpoint appends what was remembered since the one
before (not everything known), the log is folded into a snapshot once it has grown, and a
restart knows every id written, whichever of the two holds it."""

from __future__ import annotations

from pathlib import Path

import orjson

from daemon.store import dedup as dedup_mod
from daemon.store.dedup import FOLD_MIN, DedupIndex

DAY_MS = 86_400_000
NOW = 1_800_000_000_000


def _answer(n: int) -> dict[str, object]:
    return {"sessionKey": "agent:main:main", "entryId": f"e{n}"}


def _remember(index: DedupIndex, first: int, count: int) -> None:
    for n in range(first, first + count):
        index.remember("main", ("telegram", "default", f"m{n}"), NOW + n, _answer(n))


def _checkpoint(index: DedupIndex) -> None:
    index.save(index.snapshots())


def _reloaded(folder: Path, max_per_agent: int = 1_000_000) -> DedupIndex:
    again = DedupIndex(folder, max_per_agent, DAY_MS)
    again.load(NOW)
    return again


def _log_lines(folder: Path) -> int:
    """Ids in the log (a line per checkpoint)."""
    return sum(len(orjson.loads(x)) for x in (folder / "main.log").read_bytes().splitlines())


def test_each_checkpoint_appends_only_the_new_ids(tmp_path: Path) -> None:
    folder = tmp_path / "dedup"
    folder.mkdir()
    index = DedupIndex(folder, 1_000_000, DAY_MS)
    _remember(index, 0, 100)
    _checkpoint(index)
    assert _log_lines(folder) == 100
    _remember(index, 100, 30)
    snaps = index.snapshots()
    assert [(agent, len(s.items), s.whole) for agent, s in snaps] == [("main", 30, False)]
    index.save(snaps)
    assert _log_lines(folder) == 130
    assert index.snapshots() == []  # nothing new: nothing to write
    again = _reloaded(folder)
    hit = again.lookup("main", ("telegram", "default", "m129"))
    assert hit == _answer(129)
    assert len(again.agents["main"].answers) == 130


def test_the_log_is_folded_into_a_snapshot_once_it_has_grown(tmp_path: Path) -> None:
    folder = tmp_path / "dedup"
    folder.mkdir()
    index = DedupIndex(folder, 100, DAY_MS)  # keeps the newest 100 ids
    n = 0
    folded = False
    while not folded:
        _remember(index, n, 500)
        n += 500
        index.trim_all(NOW + n)
        snaps = index.snapshots()
        folded = any(s.whole for _a, s in snaps)
        index.save(snaps)
        assert n <= 2 * FOLD_MIN, "the log was never folded"
    assert (folder / "main.log").read_bytes() == b""
    again = _reloaded(folder, max_per_agent=100)
    assert len(again.agents["main"].answers) == 100
    assert again.lookup("main", ("telegram", "default", f"m{n - 1}")) == _answer(n - 1)
    assert again.lookup("main", ("telegram", "default", f"m{n - 101}")) is None
    # After the fold, appending starts again from the snapshot.
    _remember(again, n, 3)
    _checkpoint(again)
    assert _log_lines(folder) == 3
    assert _reloaded(folder, 100).lookup("main", ("telegram", "default", f"m{n + 2}")) is not None


def test_a_torn_last_line_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    folder = tmp_path / "dedup"
    folder.mkdir()
    index = DedupIndex(folder, 1_000_000, DAY_MS)
    _remember(index, 0, 5)
    _checkpoint(index)
    with (folder / "main.log").open("ab") as f:
        f.write(b'[[["telegram","default","m5"],[1')  # a crash in the middle of an append
    again = _reloaded(folder)
    assert len(again.agents["main"].answers) == 5
    assert again.lookup("main", ("telegram", "default", "m5")) is None


def test_a_failed_checkpoint_is_made_good_by_a_whole_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "dedup"
    folder.mkdir()
    index = DedupIndex(folder, 1_000_000, DAY_MS)
    _remember(index, 0, 10)
    lost = index.snapshots()  # taken, but its write failed (never saved)
    assert lost and not lost[0][1].whole
    index.changed("main")  # what the committer does when a checkpoint fails
    _remember(index, 10, 2)
    snaps = index.snapshots()
    assert [(len(s.items), s.whole) for _a, s in snaps] == [(12, True)]
    index.save(snaps)
    assert len(_reloaded(folder).agents["main"].answers) == 12


def test_snapshots_written_by_the_previous_format_are_read(tmp_path: Path) -> None:
    """A state folder from before the log: `<agent>.json` alone."""
    folder = tmp_path / "dedup"
    folder.mkdir()
    (folder / "main.json").write_bytes(
        b'[{"k":["telegram","default","old"],"t":%d,"r":{"entryId":"x"}}]' % NOW
    )
    again = _reloaded(folder)
    assert again.lookup("main", ("telegram", "default", "old")) == {"entryId": "x"}
    assert dedup_mod.LOG == ".log"


def test_records_saved_in_chunks_are_the_bytes_of_one_array() -> None:
    # Chunked so the event loop gets the interpreter lock between chunks; the file must not
    # tell the difference (loading parses one JSON array per line).
    for n in (0, 1, dedup_mod.CHUNK - 1, dedup_mod.CHUNK, dedup_mod.CHUNK + 1, 3 * dedup_mod.CHUNK):
        items: dedup_mod.Items = [
            (("telegram", "default", f"m{i}"), (i, {"sessionId": f"s{i}", "created": i == 0}))
            for i in range(n)
        ]
        assert dedup_mod.dump_records(items) == orjson.dumps(items), n

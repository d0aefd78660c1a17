"""The idempotency index's persistence costs what changed: a checkpoint appends the ids it
remembered since the last one to the agent's log, the snapshot is rewritten only once the log
holds as many ids as it, and loading sees snapshot + log (store/dedup.py)."""

from __future__ import annotations

from pathlib import Path

from daemon.store.dedup import MIN_LOGGED, DedupIndex, DedupKey

NOW = 1_800_000_000_000
DAY = 86_400_000


def index(folder: Path, max_ids: int = 100_000) -> DedupIndex:
    d = DedupIndex(folder, max_ids, DAY)
    d.load(NOW)
    return d


def key(n: int) -> DedupKey:
    return ("telegram", "default", f"m{n}")


def remember(d: DedupIndex, ns: range, agent: str = "main") -> None:
    for n in ns:
        d.remember(agent, key(n), NOW + n, {"sessionId": "s", "entryId": f"e{n}"})


def checkpoint(d: DedupIndex) -> list[bool]:
    """One checkpoint's writes; returns, per agent written, whether it rewrote the snapshot."""
    snaps = d.snapshots()
    d.save(snaps)
    return [s.full for _agent, s in snaps]


def test_ids_logged_since_the_snapshot_are_known_after_a_restart(tmp_path: Path) -> None:
    d = index(tmp_path)
    remember(d, range(0, 1000))
    assert checkpoint(d) == [True], "the first checkpoint writes the snapshot"
    snapshot = (tmp_path / "main.json").read_bytes()
    remember(d, range(1000, 1010))
    assert checkpoint(d) == [False], "ten new ids are appended, not the thousand rewritten"
    remember(d, range(1010, 1020))
    assert checkpoint(d) == [False]
    assert (tmp_path / "main.json").read_bytes() == snapshot
    assert (tmp_path / "main.json.delta").stat().st_size > 0
    d.close()
    again = index(tmp_path)
    for n in range(1020):
        assert again.lookup("main", key(n)) == {"sessionId": "s", "entryId": f"e{n}"}
    assert again.lookup("main", key(1020)) is None


def test_the_snapshot_is_rewritten_once_the_log_holds_as_many_ids(tmp_path: Path) -> None:
    d = index(tmp_path)
    remember(d, range(0, MIN_LOGGED))
    assert checkpoint(d) == [True]
    written = []
    for i in range(1, 12):
        remember(d, range(MIN_LOGGED * i, MIN_LOGGED * i + MIN_LOGGED // 4))
        written += checkpoint(d)
    # Each rewrite comes after at least as many logged ids as the snapshot held: the bytes
    # written per id stay bounded however many ids there are.
    assert written.count(True) >= 1
    assert written.count(False) >= 2 * written.count(True)
    d.close()
    again = index(tmp_path)
    for i in range(1, 12):
        n = MIN_LOGGED * i
        assert again.lookup("main", key(n)) is not None


def test_a_failed_checkpoint_makes_the_next_one_rewrite_the_snapshot(tmp_path: Path) -> None:
    d = index(tmp_path)
    remember(d, range(0, 1000))
    checkpoint(d)
    remember(d, range(1000, 1005))
    snaps = d.snapshots()  # taken, then the write "failed": the committer marks it changed
    assert [s.full for _a, s in snaps] == [False]
    d.changed("main")
    assert checkpoint(d) == [True], "the ids of the failed checkpoint are in the rewrite"
    d.close()
    assert index(tmp_path).lookup("main", key(1004)) is not None


def test_a_log_on_top_of_another_snapshot_is_ignored(tmp_path: Path) -> None:
    d = index(tmp_path)
    remember(d, range(0, 1000))
    checkpoint(d)
    remember(d, range(1000, 1010))
    checkpoint(d)
    d.close()
    # Someone else's snapshot (a restore, a copy) replaces ours: our log is not its changes.
    other = DedupIndex(tmp_path / "other", 100_000, DAY)
    other.load(NOW)
    remember(other, range(5000, 5003))
    checkpoint(other)
    other.close()
    (tmp_path / "main.json").write_bytes((tmp_path / "other" / "main.json").read_bytes())
    again = index(tmp_path)
    assert again.lookup("main", key(5000)) is not None
    assert again.lookup("main", key(1005)) is None


def test_the_bounds_apply_to_logged_ids_after_a_restart(tmp_path: Path) -> None:
    d = index(tmp_path, max_ids=300)
    remember(d, range(0, 300))
    checkpoint(d)
    remember(d, range(300, 400))
    d.trim_all(NOW)
    assert checkpoint(d) == [False]
    d.close()
    again = index(tmp_path, max_ids=300)
    assert again.lookup("main", key(99)) is None, "the oldest ids left by the count bound"
    assert again.lookup("main", key(100)) is not None
    assert again.lookup("main", key(399)) is not None

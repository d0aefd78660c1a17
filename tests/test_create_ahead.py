"""New transcripts are created ahead, when the session is begun (store/open_transcripts.py):
the batch that writes the session takes that file; a session whose batch is never written
leaves no file behind, whether its batch failed or the store closed first; one a crash left
empty and unnamed is set aside at start-up, not removed."""

from __future__ import annotations

from pathlib import Path

import orjson

from daemon.store.store import Batch, Store


def open_store(state: Path) -> Store:
    s = Store(state, dedup_max=10_000, dedup_window_ms=86_400_000)
    s.open()
    return s


def begin(store: Store, batch: Batch, key: str) -> str:
    """Begin a session in `batch` as the applier does; returns its transcript's path."""
    st, header = store.create_session("main", key, 1_000, {"chatType": "direct"})
    store.register(st)
    batch.created.append(st)
    store.add_line(batch, st, header, None)
    return str(store.state_dir / st.rel_path)


def sessions_folder(state: Path) -> dict[str, bytes]:
    folder = state / "agents" / "main" / "sessions"
    return {p.name: p.read_bytes() for p in folder.glob("*.jsonl")}


def test_the_written_batch_takes_the_file_created_ahead(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    batch = Batch()
    paths = [begin(store, batch, f"agent:main:direct:{i}") for i in range(20)]
    store.write_batch(batch)
    store.apply(batch)
    store.close()
    files = sessions_folder(tmp_path)
    assert sorted(files) == sorted(Path(p).name for p in paths)
    for name, data in files.items():
        (header,) = data.splitlines()  # exactly the header, written once
        assert orjson.loads(header)["id"] == name.removesuffix(".jsonl")


def with_one_written_session(tmp_path: Path) -> tuple[Store, str]:
    """An open store with one session begun and written; the path of its transcript."""
    store = open_store(tmp_path)
    batch = Batch()
    kept = begin(store, batch, "agent:main:direct:kept")
    store.write_batch(batch)
    store.apply(batch)
    return store, kept


def test_a_batch_never_written_leaves_no_file(tmp_path: Path) -> None:
    store, kept = with_one_written_session(tmp_path)
    failed = Batch()
    gone = [begin(store, failed, f"agent:main:direct:{i}") for i in range(5)]
    store.fail(failed)  # as the committer does when a batch cannot be written
    assert sorted(sessions_folder(tmp_path)) == [Path(kept).name]
    assert all(not Path(p).exists() for p in gone)
    store.close()


def test_sessions_begun_when_the_store_closes_leave_no_file(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    batch = Batch()
    for i in range(5):
        begin(store, batch, f"agent:main:direct:{i}")
    store.close()  # the daemon stops with this batch prepared but not written
    assert sessions_folder(tmp_path) == {}
    again = open_store(tmp_path)  # and start-up finds nothing to recover
    assert sessions_folder(tmp_path) == {}
    again.close()


def test_an_empty_transcript_a_crash_left_is_set_aside_at_start_up(tmp_path: Path) -> None:
    store, kept = with_one_written_session(tmp_path)
    store.checkpoint_sync(*store.switch_journal(), store.dirty_registries(), [])
    crashed = Batch()
    left = Path(begin(store, crashed, "agent:main:direct:begun"))
    store.files._take(left.stem)  # created, and the daemon dies before the batch's write
    assert left.exists() and left.stat().st_size == 0
    again = open_store(tmp_path)  # without `close`: as after a crash
    # Not a session (no registry entry, not under a transcript's name), and not removed.
    assert sorted(sessions_folder(tmp_path)) == [Path(kept).name]
    assert {st.session_id for st in again.by_id.values()} == {Path(kept).stem}
    aside = left.with_name(left.name + ".unwritten")
    assert aside.exists() and aside.stat().st_size == 0
    again.close()
    third = open_store(tmp_path)  # and it stays where it is
    assert aside.exists() and sorted(sessions_folder(tmp_path)) == [Path(kept).name]
    third.close()


def test_an_empty_transcript_the_journal_names_gets_its_lines(tmp_path: Path) -> None:
    """Replay runs before empty files are set aside: a new transcript whose batch was
    journaled, but whose lines the crash kept from it, is the session's, and is registered."""
    store = open_store(tmp_path)
    batch = Batch()
    path = Path(begin(store, batch, "agent:main:direct:journaled"))
    store.write_batch(batch)
    with open(path, "r+b") as f:  # the lines' write lost (a power cut): an empty file
        f.truncate(0)
    again = open_store(tmp_path)  # without `close`: as after a crash
    assert {st.session_id for st in again.by_id.values()} == {path.stem}
    (header,) = path.read_bytes().splitlines()
    assert orjson.loads(header)["id"] == path.stem
    assert not path.with_name(path.name + ".unwritten").exists()
    again.close()

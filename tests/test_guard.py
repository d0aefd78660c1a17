"""The never-delete guard (daemon/guard.py) that watches the whole suite: what it refuses, what it
lets through, and that it checks compressed copies itself instead of trusting the caller."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.guard import GUARD
from daemon.store.fsutil import atomic_write


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state folder (as the lock file marks it) with one transcript."""
    s = tmp_path / "state"
    (s / "agents" / "main" / "sessions").mkdir(parents=True)
    (s / "sessiond.lock").write_text("1\n")
    (s / "agents" / "main" / "sessions" / "t.jsonl").write_bytes(b'{"type":"session"}\n')
    yield s
    GUARD.violations.clear()  # this module provokes them on purpose


def refused(action: object) -> str:
    """Run `action`; it must be refused. Returns the recorded violation (and forgets it)."""
    with pytest.raises(PermissionError, match="delete guard"):
        action()  # type: ignore[operator]
    assert len(GUARD.violations) == 1
    return GUARD.violations.pop()


def test_removing_a_transcript_is_refused_and_it_stays(state: Path) -> None:
    t = state / "agents" / "main" / "sessions" / "t.jsonl"
    assert "remove" in refused(lambda: os.unlink(t))
    refused(lambda: t.unlink())
    assert t.read_bytes() == b'{"type":"session"}\n'


def test_an_empty_file_may_go_but_not_once_a_byte_is_in_it(state: Path) -> None:
    t = state / "agents" / "main" / "sessions" / "new.jsonl"
    t.write_bytes(b"")
    os.unlink(t)  # nothing in it to lose (a new transcript whose first write failed)
    assert not t.exists() and not GUARD.violations
    t.write_bytes(b"\n")
    refused(lambda: os.unlink(t))
    assert t.read_bytes() == b"\n"


def test_removing_a_tree_or_a_folder_that_holds_state_is_refused(state: Path) -> None:
    refused(lambda: shutil.rmtree(state))
    refused(lambda: shutil.rmtree(state.parent))  # holds a state folder
    empty = state / "agents" / "empty"
    empty.mkdir()
    refused(lambda: os.rmdir(empty))
    assert (state / "agents" / "main" / "sessions" / "t.jsonl").exists()


def test_an_emptied_mirror_folder_may_go_but_nothing_else_in_a_backup(tmp_path: Path) -> None:
    root = tmp_path / "backup"
    root.mkdir()
    (root / "sessiond-backup.json").write_text("{}\n")
    for sid in ("s1", "s4"):
        (root / "archive" / sid).mkdir(parents=True)
        (root / "archive" / sid / "history.jsonl.gz").write_bytes(gzip.compress(b"x\n"))
        (root / sid).mkdir()
    (root / "s4" / "note").write_bytes(b"")  # compressed, but something is in the folder
    (root / "s2").mkdir()  # empty, but nothing of it is compressed
    (root / "s3" / "sub").mkdir(parents=True)  # not a mirror's folder
    refused(lambda: os.rmdir(root / "s2"))
    refused(lambda: os.rmdir(root / "s3" / "sub"))
    refused(lambda: os.rmdir(root / "s4"))
    (root / "archive" / "s5").mkdir()
    refused(lambda: os.rmdir(root / "archive" / "s5"))  # inside the archive: never
    os.rmdir(root / "s1")
    assert not (root / "s1").exists()
    assert (root / "s4" / "note").exists()
    assert (root / "archive" / "s1" / "history.jsonl.gz").exists()


def test_renaming_over_a_transcript_is_refused_but_a_move_is_not(state: Path) -> None:
    folder = state / "agents" / "main" / "sessions"
    other = folder / "u.jsonl"
    other.write_bytes(b"x\n")
    refused(lambda: os.replace(other, folder / "t.jsonl"))
    tmp = folder / ".t.jsonl.tmp-1"
    tmp.write_bytes(b"")
    refused(lambda: os.replace(tmp, folder / "t.jsonl"))  # transcripts are never rewritten
    (folder / "archive").mkdir()
    os.rename(folder / "t.jsonl", folder / "archive" / "t.jsonl")  # a move loses nothing
    assert not GUARD.violations


def test_our_temporary_files_the_socket_and_atomic_updates_may_go(state: Path) -> None:
    folder = state / "agents" / "main" / "sessions"
    atomic_write(folder / "sessions.json", b"{}")
    atomic_write(folder / "sessions.json", b'{"a": 1}')  # replaces the old one atomically
    (folder / ".x.jsonl.gz.tmp-123").write_bytes(b"")
    os.unlink(folder / ".x.jsonl.gz.tmp-123")
    (folder / ".y.jsonl.import-9").write_bytes(b"")
    os.unlink(folder / ".y.jsonl.import-9")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(state / "sessiond.sock"))
    s.close()
    os.unlink(state / "sessiond.sock")
    (state / "index").mkdir()
    (state / "index" / "search.sqlite3").write_bytes(b"x")
    shutil.rmtree(state / "index")  # derived: "can be deleted and rebuilt at any time"
    assert not GUARD.violations


def test_an_original_may_go_only_once_its_compressed_copy_is_verified(state: Path) -> None:
    t = state / "agents" / "main" / "sessions" / "t.jsonl"
    gz = t.with_name("t.jsonl.gz")
    gz.write_bytes(gzip.compress(b"something else\n"))
    refused(lambda: os.unlink(t))  # the copy is not of this file
    gz.write_bytes(gzip.compress(t.read_bytes())[:-4])
    refused(lambda: os.unlink(t))  # a torn copy
    gz.write_bytes(gzip.compress(t.read_bytes()))
    os.unlink(t)
    assert not GUARD.violations


def test_a_backup_mirror_is_guarded_and_its_compressed_archive_counts(tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    live = bk / "s1" / "history.jsonl"
    live.parent.mkdir(parents=True)
    (bk / "sessiond-backup.json").write_text("{}")
    live.write_bytes(b'{"role":"user"}\n')
    refused(lambda: os.unlink(live))
    arch = bk / "archive" / "s1"
    arch.mkdir(parents=True)
    (arch / "history.jsonl.gz").write_bytes(gzip.compress(live.read_bytes()))
    os.unlink(live)
    assert not GUARD.violations


def test_outside_state_and_backup_folders_nothing_is_watched(tmp_path: Path) -> None:
    (tmp_path / "agents").mkdir()  # an OpenClaw source folder is not ours
    (tmp_path / "agents" / "x.jsonl").write_bytes(b"")
    os.unlink(tmp_path / "agents" / "x.jsonl")
    shutil.rmtree(tmp_path / "agents")
    assert not GUARD.violations


def test_a_daemon_process_with_the_variable_set_refuses_and_reports(
    state: Path, tmp_path: Path
) -> None:
    report = tmp_path / "violations.log"
    code = (
        "import os,sys; from daemon import guard; guard.install_from_env();"
        "p=sys.argv[1]\n"
        "try: os.unlink(p)\n"
        "except PermissionError as e: print('refused', e)"
    )
    t = state / "agents" / "main" / "sessions" / "t.jsonl"
    env = {**os.environ, "SESSIOND_DELETE_GUARD": str(report)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(t)], env=env, capture_output=True, text=True, timeout=30
    )
    assert "refused" in out.stdout, out.stderr
    assert t.exists()
    assert "remove" in report.read_text() and str(t) in report.read_text()
    report.unlink()

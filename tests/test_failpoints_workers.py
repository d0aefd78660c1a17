"""A failpoint of the daemon's own steps (failpoints.NAMES) reached in a worker process: the
archive moves run in one (daemon/archiving.py). `exit` there must end the daemon, as a power cut
ends both, with the failpoint's line on the daemon's stderr, where the crash tests look for it;
the worker's own stderr goes to /dev/null."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from daemon.failpoints import ENV, EXIT_CODE

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anyio

    from daemon.store import archive
    from daemon.workers import Pool

    async def main() -> None:
        pool = Pool("archive", 1)
        path = Path(sys.argv[1])
        item = archive.ToArchive(path, "main", "idle", "s1", "agent:main:main", None, None, 1)
        try:
            res = await pool.run(archive.archive_transcripts, [item])
        finally:
            await pool.aclose()
        print("the daemon went on:", res)

    anyio.run(main)
    """
)


def run(tmp_path: Path, spec: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "agents" / "main" / "sessions"
    folder.mkdir(parents=True)
    path = folder / "s1.jsonl"
    path.write_bytes(
        b'{"type":"session","version":3,"id":"s1","timestamp":"2026-01-01T00:00:00Z"}\n'
    )
    env = {**os.environ, ENV: spec}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_an_exit_failpoint_in_the_archive_worker_ends_the_daemon(tmp_path: Path) -> None:
    done = run(tmp_path, "archive.after_move=exit")
    assert done.returncode == EXIT_CODE, done.stdout + done.stderr
    assert "failpoint archive.after_move fired" in done.stderr
    assert "the daemon went on" not in done.stdout
    # Stopped right after the move, as a crash there would: moved, not yet indexed.
    archived = tmp_path / "agents" / "main" / "sessions" / "archive"
    assert (archived / "s1.jsonl").is_file()
    assert not (archived / "index.jsonl").exists()


def test_an_error_failpoint_in_the_worker_fails_only_that_file(tmp_path: Path) -> None:
    done = run(tmp_path, "archive.after_move=eio")
    assert done.returncode == 0, done.stderr
    assert "the daemon went on: [OSError(5," in done.stdout

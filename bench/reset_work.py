"""The reset job's worker work, in this process: CPU per session of the archive moves and of the
memory flushes (the jobs the daemon's archive and memory-flush workers run).

    python bench/reset_work.py [--sessions 10000] [--rounds 3] [--profile archive|flush]

Writes `--sessions` one-message transcripts like bench/isolation.py's reset sessions, then, as a
reset job does: moves them into archive/ in calls of ARCHIVE_GROUP (daemon/archiving.py) and
flushes them in calls of RESET_FLUSH_GROUP (daemon/reset_flushes.py) with the builtin
summarizer. Prints the CPU microseconds per session of each (this process's user + system time:
figures the machine's load moves much less than latency), the best of `--rounds` rounds, each on
fresh files. Compare two checkouts by running this file from each (`cd <checkout> && python
<this file>`).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the checkout to measure: the current folder's daemon/

import orjson

from daemon import compaction_job
from daemon.archiving import ARCHIVE_GROUP
from daemon.compaction_job import Closed
from daemon.config import SummarizerConfig
from daemon.reset_flushes import RESET_FLUSH_GROUP
from daemon.store import archive


def write_sessions(folder: Path, n: int) -> list[tuple[str, str, Path]]:
    """`n` transcripts of a header and one message of facts (bench/isolation.py's)."""
    folder.mkdir(parents=True)
    cwd = str(folder.parent / "workspace")
    out = []
    for i in range(n):
        sid = str(uuid.uuid4())
        key = f"agent:main:telegram:direct:{200000 + i}"
        head = {"type": "session", "version": 3, "id": sid, "timestamp": "2026-09-21T10:00:00.000Z"}
        facts = (
            f"We decided to book room {i} at the Hiiragiya in Kyoto for 2026-04-03; "
            f"the plan is in notes/trip-{i}.md."
        )
        msg = {
            "type": "message",
            "id": "00000000",
            "parentId": None,
            "timestamp": "2026-09-21T10:00:00.000Z",
            "message": {"role": "user", "content": [{"type": "text", "text": facts}]},
        }
        path = folder / f"{sid}.jsonl"
        path.write_bytes(orjson.dumps({**head, "cwd": cwd, "sessionKey": key}) + b"\n")
        with path.open("ab") as f:
            f.write(orjson.dumps(msg) + b"\n")
        out.append((sid, key, path))
    return out


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(fn: Callable[[], None], profile: bool) -> float:
    prof = cProfile.Profile() if profile else None
    c0 = cpu()
    if prof is not None:
        prof.enable()
    fn()
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return cpu() - c0


def one_round(root: Path, n: int, profile: str | None) -> tuple[float, float]:
    folder = root / "agents" / "main" / "sessions"
    sessions = write_sessions(folder, n)
    os.sync()  # the files' write-back is not the moves' cost
    memory = str(root / "workspace" / "memory")
    summarizer = SummarizerConfig().settings()
    now = int(time.time() * 1000)
    items = [
        archive.ToArchive(path, "main", "idle", sid, key, None, None, now)
        for sid, key, path in sessions
    ]

    def archive_all() -> None:
        for start in range(0, n, ARCHIVE_GROUP):
            for r in archive.archive_transcripts(items[start : start + ARCHIVE_GROUP]):
                assert not isinstance(r, OSError), r

    local = datetime.now(UTC)
    closed = [
        Closed(sid, key, "main", str(path), memory, None, 800_000, summarizer, None)
        for sid, key, path in sessions
    ]

    def flush_all() -> None:
        for start in range(0, n, RESET_FLUSH_GROUP):
            for d in compaction_job.flush_closed(closed[start : start + RESET_FLUSH_GROUP], local):
                assert d.error is None and d.entries == 1, d

    moved = measure(archive_all, profile == "archive")
    flushed = measure(flush_all, profile == "flush")
    return moved, flushed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", choices=["archive", "flush"], help="cProfile one of them")
    args = ap.parse_args()
    # Left in place, not removed: removing ten thousand files slows every file creation on this
    # disk for a minute (other benchmarks' too). BENCH_DIR says where.
    best: tuple[float, float] | None = None
    for _ in range(args.rounds):
        bench_dir = os.environ.get("BENCH_DIR")
        root = Path(tempfile.mkdtemp(prefix="sessiond-reset-work-", dir=bench_dir))
        moved, flushed = one_round(root, args.sessions, args.profile)
        print(
            f"{root}: archive {moved / args.sessions * 1e6:.1f} us/session, "
            f"flush {flushed / args.sessions * 1e6:.1f} us/session"
        )
        best = (moved, flushed) if best is None else (min(best[0], moved), min(best[1], flushed))
    assert best is not None
    la = os.getloadavg()
    print(
        f"best of {args.rounds}: archive {best[0] / args.sessions * 1e6:.1f} us/session, flush "
        f"{best[1] / args.sessions * 1e6:.1f} us/session, together "
        f"{(best[0] + best[1]) / args.sessions * 1e6:.1f}; load {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
    )


if __name__ == "__main__":
    main()

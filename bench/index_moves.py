"""Index passes while a reset job moves sessions into archive/: CPU per pass, in this process.

    python bench/index_moves.py [--sessions 10000] [--step 500]

Indexes `--sessions` small transcripts, then moves them into archive/ `--step` at a time, with
one pass after each step, told that no active transcript was written (as the daemon's passes
during a reset job are: its archive folder changes between every two passes). Prints the CPU
seconds of those passes. In-process figures, little moved by the machine's load; compare two
checkouts by running this file from each (`cd <checkout> && python <this file>`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the checkout to measure: the current folder's daemon/

from daemon.search import SearchIndex, index_path
from daemon.store.transcript import header_line, iso_ms, message_line

T0 = 1_795_000_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--step", type=int, default=500)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sessiond-index-moves-", dir=os.environ.get("BENCH_DIR")))
    try:
        sessions = root / "agents" / "main" / "sessions"
        archive = sessions / "archive"
        archive.mkdir(parents=True)
        (root / "workspace").mkdir()
        names = []
        for i in range(args.sessions):
            sid = str(uuid.uuid4())
            msg = {"role": "user", "content": [{"type": "text", "text": f"room {i} in Kyoto"}]}
            path = sessions / f"{sid}.jsonl"
            path.write_bytes(
                header_line(sid, f"agent:main:telegram:direct:{i}", T0, "/w")
                + b"\n"
                + message_line("00000000", None, iso_ms(T0), msg)
                + b"\n"
            )
            names.append(path.name)
        idx = SearchIndex(index_path(root), root, lambda _agent: root / "workspace")
        idx.open()
        idx.sync()
        cpu, passes, moved = 0.0, 0, 0
        for k in range(0, len(names), args.step):
            for name in names[k : k + args.step]:
                os.rename(sessions / name, archive / name)
            started = time.process_time()
            stats = idx.sync(touched=[])
            cpu += time.process_time() - started
            passes += 1
            moved += stats.moved
        idx.close()
        print(
            f"{passes} passes over {args.sessions} moves ({moved} followed): {cpu:.2f} CPU s, "
            f"{cpu / passes * 1000:.1f} ms a pass; load average {os.getloadavg()[0]:.2f}"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

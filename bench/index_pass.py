"""Index pass benchmark: what one of the daemon's incremental passes costs, two ways each.

    python bench/index_pass.py [--sessions 1000] [--touched 100] [--passes 30]

Builds an index over `--sessions` transcripts (20 messages each), then, in this process:

  1. opens the index anew, as a worker would for every pass if it did not keep it open (the
     daemon's index worker keeps it open across passes: daemon/search/worker.py), and reports
     the CPU and wall time of an open;
  2. appends one message to each of `--touched` transcripts and runs the pass the daemon asks
     for (told which transcripts were written), `--passes` times: once reading the appended
     bytes from the transcripts, once from the bytes handed over as the daemon does since issue
     17 (`appended`); reports CPU and wall time per pass and per message.

In-process figures: the daemon's side of handing the bytes over (joining its lines, pickling
them into the request) is not counted here; bench/ingest.py counts the whole process tree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.search import SearchIndex, index_path
from daemon.store.transcript import header_line, iso_ms, message_line

T0 = 1_795_000_000_000


def message(n: int, text: str) -> bytes:
    msg = {"role": "user", "content": [{"type": "text", "text": text}]}
    return message_line(f"{n:08x}", None, iso_ms(T0 + n), msg) + b"\n"


def build(root: Path, sessions: int) -> None:
    folder = root / "agents" / "main" / "sessions"
    folder.mkdir(parents=True)
    for s in range(sessions):
        head = header_line(f"s{s}", f"agent:main:s{s}", T0, "/w") + b"\n"
        body = b"".join(message(i + 1, f"walrus {i} in session {s}") for i in range(20))
        (folder / f"s{s}.jsonl").write_bytes(head + body)
    idx = SearchIndex(index_path(root), root, lambda a: root / "workspace")
    idx.open()
    idx.sync()
    idx.close()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def passes(
    root: Path, touched: int, count: int, *, handed: bool, first: int
) -> tuple[float, float]:
    idx = SearchIndex(index_path(root), root, lambda a: root / "workspace")
    idx.open()
    idx.sync()
    cpu = wall = 0.0
    try:
        for r in range(count):
            appended: dict[str, tuple[int, bytes]] = {}
            for s in range(touched):
                key = f"agents/main/sessions/s{s}.jsonl"
                path = root / key
                before = path.stat().st_size
                line = message(first + r, f"pass {r} heron")
                with open(path, "ab") as f:
                    f.write(line)
                appended[key] = (before, line)
            c, w = timed(
                lambda a=appended: idx.sync(touched=list(a), appended=a if handed else None)
            )
            cpu += c
            wall += w
    finally:
        idx.close()
    return cpu / count, wall / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--touched", type=int, default=100)
    ap.add_argument("--passes", type=int, default=30)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="index-pass-"))
    try:
        build(root, args.sessions)
        print(
            f"index pass benchmark: {args.sessions} sessions, {args.touched} touched per pass, "
            f"{args.passes} passes; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        opens = [timed(lambda: _open_close(root)) for _ in range(10)]
        cpu = sorted(c for c, _ in opens)[len(opens) // 2]
        wall = sorted(w for _, w in opens)[len(opens) // 2]
        print(f"  open the index anew:      cpu {cpu * 1e3:7.2f} ms   wall {wall * 1e3:7.2f} ms")
        reread = passes(root, args.touched, args.passes, handed=False, first=1000)
        handed = passes(root, args.touched, args.passes, handed=True, first=2000)
        for name, (c, w) in (("reread transcripts", reread), ("handed bytes", handed)):
            per = c / args.touched * 1e6
            print(
                f"  pass, {name + ':':19} cpu {c * 1e3:7.2f} ms   wall {w * 1e3:7.2f} ms   "
                f"cpu {per:6.1f} us/msg"
            )
        print(f"  ratio handed / reread: cpu {handed[0] / reread[0]:.2f}")
    finally:
        shutil.rmtree(root)


def _open_close(root: Path) -> None:
    idx = SearchIndex(index_path(root), root, lambda a: root / "workspace")
    idx.open()
    idx.close()


if __name__ == "__main__":
    main()

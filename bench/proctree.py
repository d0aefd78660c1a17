"""CPU and memory of a whole process tree (a daemon and every process it started), from /proc.

The daemon's index and mirror workers, a summarizer command and any other child do work that a
figure for the daemon process alone would hide, so the benchmarks count the tree: every process
whose parent chain leads to one of the roots, found by scanning /proc (children that start
during the run are picked up by the sampler).

CPU: user + system time of each live process of the tree, plus the time of its children that
have already exited and been waited for (cutime/cstime), as a difference between the start and
the end of a measurement. Memory: the sum of the tree's resident set sizes, sampled every
`interval` seconds; the peak of that sum is reported. Pages shared between a parent and a forked
child are counted in each, as `ps` and `top` would.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int, tid: int | None = None) -> list[str] | None:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces and parentheses).
    return text.rsplit(")", 1)[1].split()


def tree_pids(roots: Iterable[int]) -> list[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None:
            children.setdefault(int(st[1]), []).append(int(entry))
    out: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_of(pid: int, waited_children: bool = True) -> float:
    """CPU seconds of one process (and of its children already waited for)."""
    st = _stat(pid)
    if st is None:
        return 0.0
    # After the ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    fields = (11, 12, 13, 14) if waited_children else (11, 12)
    return sum(int(st[i]) for i in fields) / TICK


def main_thread_cpu_of(pid: int) -> float:
    """CPU seconds of a process's main thread alone: the daemon's event loop, without its
    worker threads (writes, syncs, checkpoints)."""
    st = _stat(pid, pid)
    return 0.0 if st is None else (int(st[11]) + int(st[12])) / TICK


def rss_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeMeter:
    """Measures a tree between `start()` and `stop()`: CPU seconds of the tree, of the roots
    alone and of the roots' main threads (an event loop), the peak RSS sum and the largest
    number of processes seen."""

    def __init__(self, roots: list[int], interval: float = 0.1) -> None:
        self.roots = roots
        self.interval = interval
        self._start: dict[int, float] = {}
        self._root_start: dict[int, float] = {}
        self._main_start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self.peak_rss = 0
        self.max_procs = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        pids = tree_pids(self.roots)
        self.max_procs = max(self.max_procs, len(pids))
        self.peak_rss = max(self.peak_rss, sum(rss_of(p) for p in pids))
        for p in pids:
            self._last[p] = cpu_of(p)

    def _loop(self) -> None:
        while not self._done.wait(self.interval):
            self._sample()

    def start(self) -> None:
        for p in tree_pids(self.roots):
            self._start[p] = cpu_of(p)
        for p in self.roots:
            self._root_start[p] = cpu_of(p, waited_children=False)
            self._main_start[p] = main_thread_cpu_of(p)
        self._sample()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        live = set(tree_pids(self.roots))
        self._sample()
        # A process that exited and was waited for is in its parent's cutime: count it there
        # only (its last sample would count it twice).
        tree = sum(self._last[p] - self._start.get(p, 0.0) for p in live if p in self._last)
        roots = sum(cpu_of(p, False) - self._root_start[p] for p in self.roots)
        main = sum(main_thread_cpu_of(p) - self._main_start[p] for p in self.roots)
        return {
            "tree_cpu_s": tree,
            "root_cpu_s": roots,
            "main_thread_cpu_s": main,
            "peak_rss_mb": self.peak_rss / 2**20,
            "procs": float(self.max_procs),
        }

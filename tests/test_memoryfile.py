"""Memory files (store/memoryfile.py): several processes append to the same day's file at once
(the reset job's flush workers, the daemon's own flushes); each append stays whole, in one piece,
and the day's heading is written once."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from daemon.store.memoryfile import write_memory_sections

WRITER = """
import sys
from datetime import datetime, UTC
from pathlib import Path
from daemon.store.memoryfile import write_memory_sections
folder, who, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
local = datetime(2026, 9, 21, 10, 0, tzinfo=UTC)
sys.stdin.readline()  # all start together
for r in range(rounds):
    notes = [f"- note {who} {r} {i}\\n- second line" for i in range(40)]
    sections = [(f"agent:main:{who}:{r}:{i}", n) for i, n in enumerate(notes)]
    write_memory_sections(folder, local, sections)
"""


def test_appends_from_several_processes_stay_whole(tmp_path: Path) -> None:
    folder = tmp_path / "memory"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), f"w{n}", "25"],
            stdin=subprocess.PIPE,
        )
        for n in range(4)
    ]
    for p in writers:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
    for p in writers:
        assert p.wait(120) == 0
    text = (folder / "2026-09-21.md").read_text()
    assert text.startswith("# 2026-09-21\n\n")
    assert text.count("# 2026-09-21\n") == 1
    sections = text[len("# 2026-09-21\n\n") :].split("\n\n## ")
    assert len(sections) == 4 * 25 * 40
    seen = set()
    for s in sections:
        head, body = s.removeprefix("## ").split("\n\n", 1)
        key = head.removeprefix("10:00 memory flush (").removesuffix(")")
        _a, _m, who, r, i = key.split(":")
        assert body.rstrip("\n") == f"- note {who} {r} {i}\n- second line"
        seen.add(key)
    assert len(seen) == 4 * 25 * 40


def test_a_group_reports_the_bytes_of_each_section(tmp_path: Path) -> None:
    local = datetime(2026, 9, 21, 10, 0, tzinfo=UTC)
    path, sizes = write_memory_sections(tmp_path, local, [("k1", "- a"), ("k2", "- b")])
    path2, more = write_memory_sections(tmp_path, local, [("k3", "- c")])
    assert path == path2
    assert sum(sizes) + sum(more) == path.stat().st_size

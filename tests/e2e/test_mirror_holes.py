"""A hole in the mirror, with the real daemon and commands (issue 12, item 3): a page of zeros in
the middle of a session's `history.jsonl` (what a power cut leaves) is named by `backup verify`
(missing entries) and `doctor` (a zero-filled region), and a restart refills it from the
transcript: nothing missing, nothing doubled, the damaged file kept."""

from __future__ import annotations

import orjson

from e2e.conftest import Launch
from e2e.harness import ingest_params
from e2e.test_backup import config, sessiond, wait_backup

PAGE = 4096


def test_a_restart_refills_a_zeroed_page_in_the_middle_of_the_mirror(launch: Launch) -> None:
    d = launch()
    acks = [d.call("message.ingest", ingest_params("1", f"message {i} " * 8)) for i in range(60)]
    sid = acks[0]["sessionId"]
    wait_backup(d)
    assert d.stop() == 0
    live = d.state_dir / "backup" / sid / "history.jsonl"
    data = bytearray(live.read_bytes())
    assert len(data) > 3 * PAGE
    data[PAGE : 2 * PAGE] = bytes(PAGE)
    live.write_bytes(bytes(data))
    damaged = bytes(data)

    r = sessiond("backup", "verify", "--state-dir", str(d.state_dir), *config(d), "--json")
    assert r.returncode == 1
    (diff,) = orjson.loads(r.stdout)["differences"]
    assert len(diff["missing"]) >= 2 and not diff["doubled"]
    r = sessiond("doctor", "--state-dir", str(d.state_dir), *config(d))
    assert r.returncode == 1 and "zero-filled at offset" in r.stdout, r.stdout

    d.start()
    wait_backup(d)
    d.call("message.ingest", ingest_params("1", "after the restart"))
    wait_backup(d)
    assert d.stop() == 0
    r = sessiond("backup", "verify", "--state-dir", str(d.state_dir), *config(d), "--json")
    assert r.returncode == 0, r.stdout
    (kept,) = live.parent.glob("history.jsonl.damaged-*")
    assert kept.read_bytes() == damaged
    refilled = [e for e in d.logs() if e.get("event") == "backup.hole_refilled"]
    assert [(e["records"], e["kept"]) for e in refilled] == [(len(diff["missing"]), kept.name)]
    r = sessiond("doctor", "--state-dir", str(d.state_dir), *config(d))
    assert r.returncode == 0 and "zero-filled at offset" not in r.stdout, r.stdout

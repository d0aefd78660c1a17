"""Dying at each step of an archive's compression loses nothing (issue 8: archive and
compression steps). The sweep runs offline (`sessiond retention`), is killed at a failpoint,
then runs again; every archived session must be readable, whole, in exactly one file."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from daemon.failpoints import COMPRESSION, EXIT_CODE
from e2e.conftest import Launch
from e2e.harness import daemon_env, ingest_params


def retention(state: Path, config: Path, failpoint: str | None) -> subprocess.CompletedProcess[str]:
    env = daemon_env()
    if failpoint is not None:
        env["SESSIOND_FAILPOINTS"] = f"{failpoint}=exit"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "retention",
            "--state-dir",
            str(state),
            "--config",
            str(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def latest_records(folder: Path) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for line in (folder / "archive" / "index.jsonl").read_bytes().splitlines():
        rec = orjson.loads(line)
        out[rec["sessionId"]] = rec
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPRESSION)
def test_dying_at_each_compression_step_loses_nothing(
    launch: Launch, tmp_path: Path, name: str
) -> None:
    d = launch({"session": {"dmScope": "per-channel-peer", "reset": {"mode": "none"}}})
    c = d.client()
    keys = []
    for peer in ("21", "22", "23"):
        first = c.call("message.ingest", ingest_params(peer, f"words of {peer} before the reset"))
        c.call("message.ingest", ingest_params(peer, "/reset"))
        keys.append(first["sessionKey"])
    assert d.stop() == 0
    folder = d.sessions_dir()
    before = latest_records(folder)
    assert len(before) == 3
    config = tmp_path / "compress-now.json5"
    config.write_text(json.dumps({"retention": {"compressAfterDays": 0}}))
    state = tmp_path / "copy"
    shutil.copytree(d.state_dir, state, ignore=shutil.ignore_patterns("*.sock"))
    died = retention(state, config, name)
    assert died.returncode == EXIT_CODE, (died.returncode, died.stdout, died.stderr)
    assert f"failpoint {name} fired" in died.stderr
    again = retention(state, config, None)
    assert again.returncode == 0, (again.stdout, again.stderr)
    copy_folder = state / "agents" / "main" / "sessions"
    after = latest_records(copy_folder)
    assert set(after) == set(before)
    for sid, rec in after.items():
        gz = copy_folder / "archive" / str(rec["file"])
        assert str(rec["file"]).endswith(".gz") and gz.is_file(), rec
        plain = copy_folder / "archive" / f"{sid}.jsonl"
        assert not plain.exists(), f"{plain.name} kept beside its verified copy"
        data = gzip.decompress(gz.read_bytes())
        assert hashlib.sha256(data).hexdigest() == before[sid]["sha256"]
    leftovers = [p.name for p in (copy_folder / "archive").iterdir() if ".tmp-" in p.name]
    assert not leftovers, leftovers
    # The daemon reads the compressed history.
    d2 = launch(
        {"session": {"dmScope": "per-channel-peer", "reset": {"mode": "none"}}}, state_dir=state
    )
    for key in keys:
        prev = d2.client().call("sessions.history", {"sessionKey": key, "previous": 1})
        texts = [
            b["text"]
            for e in prev["entries"]
            if e.get("type") == "message"
            for b in e["message"]["content"]
            if isinstance(b, dict) and b.get("type") == "text"
        ]
        assert any("before the reset" in t for t in texts), prev
    assert d2.stop() == 0
    assert os.environ.get("SESSIOND_FAILPOINTS") is None

"""The object-storage backup end to end (issue 19): a daemon whose mirror is uploaded to an S3
bucket (moto's server over real HTTP); the state folder lost entirely comes back with
`backup restore --from s3://...` and `backup verify --from s3://...` finds no difference; a
store that goes away degrades the upload, never the ingest, and it catches up after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from s3server import S3Server, s3

from e2e.conftest import Launch
from e2e.harness import Daemon, ingest_params
from e2e.test_backup import PER_PEER, config, sessiond, traffic, wait_backup
from e2e.test_restore_state import states

__all__ = ["s3"]


def wait_remote(
    d: Daemon, state: str = "ok", uploaded: int = 0, seconds: float = 60.0
) -> dict[str, Any]:
    """Until status.backup.remote is in `state` (and, for ok, has nothing left to upload and
    has uploaded at least `uploaded` objects)."""
    deadline = time.monotonic() + seconds
    while True:
        r: dict[str, Any] = d.call("status")["backup"]["remote"]
        if r["state"] == state and (
            state != "ok" or (r["lagSegments"] == 0 and r["uploaded"] >= uploaded)
        ):
            return r
        assert time.monotonic() < deadline, r
        time.sleep(0.05)


def bucket_cfg(s3: S3Server, prefix: str, bk: Path) -> dict[str, Any]:
    target = s3.url(prefix) + "?segmentSeconds=0.2"
    return {**PER_PEER, "sessions": {"backup": {"path": str(bk), "target": target}}}


def test_a_lost_state_folder_comes_back_from_the_bucket(
    launch: Launch, s3: S3Server, tmp_path: Path
) -> None:
    bk = tmp_path / "mirror"
    cfg = bucket_cfg(s3, "box1", bk)
    d = launch(cfg)
    traffic(d)
    wait_backup(d)
    before = states(d)
    assert before[0] and before[1]
    # While it runs: the marker, a segment of every session, a state record of every archived one.
    r = wait_remote(d, uploaded=1 + len(before[0]) + 2 * len(before[1]))
    assert r["lastUploadAt"] and r["error"] is None
    assert d.stop() == 0
    url = s3.url("box1")
    # The whole machine is gone: the state folder and the local mirror with it (moved out of
    # reach: the never-delete guard the suite runs under refuses removing them).
    lost = tmp_path / "the-machine-that-died"
    lost.mkdir()
    d.state_dir.rename(lost / "state")
    bk.rename(lost / "mirror")

    new = tmp_path / "restored"
    r2 = sessiond("backup", "restore", "--from", url, "--state-dir", str(new), *config(d))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    r2 = sessiond("backup", "verify", "--from", url, "--state-dir", str(new), *config(d))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    # The restored folder goes on with the bucket (its mirror is the downloaded one).
    d2 = launch(
        {**PER_PEER, "sessions": {"backup": {"target": url + "?segmentSeconds=0.2"}}},
        state_dir=new,
    )
    assert states(d2) == before
    with d2.client() as c:
        c.call("message.ingest", ingest_params("0", "back again", messageId="after-restore"))
    wait_backup(d2)
    wait_remote(d2)
    assert d2.stop() == 0
    r2 = sessiond("backup", "verify", "--from", url, "--state-dir", str(new), *config(d))
    assert r2.returncode == 0, r2.stdout + r2.stderr


def test_an_unreachable_store_degrades_the_upload_not_the_ingest(
    launch: Launch, s3: S3Server, tmp_path: Path
) -> None:
    bk = tmp_path / "mirror"
    d = launch(bucket_cfg(s3, "box2", bk))
    with d.client() as c:
        c.call("message.ingest", ingest_params("1", "before", messageId="m-0"))
        wait_backup(d)
        wait_remote(d, uploaded=2)  # the marker and the first segment
        s3.stop()
        for i in range(1, 20):
            ack = c.call("message.ingest", ingest_params("1", f"during {i}", messageId=f"m-{i}"))
            assert ack["ok"] if "ok" in ack else ack["sessionKey"]
        remote = wait_remote(d, "degraded")
        assert remote["error"] and remote["lagSegments"] >= 1
        wait_backup(d)  # the local mirror is not held up
        assert any(e.get("event") == "backup.remote_degraded" for e in d.logs())
        s3.start()
        wait_remote(d)
    assert any(e.get("event") == "backup.remote_recovered" for e in d.logs())
    assert d.stop() == 0
    r = sessiond(
        "backup", "verify", "--from", s3.url("box2"), "--state-dir", str(d.state_dir), *config(d)
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_restore_from_a_bucket_that_holds_no_mirror_fails_clearly(
    s3: S3Server, tmp_path: Path
) -> None:
    new = tmp_path / "new"
    r = sessiond("backup", "restore", "--from", s3.url("nothing-here"), "--state-dir", str(new))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is not a sessiond backup" in r.stderr
    r = sessiond("backup", "restore", "--from", "s3://Bad_Bucket/x", "--state-dir", str(new))
    assert r.returncode == 2 and "bucket 'Bad_Bucket'" in r.stderr, r.stderr

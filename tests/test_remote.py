"""The object-storage backup's upload and download (daemon/remote.py) against moto's S3 server
over real HTTP: segments, generations, checksums; and the target's validation."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pydantic import ValidationError
from s3server import BUCKET, S3Server, s3

from daemon.config import BackupConfig
from daemon.core.bucket import Segment, chain, parse_rel, parse_target, segment_rel
from daemon.remote import RemoteError, Uploader, _credentials_file, download
from daemon.store.backup import ensure_root

__all__ = ["s3"]

SID = "0b6c1d2e-0000-4000-8000-000000000001"


def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    ensure_root(root)
    (root / SID).mkdir()
    return root


def append(root: Path, data: bytes) -> None:
    with open(root / SID / "history.jsonl", "ab") as f:
        f.write(data)


def test_target_urls_are_checked_with_a_clear_error() -> None:
    t = parse_target("s3://my-bucket/a/b/?endpoint=http://127.0.0.1:9000&segmentSeconds=2")
    assert (t.bucket, t.prefix, t.endpoint, t.segment_seconds) == (
        "my-bucket",
        "a/b",
        "http://127.0.0.1:9000",
        2.0,
    )
    assert t.key("x/state.json") == "a/b/x/state.json"
    for bad, words in [
        ("/var/backup", "s3://"),
        ("s3://B/x", "bucket 'B'"),
        ("s3://bucket/x?color=red", "unknown option"),
        ("s3://bucket/x?segmentSeconds=-1", "segmentSeconds"),
        ("s3://bucket/x?endpoint=ftp://h", "endpoint"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_target(bad)
    with pytest.raises(ValidationError, match="target"):
        BackupConfig(target="s3://UPPER/x")


def test_segment_names_round_trip_and_chains_find_gaps() -> None:
    rel = segment_rel(SID, 3, 0, 10, "a" * 64)
    s = parse_rel(rel)
    assert s == Segment(SID, 3, 0, 10, "a" * 64, rel)
    assert parse_rel(f"{SID}/state.json") is None
    b = Segment(SID, 3, 10, 20, "b" * 64, "x")
    old = Segment(SID, 2, 0, 99, "c" * 64, "y")
    assert chain([b, s, old]) == ([s, b], None)  # the newest generation only
    far = Segment(SID, 3, 30, 40, "d" * 64, "z")
    assert chain([s, far]) == ([s], 10)


def test_uploads_closed_segments_only_and_download_rebuilds_the_mirror(
    s3: S3Server, tmp_path: Path
) -> None:
    root = mirror(tmp_path)
    target = parse_target(s3.url("pre") + "?segmentSeconds=3600")
    up = Uploader(root, target)
    append(root, b'{"a":1}\n{"a":2}\n{"a":3')  # the last record is still being written
    res = up.round()
    assert (res.uploaded, res.lag) == (1, 1)  # the marker; the segment is not closed yet
    assert up.round(final=True).uploaded == 1
    assert up.chains[SID].end == len(b'{"a":1}\n{"a":2}\n')
    append(root, b'}\n{"a":4}\n')
    assert up.round(final=True).uploaded == 1
    (root / SID / "state.json").write_bytes(b'{"state":"archived"}\n')
    archive = root / "archive" / "other"
    archive.mkdir(parents=True)
    (archive / "history.jsonl.gz").write_bytes(gzip.compress(b'{"b":1}\n'))
    assert up.round().uploaded == 2  # the state record and the compressed mirror
    assert up.round(final=True).uploaded == 0  # nothing twice

    # A new uploader (a restarted daemon) finds where the bucket is.
    again = Uploader(root, target)
    assert again.round(final=True).uploaded == 0

    out = tmp_path / "out"
    got = download(target, out, marker=True)
    assert got.sessions == 1
    assert (out / SID / "history.jsonl").read_bytes() == (root / SID / "history.jsonl").read_bytes()
    assert (out / SID / "state.json").read_bytes() == b'{"state":"archived"}\n'
    assert (out / "archive" / "other" / "history.jsonl.gz").read_bytes() == (
        archive / "history.jsonl.gz"
    ).read_bytes()
    assert (out / "sessiond-backup.json").is_file()
    bare = tmp_path / "bare"
    download(target, bare, marker=False)
    assert not (bare / "sessiond-backup.json").exists()


def test_a_rewritten_mirror_file_starts_a_new_generation(s3: S3Server, tmp_path: Path) -> None:
    root = mirror(tmp_path)
    target = parse_target(s3.url("gen"))
    append(root, b'{"a":1}\n{"a":2}\n')
    Uploader(root, target).round(final=True)
    # The file is replaced (a refilled hole): the same length, other bytes.
    path = root / SID / "history.jsonl"
    new = root / SID / ".history.jsonl.tmp-1"
    new.write_bytes(b'{"a":1}\n{"a":9}\n{"a":3}\n')
    path.rename(path.with_name("history.jsonl.damaged-1"))  # kept, as the refill does
    new.rename(path)
    up = Uploader(root, target)
    up.round(final=True)
    assert up.chains[SID].gen == 2
    out = tmp_path / "out"
    download(target, out, marker=False)
    assert (out / SID / "history.jsonl").read_bytes() == path.read_bytes()


def test_a_tampered_object_is_refused_on_download(s3: S3Server, tmp_path: Path) -> None:
    root = mirror(tmp_path)
    target = parse_target(s3.url("bad"))
    append(root, b'{"a":1}\n')
    (root / SID / "state.json").write_bytes(b'{"state":"archived"}\n')
    Uploader(root, target).round(final=True)
    client = s3.client()
    key = next(
        o["Key"]
        for o in client.list_objects_v2(Bucket=BUCKET, Prefix="bad/")["Contents"]  # type: ignore[attr-defined]
        if "/history/" in o["Key"]
    )
    client.put_object(Bucket=BUCKET, Key=key, Body=b'{"a":2}\n')  # type: ignore[attr-defined]
    with pytest.raises(RemoteError, match="does not match its name"):
        download(target, tmp_path / "out", marker=False)


def test_a_bucket_without_a_mirror_is_refused(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="not a sessiond backup"):
        download(parse_target(s3.url("empty")), tmp_path / "out", marker=False)


def test_an_unreachable_store_raises_from_the_round(s3: S3Server, tmp_path: Path) -> None:
    root = mirror(tmp_path)
    append(root, b'{"a":1}\n')
    up = Uploader(root, parse_target(s3.url("down")))
    s3.stop()
    with pytest.raises(Exception, match=r"(?i)error"):
        up.round(final=True)


def test_credentials_come_from_the_credentials_file_when_the_environment_has_none(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(
        "[default]\naws_access_key_id = nobody\naws_secret_access_key = x\n\n"
        "[backup]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "backup")
    assert _credentials_file() == {"access_key_id": "testing", "secret_access_key": "testing"}
    root = mirror(tmp_path)
    append(root, b'{"a":1}\n')
    Uploader(root, parse_target(s3.url("creds"))).round(final=True)
    out = tmp_path / "out"
    assert download(parse_target(s3.url("creds")), out, marker=False).sessions == 1

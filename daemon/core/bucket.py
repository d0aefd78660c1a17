"""The object-storage backup's names (pure): the `s3://` target and the keys in the bucket.

A bucket holds the local mirror's layout (docs/backup.md, "Object storage"), except that a
session's `history.jsonl`, which grows, is uploaded as immutable segments, each one a range of
the local file's bytes named by where it starts and ends and by its sha256:

    <prefix>/sessiond-backup.json
    <prefix>/<sessionId>/history/g<gen>/<start>-<end>.<sha256>.jsonl
    <prefix>/<sessionId>/state.json                        (sha256 in the object's metadata)
    <prefix>/archive/<sessionId>/history[.<n>].jsonl.gz    (sha256 in the object's metadata)

A generation starts when the local file stops being a continuation of what was uploaded (the
retention sweep compressed it and a new file began, or a hole was refilled): the newest
generation, with the archives, is the mirror.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SEGMENT_SECONDS = 10.0  # a segment closes once its oldest byte waited this long
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_OPTIONS = ("endpoint", "region", "segmentSeconds")
_SEGMENT = re.compile(r"g(\d{4,})/(\d{16})-(\d{16})\.([0-9a-f]{64})\.jsonl")


@dataclass(frozen=True, slots=True)
class Target:
    """`sessions.backup.target`: where the mirror is uploaded."""

    url: str
    bucket: str
    prefix: str  # "" or "a/b" (no slashes at either end)
    endpoint: str | None = None  # else AWS_ENDPOINT_URL, else AWS
    region: str | None = None  # else AWS_REGION / AWS_DEFAULT_REGION
    segment_seconds: float = SEGMENT_SECONDS

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key


def is_remote(source: str) -> bool:
    return source.startswith("s3://")


def parse_target(url: str) -> Target:
    """`s3://bucket[/prefix][?endpoint=URL&region=R&segmentSeconds=N]`; ValueError says what
    is wrong."""
    if not is_remote(url):
        raise ValueError(f"must be an s3://bucket/prefix URL, got {url!r}")
    parts = urlsplit(url)
    if not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(
            f"bucket {parts.netloc!r} is not a bucket name (3-63 characters: a-z, 0-9, '.', '-')"
        )
    prefix = parts.path.strip("/")
    if "//" in prefix:
        raise ValueError(f"prefix {prefix!r} holds an empty path segment")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in the URL (known: {list(_OPTIONS)})")
    one = {k: v[-1] for k, v in query.items()}
    endpoint = one.get("endpoint")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"endpoint must be an http:// or https:// URL, got {endpoint!r}")
    seconds = SEGMENT_SECONDS
    if "segmentSeconds" in one:
        try:
            seconds = float(one["segmentSeconds"])
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 86_400:
            raise ValueError(
                f"segmentSeconds must be a number of seconds in (0, 86400], got "
                f"{one['segmentSeconds']!r}"
            )
    return Target(url, parts.netloc, prefix, endpoint, one.get("region") or None, seconds)


def segment_rel(session_id: str, gen: int, start: int, end: int, sha256: str) -> str:
    return f"{session_id}/history/g{gen:04d}/{start:016d}-{end:016d}.{sha256}.jsonl"


@dataclass(frozen=True, slots=True)
class Segment:
    session_id: str
    gen: int
    start: int
    end: int
    sha256: str
    rel: str


def parse_rel(rel: str) -> Segment | None:
    """The segment a relative key names, or None for any other object."""
    sid, sep, rest = rel.partition("/history/")
    if not sep or "/" in sid:
        return None
    m = _SEGMENT.fullmatch(rest)
    if m is None:
        return None
    gen, start, end, sha = int(m[1]), int(m[2]), int(m[3]), m[4]
    if end <= start:
        return None
    return Segment(sid, gen, start, end, sha, rel)


def chain(segments: list[Segment]) -> tuple[list[Segment], int | None]:
    """The newest generation's segments in order from byte 0, and where the first gap is (None
    when they join up: the mirror file is whole)."""
    if not segments:
        return [], None
    gen = max(s.gen for s in segments)
    by_start = {s.start: s for s in segments if s.gen == gen}
    out: list[Segment] = []
    pos = 0
    while pos in by_start:
        s = by_start.pop(pos)
        out.append(s)
        pos = s.end
    return out, (pos if by_start else None)

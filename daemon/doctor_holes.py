"""`doctor`'s look for holes (issue 12): regions a power cut left zero-filled (or garbled) in the
middle of a mirror or a transcript, transcript lines missing between a mirror's records (gaps),
and torn side files holding nothing but zeros.

A hole or gap in a mirror is repaired by refilling it from the transcript
(`daemon.store.backup.refill`: the damaged file is kept as `history.jsonl.damaged-<ms>`). A hole
in a transcript is reported only: the transcript is the original, and what a hole swallowed may
still be in the mirror (`backup restore` rebuilds from it). Zero-filled side files are reported
only: nothing is ever deleted; they hold no data and may be removed by hand.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import orjson

from daemon.backup import backup_root
from daemon.core.exclusions import excluded
from daemon.core.holes import damaged_lines, is_all_zeros, summarize
from daemon.doctor_findings import Checkup
from daemon.store import backup as mirror_files
from daemon.store import mirror_holes
from daemon.store.backup import Job, Source
from daemon.store.mirror_holes import mirror_damage, plan_refill
from daemon.store.transcript import json_object
from daemon.verify import first_line, session_id_of

SHOW = 5
ZERO_CHECK_MAX = 64 << 20  # a side file larger than this is not read to see whether it is zeros


def check_holes(doc: Checkup) -> None:
    """Add the `holes`, `mirror-gap` and `torn-zeros` findings to `doc`."""
    bc = doc.cfg.sessions.backup
    root = backup_root(doc.cfg, doc.state_dir)
    transcript_holes: list[tuple[str, bool]] = []
    jobs: dict[str, Job] = {}
    for agent_id, path, _archived in doc.transcripts():
        if not path.name.endswith(".gz"):
            found = _transcript_damage(path)
            if found is not None:
                transcript_holes.append((f"{doc.rel(path)}: {found[0]}", found[1]))
        first = first_line(path)
        sid = session_id_of(path, first)
        key = (json_object(first or b"") or {}).get("sessionKey")
        key = key if isinstance(key, str) else None
        if sid not in jobs and not excluded(key, bc.exclude_patterns):
            jobs[sid] = Job(sid, agent_id, key, None, (path,), None, None)
    for line, zeros in transcript_holes[:SHOW]:
        # Zeros are a power cut's hole; a line that is not JSON may be a fragment OpenClaw
        # itself left behind (kept and mirrored as it is), so it is only noted.
        doc.add(
            "holes",
            "warning" if zeros else "info",
            f"transcript {line} (reported only; `backup verify` shows what the mirror still has)",
        )
    if len(transcript_holes) > SHOW:
        more = transcript_holes[SHOW:]
        level = "warning" if any(z for _l, z in more) else "info"
        doc.add("holes", level, f"{len(more)} more transcript(s) with damaged lines")
    if bc.enabled:
        _check_mirror_holes(doc, root, jobs)
    _check_zero_torn(doc, root)


def _check_mirror_holes(doc: Checkup, root: Path, jobs: dict[str, Job]) -> None:
    holes = gaps = 0
    for sid in mirror_files.mirrored_sessions(root):
        live = mirror_files.live_path(root, sid)
        damage = mirror_damage(live)
        job = jobs.get(sid)
        missing = _gap(root, job) if job is not None else []
        if not damage and not missing:
            continue
        rel = doc.rel(live)
        if damage:
            holes += 1
            msg = f"mirror {rel}: {summarize(damage)}"
            if missing:
                msg += f"; {len(missing)} record(s) missing before its last one"
        else:
            gaps += 1
            shown = ", ".join(missing[:SHOW]) + (", ..." if len(missing) > SHOW else "")
            msg = f"mirror {rel}: {len(missing)} record(s) missing before its last one ({shown})"
        if job is None:
            doc.add("holes" if damage else "mirror-gap", "warning", msg + " (no transcript)")
            continue
        doc.add(
            "holes" if damage else "mirror-gap",
            "warning",
            msg,
            f"refill it from the transcript, keeping the old file as {live.name}"
            f".{mirror_holes.DAMAGED}-<time>",
            partial(mirror_holes.refill, root, job),
        )
    if not holes:
        doc.add("holes", "ok", "no zero-filled or garbled lines in the mirror")
    if not gaps:
        doc.add("mirror-gap", "ok", "no mirror is missing records between the ones it has")


def _gap(root: Path, job: Job) -> list[str]:
    try:
        src = Source(job.paths)
    except FileNotFoundError:
        return []
    try:
        plan = plan_refill(root, job, src, src.size())
    finally:
        src.close()
    return plan.missing if plan is not None else []


def _transcript_damage(path: Path) -> tuple[str, bool] | None:
    """A summary of a transcript's damaged lines and whether any holds zeros, or None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    found = damaged_lines(data, _is_json_object)
    return (summarize(found), any(d.zeros for d in found)) if found else None


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _check_zero_torn(doc: Checkup, root: Path) -> None:
    folders = [a / "sessions" for a in doc.agent_folders()]
    if root.is_dir():
        folders += [Path(e.path) for e in os.scandir(root) if e.is_dir()]
    zeros: list[Path] = []
    size = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for e in os.scandir(folder):
            if ".torn-" not in e.name or not e.is_file():
                continue
            n = e.stat().st_size
            if n > ZERO_CHECK_MAX:
                continue
            try:
                data = Path(e.path).read_bytes()
            except OSError:
                continue
            if is_all_zeros(data):
                zeros.append(Path(e.path))
                size += n
    if not zeros:
        doc.add("torn-zeros", "ok", "no torn side file is only zeros")
        return
    shown = ", ".join(doc.rel(p) for p in zeros[:SHOW]) + (", ..." if len(zeros) > SHOW else "")
    doc.add(
        "torn-zeros",
        "info",
        f"{len(zeros)} torn side file(s), {size:,} bytes, hold only zeros (a power cut's unwritten "
        f"pages, no data; kept, never deleted, may be removed by hand): {shown}",
    )

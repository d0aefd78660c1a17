"""Reading an OpenClaw state folder (JSONL era 2026.6 and SQLite era 2026.9) into an import plan.

Nothing here writes anywhere: source files are opened read-only, and agent databases as
`openclaw_db.AgentDatabase` describes. The walk: `agents/<id>/agent/openclaw-agent.sqlite`
(SQLite era, `openclaw_db.py`), then `agents/<id>/sessions/` (JSONL era, and the `.zst` files a
2026.9 deletion publishes), then `workspace[-<id>]/memory/`. Everything else in the folder is
listed in the report as left out, with the reason, never silently ignored.

JSONL-era decisions:
- A transcript is copied byte for byte (verified by sha256). Its header stays as OpenClaw wrote it,
  without sessiond's `sessionKey` field: `sessions.json` maps keys to these sessions as it did in
  OpenClaw, and `archive/index.jsonl` records the key of every archive.
- `sessionFile` is an absolute path from the machine that wrote it: only its base name is used,
  inside `agents/<id>/sessions/`.
- Archive names `<file>.jsonl.reset.<ts>` / `.deleted.<ts>` (2026.9 adds `.<generation>.zst`)
  give the reason and the archive time. An archive's key comes from its own header, else from
  `usageFamilySessionIds` or `compactionCheckpoints` in the agent's registry (which also give
  predecessor and successor), else it stays null.
- Active-named transcripts that no registry entry names are imported as archives with reason
  `orphan`: never dropped. Trajectory side files and skills-prompt folders are not transcripts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from daemon.core.keys import normalize_agent_id
from daemon.core.lineage import Ended, rebuild
from daemon.errors import os_reason
from daemon.importers.events import (
    ArchiveName,
    Ending,
    describe,
    events_from_jsonl,
    file_chunks,
    first_line,
    header_of,
    parse_archive_name,
    plan_session,
    session_id_of_name,
    zstd_decompress,
)
from daemon.importers.openclaw_db import AGENT_DB, AgentDatabase, AgentScan, read_database
from daemon.importers.plan import (
    Plan,
    PlannedMemory,
    PlannedMissing,
    PlannedTranscript,
    Problem,
    Progress,
)
from daemon.store.registry import SESSIONS_JSON, session_file_name


class SourceError(Exception):
    """The source folder cannot be imported at all (not an OpenClaw folder, unknown agent)."""


def is_side_file(name: str) -> bool:
    """OpenClaw's trajectory side files sit beside transcripts but are not transcripts."""
    return ".trajectory." in name or name.endswith(".trajectory-path.json")


@dataclass(frozen=True, slots=True)
class Lineage:
    key: str | None
    predecessor: str | None
    successor: str | None


def lineage_index(registry: dict[str, Any]) -> dict[str, Lineage]:
    """Session id -> (key, predecessor, successor) from a registry's usage families.

    OpenClaw 2026.6 lists, per key, the ids of the sessions that key has had
    (`usageFamilySessionIds`, oldest first) and names sessions in `compactionCheckpoints`; that
    is how an archived transcript, whose file does not name its key, gets it back.
    """
    out: dict[str, Lineage] = {}
    for key, entry in registry.items():
        if not isinstance(entry, dict):
            continue
        family_key = entry.get("usageFamilyKey")
        fk = family_key if isinstance(family_key, str) else key
        ids = [i for i in entry.get("usageFamilySessionIds") or [] if isinstance(i, str)]
        for n, sid in enumerate(ids):
            out[sid] = Lineage(
                fk, ids[n - 1] if n > 0 else None, ids[n + 1] if n + 1 < len(ids) else None
            )
        for cp in entry.get("compactionCheckpoints") or []:
            if isinstance(cp, dict) and isinstance(cp.get("sessionId"), str):
                ck = cp.get("sessionKey")
                out.setdefault(
                    cp["sessionId"], Lineage(ck if isinstance(ck, str) else fk, None, None)
                )
    return out


class OpenClawSource:
    """An OpenClaw state folder being read (context manager: it owns open agent databases)."""

    def __init__(self, root: Path, agent: str | None = None, progress: Progress | None = None):
        self.root = root
        self.agent = agent
        self.progress = progress or Progress()
        self.dbs: list[AgentDatabase] = []
        self.plan = Plan(source=root)

    def __enter__(self) -> OpenClawSource:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for db in self.dbs:
            db.__exit__(None, None, None)
        self.dbs.clear()

    # -- helpers ---------------------------------------------------------------------------

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def problem(self, path: Path | str, reason: str) -> None:
        self.plan.problems.append(
            Problem(path if isinstance(path, str) else self.rel(path), reason)
        )

    def skip(self, path: Path | str, reason: str) -> None:
        self.plan.skipped.append(Problem(path if isinstance(path, str) else self.rel(path), reason))

    def remember(self, path: Path) -> None:
        st = path.stat()
        self.plan.read_files[path] = (st.st_size, st.st_mtime_ns)

    # -- top level -------------------------------------------------------------------------

    def read(self) -> Plan:
        """Plan the whole import; raises SourceError when the folder is not an OpenClaw folder."""
        root = self.root
        if not root.is_dir():
            raise SourceError(f"{root} is not a folder")
        agents_dir = root / "agents"
        found: dict[str, Path] = {}
        if agents_dir.is_dir():
            for entry in sorted(agents_dir.iterdir()):
                if not entry.is_dir():
                    self.skip(entry, "not an agent folder")
                elif normalize_agent_id(entry.name) != entry.name:
                    self.problem(entry, "folder name is not a valid agent id; not imported")
                else:
                    found[entry.name] = entry
        default = self.default_agent()
        workspaces = self.workspace_agents(default)
        if not found and not workspaces:
            raise SourceError(f"{root} has no agents/ or workspace folder: not an OpenClaw folder")
        if self.agent is not None:
            if self.agent not in found and self.agent not in workspaces:
                names = ", ".join(sorted(set(found) | set(workspaces))) or "none"
                raise SourceError(f"no agent {self.agent!r} in {root} (agents: {names})")
            found = {k: v for k, v in found.items() if k == self.agent}
            workspaces = {k: v for k, v in workspaces.items() if k == self.agent}
        self.plan.agents = sorted(set(found) | set(workspaces))
        for agent_id, folder in found.items():
            self.read_agent(AgentScan(agent_id, folder))
        for agent_id, ws in workspaces.items():
            self.read_memory(agent_id, ws)
        for entry in sorted(root.iterdir()):
            is_workspace = entry.name == "workspace" or entry.name.startswith("workspace-")
            if entry.name != "agents" and not is_workspace:
                self.skip(entry, "not session data (configuration or state OpenClaw rebuilds)")
        self.progress.done()
        return self.plan

    def default_agent(self) -> str:
        """The source's default agent (its memory lives in `workspace/`), from openclaw.json."""
        path = self.root / "openclaw.json"
        try:
            import json5

            cfg = json5.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "main"
        except Exception as e:  # json5 raises several kinds; the default is a safe fallback
            self.plan.notes.append(f"openclaw.json unreadable ({e}); default agent taken as main")
            return "main"
        agents = cfg.get("agents") if isinstance(cfg, dict) else None
        if not isinstance(agents, dict):
            return "main"
        listed = agents.get("list", agents.get("entries"))
        items: list[dict[str, Any]] = []
        if isinstance(listed, list):
            items = [a for a in listed if isinstance(a, dict)]
        elif isinstance(listed, dict):
            items = [{"id": k, **v} for k, v in listed.items() if isinstance(v, dict)]
        for a in items:
            if a.get("default") is True and isinstance(a.get("id"), str):
                return normalize_agent_id(a["id"])
        if items and isinstance(items[0].get("id"), str):
            return normalize_agent_id(items[0]["id"])
        return "main"

    def workspace_agents(self, default: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not entry.is_dir():
                continue
            if entry.name == "workspace":
                out[default] = entry
            elif entry.name.startswith("workspace-"):
                agent = entry.name[len("workspace-") :]
                if normalize_agent_id(agent) == agent:
                    out.setdefault(agent, entry)
                else:
                    self.problem(entry, "workspace of an invalid agent id; not imported")
        return out

    # -- one agent -------------------------------------------------------------------------

    def read_agent(self, scan: AgentScan) -> None:
        self.progress.show(f"reading agent {scan.agent_id}")
        for entry in sorted(scan.folder.iterdir()):
            if entry.name not in ("agent", "sessions"):
                self.skip(entry, "not session data")
        agent_dir = scan.folder / "agent"
        if agent_dir.is_dir():
            for entry in sorted(agent_dir.iterdir()):
                if entry.name == AGENT_DB:
                    self.plan.eras.add("sqlite")
                    read_database(self, scan, entry)
                elif entry.name.startswith(AGENT_DB + "-"):
                    continue  # its -wal/-journal/-shm, read through the database
                else:
                    self.skip(entry, "agent configuration or model catalog, not session data")
        sessions = scan.folder / "sessions"
        if sessions.is_dir():
            self.read_sessions_folder(scan, sessions)

    # -- JSONL era -------------------------------------------------------------------------

    def read_sessions_folder(self, scan: AgentScan, folder: Path) -> None:
        registry: dict[str, Any] = {}
        reg_path = folder / SESSIONS_JSON
        if reg_path.is_file():
            self.plan.eras.add("jsonl")
            try:
                self.remember(reg_path)
                doc = orjson.loads(reg_path.read_bytes())
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
                registry = doc
            except (OSError, ValueError) as e:
                self.problem(
                    reg_path,
                    f"unreadable ({e}); its transcripts are imported as orphan archives",
                )
        family = lineage_index(registry)
        first_planned = len(self.plan.transcripts)
        names = sorted(p.name for p in folder.iterdir())
        active_names = set()
        archived: list[tuple[str, ArchiveName]] = []
        for name in names:
            path = folder / name
            if name == SESSIONS_JSON:
                continue
            if path.is_dir():
                self.skip(path, "folder beside the sessions (skills prompts or similar)")
            elif not path.is_file():
                self.skip(path, "not a regular file")
            elif is_side_file(name):
                self.skip(path, "trajectory side file, not a transcript")
            elif (an := parse_archive_name(name)) is not None:
                archived.append((name, an))
            elif name.endswith(".jsonl") and not name.startswith("."):
                active_names.add(name)
            else:
                self.skip(path, "not a transcript (unrecognised name)")
        claimed_names: set[str] = set()
        for key, entry in registry.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sessionId"), str):
                self.problem(f"{self.rel(reg_path)}#{key}", "registry entry without a sessionId")
                continue
            sid = entry["sessionId"]
            name = session_file_name(entry, sid)
            if name not in active_names and f"{sid}.jsonl" in active_names:
                name = f"{sid}.jsonl"
            if name not in active_names:
                # OpenClaw's cleanup removes transcripts and leaves their rows: the row's facts
                # (key, ids, times, fields) are kept as an archived record, with a warning.
                self.plan.missing.append(
                    PlannedMissing(
                        scan.agent_id, sid, key, f"{self.rel(reg_path)}#{key}", name, entry
                    )
                )
                continue
            if name in claimed_names:
                self.problem(
                    f"{self.rel(reg_path)}#{key}",
                    f"{name} is already the transcript of another key; entry not imported",
                )
                continue
            claimed_names.add(name)
            if sid in scan.claimed:
                self.skip(folder / name, "also in the agent database, imported from there")
                continue
            self.plan_file(scan, folder / name, key, sid, active=True, entry=entry, family=family)
        for name in sorted(active_names - claimed_names):
            self.plan_file(
                scan,
                folder / name,
                None,
                None,
                active=False,
                family=family,
                reason="orphan",
                archived_at=None,
            )
        for name, an in archived:
            path = folder / name
            if an.compressed:
                self.plan_compressed_archive(scan, path, an, family)
            else:
                self.plan_file(
                    scan,
                    path,
                    None,
                    None,
                    active=False,
                    family=family,
                    reason=an.reason,
                    archived_at=an.archived_at,
                    base=an.base,
                )
        self.chain(first_planned)

    def chain(self, first: int) -> None:
        """Fill in the predecessor and successor no usage family named, for the transcripts
        planned from `first` on (one sessions folder): per key, by time (core/lineage.py)."""
        planned = self.plan.transcripts
        ended: dict[str, list[Ended]] = {}
        current: dict[str, PlannedTranscript] = {}
        for t in planned[first:]:
            if t.session_key is None or t.reason == "orphan":
                continue
            if t.active:
                current[t.session_key] = t
            else:
                at = t.archived_at or t.content.ended_at or 0
                e = Ended(t.session_id, t.content.started_at, at, t.predecessor, t.successor)
                ended.setdefault(t.session_key, []).append(e)
        links: dict[str, tuple[str | None, str | None]] = {}
        for key, items in ended.items():
            cur = current.get(key)
            started = cur.content.started_at if cur is not None else None
            links.update(rebuild(items, cur.session_id if cur else None, started))
        for n in range(first, len(planned)):
            t = planned[n]
            if not t.active and t.session_id in links and t.session_key is not None:
                pred, succ = links[t.session_id]
                planned[n] = replace(t, predecessor=pred, successor=succ)

    def plan_file(
        self,
        scan: AgentScan,
        path: Path,
        key: str | None,
        sid: str | None,
        *,
        active: bool,
        family: dict[str, Lineage],
        entry: dict[str, Any] | None = None,
        reason: str | None = None,
        archived_at: int | None = None,
        base: str | None = None,
    ) -> None:
        """Plan a byte-for-byte copy of one JSONL transcript."""
        self.progress.show(f"reading {self.rel(path)}")
        try:
            self.remember(path)
            header = header_of(first_line(path))
            if header is None and path.stat().st_size > 0:
                self.problem(path, "could not read: the first line is not a session header")
                return
            # An empty transcript (a session created but never written) is copied as it is:
            # the daemon writes the header with the first message it appends.
            header = header or {}
            content = describe(file_chunks(path), byte_copy=True, produce=lambda: file_chunks(path))
        except OSError as e:
            self.problem(path, f"could not read: {os_reason(e)}")
            return
        base = base or path.name
        hid = header.get("id")
        sid = sid or (hid if isinstance(hid, str) and hid else session_id_of_name(base))
        if sid in scan.claimed:
            self.skip(path, f"session {sid} is also in the agent database, imported from there")
            return
        # Two JSONL files of one session id (an archive beside a live file) are both kept.
        lin = family.get(sid, Lineage(None, None, None))
        hkey = header.get("sessionKey")
        if key is None:
            key = hkey if isinstance(hkey, str) else lin.key
        name = base if base.endswith(".jsonl") else f"{sid}.jsonl"
        self.plan.transcripts.append(
            PlannedTranscript(
                agent_id=scan.agent_id,
                session_id=sid,
                session_key=key,
                origin=self.rel(path),
                name=name,
                content=content,
                active=active,
                entry=entry,
                reason=None if active else reason,
                archived_at=archived_at,
                predecessor=lin.predecessor,
                successor=lin.successor,
                mtime_ns=path.stat().st_mtime_ns,
            )
        )

    def plan_compressed_archive(
        self, scan: AgentScan, path: Path, an: ArchiveName, family: dict[str, Lineage]
    ) -> None:
        """A `.zst` archive file; skipped when its database row was imported already."""
        sid = session_id_of_name(an.base)
        if sid in scan.claimed:
            self.skip(path, "same archive as the database's session_transcript_archives row")
            return
        try:
            self.remember(path)
            data = zstd_decompress(path.read_bytes())
        except (OSError, ValueError) as e:
            self.problem(path, f"could not read: {e}")
            return
        source = events_from_jsonl(data)
        head = source.header or {}
        if isinstance(head.get("id"), str):
            sid = head["id"]
        hkey = head.get("sessionKey")
        lin = family.get(sid, Lineage(None, None, None))
        key = hkey if isinstance(hkey, str) else lin.key
        scan.claimed.add(sid)
        ending = Ending(False, an.reason, an.archived_at, lin.predecessor, lin.successor)
        self.plan.transcripts.extend(
            plan_session(scan.agent_id, sid, key, source, ending, self.rel(path), None)
        )

    # -- memory ----------------------------------------------------------------------------

    def read_memory(self, agent_id: str, ws: Path) -> None:
        memory = ws / "memory"
        others = 0
        for dirpath, dirnames, filenames in os.walk(ws):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            for fn in sorted(filenames):
                p = here / fn
                if memory not in p.parents:
                    others += 1
                    continue
                if p.is_symlink() or not p.is_file():
                    self.skip(p, "not a regular file")
                    continue
                try:
                    self.remember(p)
                    data = p.read_bytes()
                except OSError as e:
                    self.problem(p, f"could not read: {os_reason(e)}")
                    continue
                self.plan.memory.append(
                    PlannedMemory(
                        agent_id=agent_id,
                        origin=self.rel(p),
                        source=p,
                        rel=str(p.relative_to(memory)),
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                    )
                )
        if others:
            self.skip(
                ws,
                f"{others} workspace files outside memory/ (AGENTS.md, notes, ...): the agent's "
                "own files, not session data; copy them yourself if you want them",
            )

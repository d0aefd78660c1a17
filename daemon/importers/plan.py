"""What an import will write, and the report of what it did: plain records, no I/O.

The reader (`openclaw.py`) turns a source folder into a `Plan` without writing anything; the writer
(`writer.py`) carries the plan out, or only checks it for `--dry-run`. Every transcript in a plan
knows its size, sha256 and entry count before a byte is written, so the writer can verify what it
wrote against what it read and so a re-run can recognise what is already there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

Outcome = Literal["imported", "would-import", "already-present", "failed"]


@dataclass(frozen=True, slots=True)
class Content:
    """The bytes of one transcript, described before they are written.

    `produce` yields the bytes again (from the source file or the source database) each time it
    is called; the writer checks what it yields against `size`, `sha256` and `entries`, so a
    source that changes between reading and writing is caught instead of copied half-way.
    """

    size: int
    sha256: str
    entries: int  # lines after the session header
    messages: int  # entries of type "message"
    started_at: int | None
    ended_at: int | None
    byte_copy: bool  # True: the source file's bytes, unchanged (verified by sha256)
    produce: Callable[[], Iterator[bytes]]


@dataclass(frozen=True, slots=True)
class PlannedTranscript:
    """One transcript to import: an active session (with its registry entry) or an archive."""

    agent_id: str
    session_id: str
    session_key: str | None
    origin: str  # where it comes from, relative to the source folder, for the report
    name: str  # file name in sessions/ (active) or sessions/archive/ (archived)
    content: Content
    active: bool
    entry: dict[str, Any] | None = None  # the sessions.json entry (active sessions only)
    reason: str | None = None  # archive reason (archived only)
    archived_at: int | None = None
    predecessor: str | None = None
    successor: str | None = None
    note: str | None = None
    mtime_ns: int | None = None  # a byte copy keeps its source file's modification time


@dataclass(frozen=True, slots=True)
class PlannedMissing:
    """A registry row whose transcript is gone: imported as an archived record only."""

    agent_id: str
    session_id: str
    session_key: str
    origin: str  # registry file and key, for the report
    name: str  # the transcript file the row names
    entry: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PlannedMemory:
    """One memory file, copied byte for byte into the agent's workspace memory/ folder."""

    agent_id: str
    origin: str
    source: Path
    rel: str  # path below memory/
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that was not imported, and why (`where` is relative to its folder)."""

    where: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.where, "reason": self.reason}


@dataclass(slots=True)
class Plan:
    """Everything a source folder holds that the import will write, plus what it cannot read."""

    source: Path
    eras: set[str] = field(default_factory=set)
    agents: list[str] = field(default_factory=list)
    transcripts: list[PlannedTranscript] = field(default_factory=list)
    memory: list[PlannedMemory] = field(default_factory=list)
    missing: list[PlannedMissing] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # not session data, left out on purpose
    notes: list[str] = field(default_factory=list)
    # every source file read, with (size, mtime_ns) when it was read: checked again at the end
    read_files: dict[Path, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class Tally:
    sessions: int = 0
    archives: int = 0
    messages: int = 0
    memoryFiles: int = 0
    missingTranscripts: int = 0  # registry rows kept as archived records, without a file

    def to_json(self) -> dict[str, int]:
        return {
            "sessions": self.sessions,
            "archives": self.archives,
            "missingTranscripts": self.missingTranscripts,
            "messages": self.messages,
            "memoryFiles": self.memoryFiles,
        }


@dataclass(slots=True)
class Report:
    """The import's outcome; `imported` counts what was (or, in a dry run, would be) written."""

    source: str
    state_dir: str
    dry_run: bool
    eras: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    imported: Tally = field(default_factory=Tally)
    already_present: Tally = field(default_factory=Tally)
    items: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    # imported, but not whole: a registry row whose transcript was gone (not a failure)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, t: PlannedTranscript, outcome: Outcome) -> None:
        tally = self.already_present if outcome == "already-present" else self.imported
        if outcome == "failed":
            return
        if t.active:
            tally.sessions += 1
        else:
            tally.archives += 1
        tally.messages += t.content.messages

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "source": self.source,
            "stateDir": self.state_dir,
            "eras": self.eras,
            "agents": self.agents,
            "imported": self.imported.to_json(),
            "alreadyPresent": self.already_present.to_json(),
            "notImported": [p.to_json() for p in self.problems],
            "warnings": [p.to_json() for p in self.warnings],
            "skipped": [p.to_json() for p in self.skipped],
            "notes": self.notes,
            "transcripts": self.items,
        }

    def render(self) -> str:
        """The report for a person: counts first, then every problem with its reason."""
        verb = "would import" if self.dry_run else "imported"
        i, a = self.imported, self.already_present
        lines = [
            f"{'dry run: ' if self.dry_run else ''}{self.source} -> {self.state_dir}",
            f"  era: {', '.join(self.eras) or 'none found'}; agents: {', '.join(self.agents)}",
            f"  {verb}: {i.sessions} sessions, {i.archives} archives, {i.messages} messages, "
            f"{i.memoryFiles} memory files"
            + (f", {i.missingTranscripts} rows without transcript" if i.missingTranscripts else ""),
        ]
        if a.sessions or a.archives or a.memoryFiles:
            lines.append(
                f"  already present (skipped): {a.sessions} sessions, {a.archives} archives, "
                f"{a.messages} messages, {a.memoryFiles} memory files"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.warnings:
            lines.append(f"  WARNING ({len(self.warnings)}, imported as archived records):")
            lines.extend(f"    {p.where}: {p.reason}" for p in self.warnings)
        if self.skipped:
            lines.append(f"  left out on purpose ({len(self.skipped)}, not session data):")
            lines.extend(f"    {p.where}: {p.reason}" for p in self.skipped)
        if self.problems:
            lines.append(f"  NOT IMPORTED ({len(self.problems)}):")
            lines.extend(f"    {p.where}: {p.reason}" for p in self.problems)
        else:
            lines.append("  everything readable was accounted for")
        return "\n".join(lines)


class Progress:
    """One self-overwriting status line on stderr, shown only when stderr is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + text[:150])
            self.stream.flush()
            self.shown = True

    def done(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

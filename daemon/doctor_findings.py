"""What `sessiond doctor` reports: findings (how bad, what, and the repair) and the report
printed for people or as --json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from daemon.config import Config

LEVELS = ("ok", "info", "warning", "error")
SHOW = 5  # paths named in one finding's message


@dataclass(slots=True)
class Finding:
    """One thing doctor found: how bad, what it is, and what --repair does about it."""

    check: str
    level: str  # ok | info | warning | error
    message: str
    action: str | None = None
    fix: Callable[[], object] | None = field(default=None, repr=False)
    outcome: str | None = None  # after --repair: "repaired" or "failed: why"

    @property
    def problem(self) -> bool:
        """Counts against the exit code while unrepaired."""
        return self.level in ("warning", "error") and self.outcome != "repaired"

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "level": self.level,
            "message": self.message,
            "action": self.action,
            "outcome": self.outcome,
        }

    def render(self, repairing: bool) -> str:
        line = f"{self.level:8} {self.check:15} {self.message}"
        if self.action and self.outcome:
            line += f"\n{'':24} {self.outcome}: {self.action}"
        elif self.action:
            line += f"\n{'':24} {'repair' if repairing else 'would'}: {self.action}"
        return line


@dataclass(slots=True)
class DoctorReport:
    state_dir: Path
    findings: list[Finding]
    repaired: bool

    @property
    def ok(self) -> bool:
        return not any(f.problem for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "stateDir": str(self.state_dir),
            "ok": self.ok,
            "repair": self.repaired,
            "findings": [f.to_json() for f in self.findings],
        }

    def render(self) -> str:
        out = [f"sessiond doctor: {self.state_dir}"]
        out += [f.render(self.repaired) for f in self.findings]
        problems = [f for f in self.findings if f.problem]
        if not problems:
            out.append("no problems" + (" left" if self.repaired else ""))
        elif self.repaired:
            out.append(f"{len(problems)} problem(s) could not be repaired")
        else:
            fixable = sum(1 for f in problems if f.fix is not None)
            out.append(
                f"{len(problems)} problem(s); `sessiond doctor --repair` repairs {fixable} "
                "(only by moving, adopting and appending; nothing is deleted)"
            )
        return "\n".join(out)


class Checkup(Protocol):
    """What the checks kept in their own modules (doctor_holes, doctor_registry) need of the
    Doctor (daemon/doctor.py). A Protocol, so that they do not import the module that imports
    them."""

    state_dir: Path
    cfg: Config

    def add(
        self,
        check: str,
        level: str,
        message: str,
        action: str | None = None,
        fix: Callable[[], object] | None = None,
    ) -> None: ...

    def rel(self, p: Path) -> str: ...

    def agent_folders(self) -> list[Path]: ...

    def transcripts(self) -> list[tuple[str, Path, bool]]: ...

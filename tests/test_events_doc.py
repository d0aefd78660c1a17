"""docs/events.md lists every log event the code emits, with its level and fields: this scans
daemon/ for structlog calls (`log.info("x.y", ...)`) and checks the table both ways."""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "events.md"
LEVEL_METHODS = {
    "debug": "debug",
    "info": "info",
    "msg": "info",
    "warning": "warning",
    "warn": "warning",
    "error": "error",
    "exception": "error",
    "critical": "critical",
    "fatal": "critical",
}
NOT_FIELDS = {"exc_info", "stack_info"}  # structlog's own keywords, rendered as `exception`
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


@dataclass
class Emitted:
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    where: list[str] = field(default_factory=list)


def _literals(value: ast.expr) -> list[str] | None:
    """The strings an expression can be: a literal, or a conditional expression of literals."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return [value.value]
    if isinstance(value, ast.IfExp):
        body, orelse = _literals(value.body), _literals(value.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def _event_names(arg: ast.expr, scope: ast.AST) -> list[str] | None:
    """The event names a first argument can be: literals, or a local variable bound only to
    literals in its function (`event = "a.b" if x else "c.d"`); None for anything else."""
    if not isinstance(arg, ast.Name):
        return _literals(arg)
    names: list[str] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == arg.id for t in node.targets
        ):
            values = _literals(node.value)
            if values is None:
                return None
            names += values
    return names or None


def _is_logger(node: ast.expr) -> bool:
    """`log`, `self.log`, `structlog.get_logger(...)`: what our modules log through."""
    if isinstance(node, ast.Name):
        return node.id in {"log", "logger"}
    if isinstance(node, ast.Attribute):
        return node.attr in {"log", "logger"}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in {"get_logger", "bind"}
    return False


@functools.cache
def scan() -> tuple[dict[str, Emitted], list[str]]:
    """Every event name logged in daemon/, and the calls whose name could not be read."""
    found: dict[str, Emitted] = {}
    unreadable: list[str] = []
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        scope_of: dict[ast.AST, ast.AST] = {}
        for scope in ast.walk(tree):
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(scope):
                    scope_of[inner] = scope  # outer first, inner functions overwrite
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVEL_METHODS
                and _is_logger(node.func.value)
                and node.args
            ):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            names = _event_names(node.args[0], scope_of.get(node, tree))
            if names is None:
                unreadable.append(where)
                continue
            for name in names:
                e = found.setdefault(name, Emitted())
                e.levels.add(LEVEL_METHODS[node.func.attr])
                e.fields.update(k.arg for k in node.keywords if k.arg and k.arg not in NOT_FIELDS)
                e.where.append(where)
    return found, unreadable


@dataclass
class Documented:
    levels: set[str]
    fields: set[str]


def documented() -> dict[str, Documented]:
    out: dict[str, Documented] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        name = cells[0].strip("`")
        assert name not in out, f"docs/events.md lists {name} twice"
        levels = set(re.findall(r"\b(debug|info|warning|error|critical)\b", cells[1]))
        fields = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[2]))
        out[name] = Documented(levels, fields)
    return out


def test_every_event_name_is_read_from_a_literal() -> None:
    _, unreadable = scan()
    assert not unreadable, f"log calls whose event name is not a literal: {unreadable}"


def test_the_scan_finds_the_events_it_should() -> None:
    found, _ = scan()
    # One event per kind of call the scan must understand: module logger, get_logger(...) inline,
    # a name chosen by a conditional expression.
    assert {"daemon.started", "daemon.lock_failed", "guard.violation"} <= set(found)
    assert {"compaction.failed", "memory.flush_failed"} <= set(found)
    assert len(found) > 60


def test_every_emitted_event_is_documented() -> None:
    found, _ = scan()
    missing = sorted(set(found) - set(documented()))
    assert not missing, (
        f"emitted but not in docs/events.md: {[(m, found[m].where) for m in missing]}"
    )


def test_every_documented_event_is_emitted() -> None:
    found, _ = scan()
    stale = sorted(set(documented()) - set(found))
    assert not stale, f"in docs/events.md but emitted nowhere: {stale}"


def test_documented_levels_are_the_levels_emitted() -> None:
    found, _ = scan()
    wrong = {
        name: (sorted(doc.levels), sorted(found[name].levels))
        for name, doc in documented().items()
        if name in found and doc.levels != found[name].levels
    }
    assert not wrong, f"documented levels != emitted levels: {wrong}"


def test_documented_fields_include_every_field_emitted() -> None:
    found, _ = scan()
    missing = {
        name: sorted(found[name].fields - doc.fields)
        for name, doc in documented().items()
        if name in found and found[name].fields - doc.fields
    }
    assert not missing, f"fields logged but not documented: {missing}"


def test_operators_find_warnings_at_warning_priority_or_above() -> None:
    found, _ = scan()
    assert found["config.rejected"].levels == {"warning"}
    assert found["daemon.lock_failed"].levels == {"error"}


def test_event_names_are_dotted_and_lower_case() -> None:
    found, _ = scan()
    assert not [n for n in found if not EVENT_NAME.match(n)]

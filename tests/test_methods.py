"""The method table (daemon/methods.py) against README's protocol reference and the role rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.core.roles import ADMIN_ONLY, ROLES, Rule
from daemon.errors import InvalidParams
from daemon.methods import METHODS, rule_of

README = Path(__file__).resolve().parent.parent / "README.md"


def documented_methods() -> list[str]:
    """The `### \\`name\\`` headings of README's "Protocol reference" section."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Protocol reference\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"^### `([a-z.]+)`$", text[start:end], flags=re.MULTILINE)


def test_every_method_is_documented_and_every_documented_method_is_served() -> None:
    documented = documented_methods()
    assert len(documented) == len(set(documented)), "a method documented twice"
    assert sorted(documented) == sorted(METHODS)


def test_every_method_has_a_role_rule_that_admin_passes() -> None:
    for name, row in METHODS.items():
        assert isinstance(row.rule, Rule), name
        assert "admin" in row.rule.roles and row.rule.roles <= set(ROLES), name
        assert row.kind in ("sync", "async", "commit"), name


def test_a_name_without_a_row_is_admin_only() -> None:
    assert rule_of("sessions.delete") is ADMIN_ONLY
    assert rule_of("sessions.history") is METHODS["sessions.history"].rule


def test_the_readme_role_table_matches_the_rules() -> None:
    """README's "may call" column lists exactly the methods each role's rules let through."""
    text = README.read_text(encoding="utf-8")
    for role in ("adapter", "agent"):
        row = re.search(rf"^\| {role} \| (.*) \|$", text, flags=re.MULTILINE)
        assert row is not None, role
        named = {n for n in re.findall(r"`([a-z.]+)`", row.group(1)) if n in METHODS or "." in n}
        allowed = {n for n, m in METHODS.items() if role in m.rule.roles and n != "auth.hello"}
        assert named == allowed, role


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_parser_names_the_field_it_rejects(name: str) -> None:
    """Each row's parser is the whole validation: an unknown param is -32602 naming it."""
    with pytest.raises(InvalidParams) as e:
        METHODS[name].parse({"surelyNotAParam": 1})
    assert e.value.data is not None and isinstance(e.value.data.get("field"), str)

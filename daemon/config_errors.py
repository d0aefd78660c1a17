"""Pydantic's validation errors as one line per problem: `file: key.path: what was expected,
got what`, with key paths holding only keys the user wrote.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from daemon.config_fields import show


def format_validation_error(source: str, e: ValidationError, data: Any = None) -> str:
    """One line per problem: `file: key.path: what was expected, got what`.

    `data` is the input that was validated; with it, key paths hold only keys the user wrote
    (pydantic puts union member names such as "int" into its locations).
    """
    by_path: dict[str, list[str]] = {}
    for err in e.errors():
        loc = _user_loc(err["loc"], data) if data is not None else _drop_union_tags(err["loc"])
        by_path.setdefault(_key_path(loc), []).append(_describe(err))
    lines = []
    for path, msgs in by_path.items():
        msgs = list(dict.fromkeys(msgs))
        lines.append(f"{source}: {path}: {_merge(msgs)}")
    return "\n".join(lines)


_TYPE_NAMES = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list [...]",
    "list_type": "a list [...]",
    "dict_type": "an object {...}",
    "model_type": "an object {...}",
    "model_attributes_type": "an object {...}",
}


def _describe(err: Any) -> str:
    kind, got = err["type"], show(err.get("input"))
    if kind == "extra_forbidden":
        return "unknown key (check its spelling against config.example.json5)"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        return f"must be one of {', '.join(show(c) for c in choices)}, got {got}"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, got {got}"
    if kind == "string_too_short":
        return "must not be empty"
    msg = str(err["msg"])
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


def _merge(msgs: list[str]) -> str:
    # A union reports one error per member: "must be A, got x" + "must be B, got x" -> "A or B".
    if len(msgs) > 1 and all(m.startswith("must be ") for m in msgs):
        tails = {m.rpartition(", got ")[2] for m in msgs}
        if len(tails) == 1:
            kinds = [m.removeprefix("must be ").rpartition(", got ")[0] for m in msgs]
            return f"must be {' or '.join(kinds)}, got {tails.pop()}"
    return "; ".join(msgs)


def _user_loc(loc: tuple[int | str, ...], data: Any) -> list[int | str]:
    """The parts of a pydantic location that are keys or indexes in `data`; the rest are tags."""
    parts: list[int | str] = []
    node = data
    for i, p in enumerate(loc):
        in_dict = isinstance(node, dict) and p in node
        in_list = isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node)
        if in_dict or in_list:
            parts.append(p)
            node = node[p]
        elif i == len(loc) - 1 and isinstance(node, dict):
            parts.append(p)  # a required key that is missing
    return parts


def _drop_union_tags(loc: tuple[int | str, ...]) -> list[int | str]:
    # Without the input, guess: pydantic names union members by type ("int", "function-after[...]").
    return [
        p
        for p in loc
        if not (isinstance(p, str) and (p in {"int", "str"} or p.startswith("function-")))
    ]


_PLAIN_KEY = re.compile(r"[A-Za-z_$][\w$-]*")


def _key_path(loc: list[int | str]) -> str:
    """`session.reset.atHour`, `bindings[0].match`, `access.channels["my.chat"]`."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _PLAIN_KEY.fullmatch(p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out or "(top level)"

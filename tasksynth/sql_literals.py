"""Query parameters written into the SQL text as literals, where that is exact.

DuckDB's Python binding imports pandas the first time it converts a Python object (a bound parameter, a
registered Arrow table), to check whether the object is one of pandas' missing values: about 0.4 s that a
short command pays for nothing. The plain values that most statements bind (None, booleans, integers,
finite floats, strings) have exact SQL literals, and a statement with its parameters written in costs no such
conversion. `inline` returns that statement, or None when it cannot be sure it is exact (another kind of
value, a placeholder it cannot tell from text, a count that does not match): the caller then binds as usual.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

INT64 = 2**63


def literal(value: Any) -> str | None:
    """The SQL literal of `value`, or None for a value that has none here."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value) if -INT64 <= value < INT64 else None
    if isinstance(value, float):
        # A bound Python float is a DOUBLE; a bare 1.5 would be a DECIMAL. repr round-trips exactly.
        return f"CAST('{value!r}' AS DOUBLE)" if math.isfinite(value) else None
    if isinstance(value, str):
        if "\x00" in value or not _encodable(value):
            return None
        return "'" + value.replace("'", "''") + "'"
    return None


def inline(sql: str, params: Sequence[Any] | None) -> str | None:
    """`sql` with each `?` placeholder replaced by the literal of its parameter, in order; None when any
    parameter has no literal, the placeholders are not plain `?`s, or their count differs from the
    parameters'."""
    if params is None or isinstance(params, (dict, str, bytes)):
        return None
    literals = []
    for value in params:
        text = literal(value)
        if text is None:
            return None
        literals.append(text)
    if "$" in sql or "\\" in sql:  # $n / $name placeholders, dollar quoting, escape strings: not ours to parse
        return None
    pieces = _split_on_placeholders(sql)
    if pieces is None or len(pieces) != len(literals) + 1:
        return None
    out = [pieces[0]]
    for text, piece in zip(literals, pieces[1:]):
        out += [text, piece]
    return "".join(out)


def _split_on_placeholders(sql: str) -> list[str] | None:
    """The text around each `?` that is outside quotes and comments; None for an unterminated quote or
    comment."""
    pieces, start, i, n = [], 0, 0, len(sql)
    while i < n:
        char = sql[i]
        if char in "'\"":
            end = sql.find(char, i + 1)
            while end != -1 and sql[end + 1:end + 2] == char:  # a doubled quote stays inside
                end = sql.find(char, end + 2)
            if end == -1:
                return None
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                return None
            i = end + 2
        elif char == "?":
            if sql[i + 1:i + 2].isdigit():  # ?1: a numbered placeholder
                return None
            pieces.append(sql[start:i])
            start = i = i + 1
        else:
            i += 1
    pieces.append(sql[start:])
    return pieces


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: let the binding report it
        return False
    return True

"""The canonical state of a tool environment's database, and its hash.

Two runs that leave the world in the same state must hash the same whatever order they wrote rows in, and
float noise below the rounding must not tell them apart; what a task's verifier compares is this hash, as the
tool benchmarks that judge by final state do. Canonical form:

- every user table (SQLite's own `sqlite_*` tables left out), sorted by name;
- its columns in declaration order, its rows sorted by primary key (all columns when it has none);
- floats rounded to `float_digits` decimals (-0.0 is 0.0), bytes as hex, text as is;
- serialised as JSON with sorted keys, hashed with SHA-256.

Pure stdlib on purpose: an exported bundle is graded by a trainer with nothing of this project installed.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

FLOAT_DIGITS = 6


def canonical_state(db: sqlite3.Connection | str | Path, *, float_digits: int = FLOAT_DIGITS) -> dict[str, Any]:
    """{table: {"columns": [...], "rows": [[...], ...]}} in canonical order."""
    connection, owned = _connect(db)
    try:
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        state: dict[str, Any] = {}
        for table in tables:
            info = connection.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
            columns = [column[1] for column in info]
            key_positions = [i for _, i in sorted((column[5], i) for i, column in enumerate(info) if column[5])]
            rows = [[_canonical_value(v, float_digits) for v in row]
                    for row in connection.execute(f"SELECT * FROM {_quote(table)}")]
            order = key_positions or list(range(len(columns)))
            rows.sort(key=lambda row: [_sort_key(row[i]) for i in order] + [_sort_key(v) for v in row])
            state[table] = {"columns": columns, "rows": rows}
        return state
    finally:
        if owned:
            connection.close()


def state_hash(db: sqlite3.Connection | str | Path, *, float_digits: int = FLOAT_DIGITS) -> str:
    """SHA-256 (hex) of the canonical state."""
    return state_digest(canonical_state(db, float_digits=float_digits))


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a canonical state already read (`state_hash` without reading the database again)."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def state_diff(before: dict[str, Any], after: dict[str, Any], *, limit: int = 20) -> list[str]:
    """What changed between two canonical states, as short lines a person (or a verifier's report) can read."""
    lines: list[str] = []
    for table in sorted(set(before) | set(after)):
        old = {json.dumps(r) for r in before.get(table, {}).get("rows", [])}
        new = {json.dumps(r) for r in after.get(table, {}).get("rows", [])}
        if table not in before:
            lines.append(f"+ table {table}")
        elif table not in after:
            lines.append(f"- table {table}")
        lines += [f"- {table} {row}" for row in sorted(old - new)]
        lines += [f"+ {table} {row}" for row in sorted(new - old)]
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


def _connect(db: sqlite3.Connection | str | Path) -> tuple[sqlite3.Connection, bool]:
    if isinstance(db, sqlite3.Connection):
        return db, False
    path = Path(db)
    if not path.is_file():
        raise FileNotFoundError(f"no database at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True), True


def _canonical_value(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        rounded = round(value, digits)
        return 0.0 if rounded == 0 else rounded
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    """SQLite's own order of storage classes: NULL < numbers < text < blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'

"""Grading a code-interpreter answer: one rule per closed answer format (InfiAgent-DABench's idea: a
question states the form of its answer, so a rule, not a model, checks it). Pure functions, no I/O: a
trainer grades with this module, the task's `answer_format` and `answer`, and nothing of the pipeline.

Formats (`answer_format` is a small JSON object):

    {"type": "number", "decimals": 2}              a number; right when it rounds to the gold one at that
                                                   precision (|given - gold| <= half a unit of the last
                                                   decimal, plus a relative 1e-9 for float noise)
    {"type": "text"}                               a word or a name; compared case- and space-insensitively
    {"type": "list", "decimals": 2}                an ordered list; items compared as numbers (at `decimals`)
                                                   or as text
    {"type": "set", "decimals": 2}                 the same, in any order (duplicates ignored)
    {"type": "table", "columns": [...], "decimals": 2, "ordered": false}
                                                   rows of cells under those columns; rows in any order
                                                   unless `ordered`

A given answer may be the value itself (from a kernel) or the agent's final text: JSON is read when it
parses, else a number is the first one in the text, a list is split on commas or new lines, a table is
CSV with a header row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any

FORMATS = ("number", "text", "list", "set", "table")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


class AnswerFormatError(ValueError):
    """An answer format that is not one of FORMATS, or a gold answer that does not fit its format."""


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str = ""  # why not (empty when correct)


def check_format(answer_format: dict[str, Any]) -> None:
    kind = answer_format.get("type") if isinstance(answer_format, dict) else None
    if kind not in FORMATS:
        raise AnswerFormatError(f"answer format type must be one of {', '.join(FORMATS)}; got {kind!r}")
    decimals = answer_format.get("decimals", 0 if kind == "number" else None)
    if decimals is not None and (not isinstance(decimals, int) or not 0 <= decimals <= 12):
        raise AnswerFormatError(f"decimals must be an integer from 0 to 12; got {decimals!r}")
    if kind == "table" and not (isinstance(answer_format.get("columns"), list) and answer_format["columns"]):
        raise AnswerFormatError("a table answer format names its columns")


def normalise(answer_format: dict[str, Any], value: Any) -> Any:
    """A value of this format in canonical JSON form (what is stored as the gold answer, and compared).
    Raises AnswerFormatError when the value cannot be read as this format."""
    check_format(answer_format)
    kind, decimals = answer_format["type"], answer_format.get("decimals")
    if kind == "number":
        return _number(value, answer_format.get("decimals", 0))
    if kind == "text":
        return _text(value)
    if kind in ("list", "set"):
        items = [_cell(item, decimals) for item in _items(value)]
        return sorted(set(items), key=_sort_key) if kind == "set" else items
    rows = _rows(value, answer_format["columns"])
    rows = [[_cell(cell, decimals) for cell in row] for row in rows]
    return rows if answer_format.get("ordered") else sorted(rows, key=lambda row: [_sort_key(c) for c in row])


def grade_answer(answer_format: dict[str, Any], gold: Any, given: Any) -> Grade:
    """Whether `given` (a value or the agent's final text) is the gold answer under the format's rule."""
    expected = normalise(answer_format, gold)
    try:
        got = normalise(answer_format, given)
    except AnswerFormatError as exc:
        return Grade(False, f"unreadable answer: {exc}")
    return Grade(True) if agree(answer_format, expected, got) else Grade(False, f"expected {expected!r}, got {got!r}")


def agree(answer_format: dict[str, Any], first: Any, second: Any) -> bool:
    """Two normalised answers are the same under the format's tolerance."""
    kind = answer_format["type"]
    if kind == "number":
        return _close(first, second, answer_format.get("decimals", 0))
    if kind == "text":
        return first == second
    if len(first) != len(second):
        return False
    if kind == "table":
        if any(len(a) != len(b) for a, b in zip(first, second)):
            return False
        first = [cell for row in first for cell in row]
        second = [cell for row in second for cell in row]
    return all(_cells_agree(a, b, answer_format.get("decimals")) for a, b in zip(first, second))


# ------------------------------------------------------------------------------------------- reading values


def _parsed(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
        text = fenced.group(1) if fenced else text
        try:
            return json.loads(text)
        except ValueError:
            return text
    return value


def _number(value: Any, decimals: int) -> float:
    value = _parsed(value)
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        raise AnswerFormatError("a boolean is not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = next((m.group(0) for m in _NUMBER.finditer(value) if re.search(r"\d", m.group(0))), None)
        if match is None:
            raise AnswerFormatError(f"no number in {value[:80]!r}")
        number = float(match.replace(",", ""))
    else:
        raise AnswerFormatError(f"a {type(value).__name__} is not a number")
    if not math.isfinite(number):
        raise AnswerFormatError(f"{number} is not a finite number")
    return round(number, decimals)


def _text(value: Any) -> str:
    value = _parsed(value)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, (dict, list)):
        raise AnswerFormatError("a text answer is one word or name, not a structure")
    return " ".join(str(value).strip().strip(".").split()).casefold()


def _items(value: Any) -> list[Any]:
    value = _parsed(value)
    if isinstance(value, dict):
        return list(value.values()) if all(isinstance(k, str) for k in value) else list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        parts = re.split(r"\s*[\n,;]\s*", value.strip().strip("[]"))
        return [part.strip().strip("'\"") for part in parts if part.strip()]
    return [value]


def _rows(value: Any, columns: list[str]) -> list[list[Any]]:
    value = _parsed(value)
    wanted = [str(c).casefold() for c in columns]
    if isinstance(value, str):
        reader = list(csv.reader(io.StringIO(value.strip())))
        if not reader:
            raise AnswerFormatError("an empty table")
        header = [h.strip().casefold() for h in reader[0]]
        value = [dict(zip(header, row)) for row in reader[1:]] if set(wanted) <= set(header) else reader
    if isinstance(value, dict):  # {"columns": [...], "data": [[...]]} or a column -> values mapping
        if "data" in value and "columns" in value:
            value = [dict(zip(value["columns"], row)) for row in value["data"]]
        else:
            columns_of = {str(k).casefold(): v for k, v in value.items()}
            if not set(wanted) <= set(columns_of):
                raise AnswerFormatError(f"the table lacks columns {sorted(set(wanted) - set(columns_of))}")
            length = len(columns_of[wanted[0]])
            value = [{c: columns_of[c][i] for c in wanted} for i in range(length)]
    if not isinstance(value, list):
        raise AnswerFormatError("a table is a list of rows")
    rows = []
    for row in value:
        if isinstance(row, dict):
            lowered = {str(k).casefold(): v for k, v in row.items()}
            if not set(wanted) <= set(lowered):
                raise AnswerFormatError(f"a row lacks columns {sorted(set(wanted) - set(lowered))}")
            rows.append([lowered[c] for c in wanted])
        elif isinstance(row, (list, tuple)) and len(row) == len(wanted):
            rows.append(list(row))
        else:
            raise AnswerFormatError(f"a row must have the {len(wanted)} columns {columns}")
    return rows


def _cell(value: Any, decimals: int | None) -> Any:
    if isinstance(value, bool):
        return str(value).casefold()
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return round(float(value), decimals if decimals is not None else 6)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d[\d,]*(\.\d+)?([eE][-+]?\d+)?\s*", value):
        return _cell(float(value.replace(",", "")), decimals)
    if value is None:
        return ""
    return " ".join(str(value).split()).casefold()


def _sort_key(cell: Any) -> tuple[int, Any]:
    return (0, cell) if isinstance(cell, float) else (1, str(cell))


def _close(a: float, b: float, decimals: int | None) -> bool:
    tolerance = 0.5 * 10 ** -(decimals if decimals is not None else 6) + 1e-9 * max(abs(a), abs(b))
    return abs(a - b) <= tolerance


def _cells_agree(a: Any, b: Any, decimals: int | None) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return _close(a, b, decimals)
    return a == b

"""Running a reference solution in the sandbox kernel to get its answer (the gold answer is never what an
agent says it is: it is what the solution's code computes).

A solution is notebook code that leaves its result in a variable `answer`. It runs in a fresh kernel
attempt, then one more cell turns `answer` into plain JSON (a DataFrame into rows, a Series into its values,
numpy scalars into numbers) and prints it after a marker; the value is then normalised under the task's
answer format (`verifiers.notebook.normalise`). A solution that raises, runs out of time, kills its kernel,
leaves no `answer` or one that does not fit the format has no answer, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from notebook_env.kernel import CellResult, KernelPool
from verifiers.notebook import AnswerFormatError, normalise

MARKER = "<<tasksynth-answer>>"
ANSWER_CELL = f'''
def _tasksynth_plain(value):
    import numpy, pandas
    if isinstance(value, pandas.DataFrame):
        frame = value if isinstance(value.index, pandas.RangeIndex) else value.reset_index()
        return [{{str(k): _tasksynth_plain(v) for k, v in row.items()}} for row in frame.to_dict("records")]
    if isinstance(value, (pandas.Series, pandas.Index, numpy.ndarray, list, tuple, set)):
        return [_tasksynth_plain(v) for v in list(value)]
    if isinstance(value, dict):
        return {{str(k): _tasksynth_plain(v) for k, v in value.items()}}
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, (pandas.Timestamp, pandas.Timedelta)):
        return str(value)
    return value
import json as _tasksynth_json
print("{MARKER}" + _tasksynth_json.dumps(_tasksynth_plain(answer), default=str))
'''


@dataclass
class SolutionRun:
    answer: Any = None  # normalised; None when there is none
    reason: str = ""  # solution_error | solution_timeout | kernel_died | no_answer | answer_format
    detail: str = ""
    cells: list[CellResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reason


def run_solution(pool: KernelPool, code: str, answer_format: dict[str, Any]) -> SolutionRun:
    with pool.attempt() as kernel:
        cell = kernel.python(code)
        if cell.status != "ok":
            reason = {"error": "solution_error", "timeout": "solution_timeout"}.get(cell.status, "kernel_died")
            return SolutionRun(None, reason, _last_line(cell.text()), list(kernel.cells))
        extracted = kernel.python(ANSWER_CELL)
        cells = list(kernel.cells)
    printed = extracted.text().rsplit(MARKER, 1)
    if extracted.status != "ok" or len(printed) != 2:
        return SolutionRun(None, "no_answer", _last_line(extracted.text()) or "no variable `answer`", cells)
    try:
        value = json.loads(printed[1].strip().splitlines()[0])
        return SolutionRun(normalise(answer_format, value), "", "", cells)
    except (ValueError, IndexError, AnswerFormatError) as exc:
        return SolutionRun(None, "answer_format", str(exc)[:300], cells)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""

"""Synthesis of one code-interpreter task, and its filters (the DeepSeek-V3.2 report's code-interpreter
kind; the closed answer formats of InfiAgent-DABench; DSGym's check that the data must be touched).

One task, in order, each step a discard reason when it fails:
1. write (`notebook_task_writer`, with the `python` tool on the dataset): a question, its answer format and a
   reference solution (code that leaves `answer`)                        -> unparseable
2. gold: the solution runs twice in fresh sandbox kernels; its answer is the gold one
                                                                         -> solution_fails | nondeterministic
3. shortcut (`notebook_answerer`, no tools, the question and the dataset's description only): answered
   right without the data                                                -> shortcut
4. ambiguity (`notebook_solution_writer`, with the tool, not shown the first solution): a second solution
   must reach the same answer within the format's tolerance               -> ambiguous
5. pass@k (`notebook_solver`, with the tool): k attempts graded by the format's rule; kept when c >= 1
                                                                         -> never_solved

Attempts are graded from their final answer only, by `verifiers.notebook.grade_answer`, as a trainer does.
Each attempt's kernel session is kept as an `.ipynb` blob. Agent records are buffered here and written by
the caller (the store's one writer).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import nbformat

from agent import Agent, AgentError, BufferedRecorder, Tool
from agent.loop import Opening
from notebook_env.datasets import Dataset
from notebook_env.kernel import KernelAttempt, KernelPool
from notebook_env.solutions import SolutionRun, run_solution
from tasksynth.hashing import content_hash
from verifiers.notebook import AnswerFormatError, agree, check_format, grade_answer

WRITER, SECOND, ANSWERER, SOLVER = ("notebook_task_writer", "notebook_solution_writer", "notebook_answerer",
                                    "notebook_solver")
SOLVED, FAILED, ERROR = "solved", "failed", "error"
FORMAT_HELP = ('{"type": "number", "decimals": 2} | {"type": "text"} | {"type": "list", "decimals": 1} | '
               '{"type": "set"} | {"type": "table", "columns": ["a", "b"], "decimals": 1}')


@dataclass
class WrittenTask:
    question: str
    answer_format: dict[str, Any]
    solution: str


@dataclass
class TaskOutcome:
    task_id: str
    dataset: Dataset
    index: int
    status: str = "discarded"  # attempting (filters passed; pass@k next) | discarded
    reason: str | None = None
    detail: str = ""
    task: WrittenTask | None = None
    gold: Any = None
    second_answer: Any = None
    shortcut_answer: str | None = None
    solution_notebook: str | None = None  # .ipynb text of the gold run
    trajectory_id: str | None = None
    recorder: BufferedRecorder = field(default_factory=BufferedRecorder)

    def row(self, run_id: str | None, notebook_blob: str | None) -> dict[str, Any]:
        task = self.task
        return {"task_id": self.task_id, "dataset": self.dataset.name, "task_index": self.index,
                "source": "synth", "status": self.status, "reason": self.reason, "detail": self.detail[:2000],
                "question": task.question if task else None,
                "answer_format": json.dumps(task.answer_format) if task else None,
                "solution": task.solution if task else None, "answer": json.dumps(self.gold),
                "second_answer": json.dumps(self.second_answer), "shortcut_answer": self.shortcut_answer,
                "data_files": json.dumps(self.dataset.files), "solution_notebook": notebook_blob,
                "trajectory_id": self.trajectory_id, "run_id": run_id}


@dataclass
class AttemptOutcome:
    attempt_id: str
    task_id: str
    attempt: int
    outcome: str  # solved | failed | error
    reason: str | None = None
    final_answer: str | None = None
    cells: int = 0
    restarts: int = 0
    notebook: str | None = None  # .ipynb text
    trajectory_id: str | None = None
    seconds: float = 0.0

    def row(self, run_id: str | None, notebook_blob: str | None) -> dict[str, Any]:
        return {"attempt_id": self.attempt_id, "task_id": self.task_id, "attempt": self.attempt,
                "outcome": self.outcome, "reason": self.reason, "final_answer": self.final_answer,
                "cells": self.cells, "restarts": self.restarts, "notebook": notebook_blob,
                "trajectory_id": self.trajectory_id, "seconds": round(self.seconds, 3), "run_id": run_id}


def task_id(dataset: Dataset, index: int, seed: int) -> str:
    return content_hash("notebook-task", dataset.name, sorted(dataset.files.items()), index, seed)


def attempt_id(task: str, index: int) -> str:
    return content_hash("notebook-attempt", task, index)


def python_tool(kernel: KernelAttempt, on_image: Callable[[bytes], str] | None = None) -> Tool:
    """The agent's `python(code)`: run a cell in this attempt's kernel, read back what a notebook shows."""

    def python(code: str) -> str:
        cell = kernel.python(code)
        return kernel.text_of(cell) or "(no output)"

    return Tool("python", "Run Python code in a stateful Jupyter kernel (pandas, numpy, matplotlib and "
                "scikit-learn are installed; the data is under /data, read-only; /work is writable). Returns "
                "what a notebook shows: printed output, the last expression's value, errors, images.",
                {"type": "object", "properties": {"code": {"type": "string", "description": "The cell's code."}},
                 "required": ["code"]}, python)


# ------------------------------------------------------------------------------------------------ steps


def synthesize_task(config: Any, pool: KernelPool, dataset: Dataset, index: int, seed: int) -> TaskOutcome:
    """Steps 1 to 4 for one task; the outcome is `attempting` when it passed them all."""
    outcome = TaskOutcome(task_id(dataset, index, seed), dataset, index)
    with pool.attempt() as kernel:
        writer = Agent(WRITER, config, tools=[python_tool(kernel)], recorder=outcome.recorder)
        result = writer.run_sync(writer_request(dataset, index, seed))
    outcome.trajectory_id = result.trajectory_id
    written = parse_written_task(result.final_answer or "")
    if written is None:
        return _discard(outcome, "unparseable", f"{result.stop_reason}: {(result.final_answer or '')[:300]}")
    outcome.task = written
    first = run_solution(pool, written.solution, written.answer_format)
    if not first.ok:
        return _discard(outcome, "solution_fails", f"{first.reason}: {first.detail}")
    outcome.solution_notebook = nbformat.writes(_notebook(first, written.question))
    second_run = run_solution(pool, written.solution, written.answer_format)
    if not second_run.ok or not agree(written.answer_format, first.answer, second_run.answer):
        return _discard(outcome, "nondeterministic",
                        f"a second run gave {second_run.answer!r} ({second_run.reason or 'ok'}), "
                        f"the first {first.answer!r}")
    outcome.gold = first.answer
    answerer = Agent(ANSWERER, config, tools=[], recorder=outcome.recorder)
    guess = answerer.run_sync(shortcut_request(dataset, written))
    outcome.shortcut_answer = guess.final_answer
    if guess.final_answer and grade_answer(written.answer_format, outcome.gold, guess.final_answer).correct:
        return _discard(outcome, "shortcut", f"answered {guess.final_answer[:200]!r} without the data")
    with pool.attempt() as kernel:
        second_writer = Agent(SECOND, config, tools=[python_tool(kernel)], recorder=outcome.recorder)
        second = second_writer.run_sync(second_solution_request(dataset, written))
    code = parse_code(second.final_answer or "")
    other = run_solution(pool, code, written.answer_format) if code else SolutionRun(None, "no_solution")
    outcome.second_answer = other.answer
    if not other.ok or not agree(written.answer_format, outcome.gold, other.answer):
        return _discard(outcome, "ambiguous", f"the second solution gave {other.answer!r} "
                                              f"({other.reason or 'ok'} {other.detail}), the first {first.answer!r}")
    outcome.status = "attempting"
    return outcome


def attempt_batch(config: Any, pool: KernelPool, task: dict[str, Any], dataset: Dataset, indices: list[int],
                  recorder: BufferedRecorder, on_image: Callable[[bytes], str] | None = None) -> list[AttemptOutcome]:
    """Solver attempts `indices` of a kept task. Their first turns are sampled in one request (`n` = the
    batch, one shared prefill on the bundled runner); each attempt then goes on in its own kernel."""
    answer_format, gold = _decoded(task["answer_format"]), _decoded(task["answer"])
    request = solver_request(dataset, task["question"], answer_format)
    try:
        openings = Agent(SOLVER, config, tools=[_placeholder_tool()], recorder=recorder) \
            .sample_openings_sync(request, len(indices))
    except AgentError:
        openings = []
    outcomes = []
    for position, index in enumerate(indices):
        opening: Opening | None = openings[position] if position < len(openings) else None
        started = time.monotonic()
        with pool.attempt(on_image=on_image) as kernel:
            try:
                solver = Agent(SOLVER, config, tools=[python_tool(kernel)], recorder=recorder)
                result = solver.run_sync(request, opening=opening)
            except AgentError as exc:
                outcomes.append(AttemptOutcome(attempt_id(task["task_id"], index), task["task_id"], index, ERROR,
                                               str(exc)[:300], seconds=time.monotonic() - started))
                continue
            notebook = nbformat.writes(kernel.notebook(title=f"**Task.** {task['question']}"))
            cells, restarts = len(kernel.cells), kernel.restarts
        if result.stop_reason == "error":
            outcome, reason = ERROR, result.error
        elif not result.final_answer:
            outcome, reason = FAILED, f"no final answer ({result.stop_reason})"
        else:
            grade = grade_answer(answer_format, gold, result.final_answer)
            outcome, reason = (SOLVED, None) if grade.correct else (FAILED, grade.reason[:300])
        outcomes.append(AttemptOutcome(attempt_id(task["task_id"], index), task["task_id"], index, outcome, reason,
                                       result.final_answer, cells, restarts, notebook, result.trajectory_id,
                                       time.monotonic() - started))
    return outcomes


def _decoded(value: Any) -> Any:
    # The store returns JSON columns decoded or as text, depending on the value.
    return json.loads(value) if isinstance(value, str) else value


def _placeholder_tool() -> Tool:
    # The openings request names the same tool as the attempts; it is never run from there.
    return Tool("python", "Run Python code in a stateful Jupyter kernel.",
                {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
                lambda code: "")


def _discard(outcome: TaskOutcome, reason: str, detail: str) -> TaskOutcome:
    outcome.status, outcome.reason, outcome.detail = "discarded", reason, detail
    return outcome


def _notebook(run: SolutionRun, question: str) -> nbformat.NotebookNode:
    from notebook_env.kernel import attempt_notebook

    return attempt_notebook(run.cells, title=f"**Reference solution.** {question}")


# ------------------------------------------------------------------------------------- prompts and parsing


def writer_request(dataset: Dataset, index: int, seed: int) -> str:
    return (f"Dataset `{dataset.name}`: {dataset.description}.\nFiles:\n{dataset.preview}\n\n"
            f"Write question number {index} (seed {seed}) about this dataset. Explore it with the python tool "
            "first. The question must need computation on the data, have one correct answer and say its "
            f"answer format. Answer formats: {FORMAT_HELP}.\nWhen done, reply with only a JSON object: "
            '{"question": "...", "answer_format": {...}, "solution": "<python code that reads the files and '
            'leaves the result in a variable named answer>"}')


def shortcut_request(dataset: Dataset, task: WrittenTask) -> str:
    return (f"About the dataset `{dataset.name}` ({dataset.description}): {task.question}\n"
            f"Answer format: {json.dumps(task.answer_format)}. Reply with the answer only.")


def second_solution_request(dataset: Dataset, task: WrittenTask) -> str:
    return (f"Dataset `{dataset.name}`: {dataset.description}. Files: {', '.join(dataset.paths_in_kernel())}.\n"
            f"Question: {task.question}\nAnswer format: {json.dumps(task.answer_format)}.\n"
            "Work it out with the python tool, then reply with only the final solution as one ```python block "
            "that reads the files and leaves the result in a variable named answer.")


def solver_request(dataset: Dataset, question: str, answer_format: dict[str, Any]) -> str:
    return (f"Data files: {', '.join(dataset.paths_in_kernel())} ({dataset.description}).\n{question}\n"
            f"Answer format: {json.dumps(answer_format)}. Use the python tool to compute the answer; then reply "
            "with the final answer only.")


def parse_written_task(text: str) -> WrittenTask | None:
    """The writer's JSON object (in a code fence or not); None when it is missing a part or malformed."""
    data = _json_object(text)
    if not data:
        return None
    question, answer_format, solution = data.get("question"), data.get("answer_format"), data.get("solution")
    if not (isinstance(question, str) and question.strip() and isinstance(solution, str) and solution.strip()):
        return None
    if isinstance(answer_format, str):
        try:
            answer_format = json.loads(answer_format)
        except ValueError:
            return None
    try:
        check_format(answer_format)
    except AnswerFormatError:
        return None
    return WrittenTask(question.strip(), answer_format, solution)


def parse_code(text: str) -> str | None:
    block = re.search(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    if block:
        return block.group(1)
    data = _json_object(text)
    if data and isinstance(data.get("solution"), str):
        return data["solution"]
    return None


def _json_object(text: str) -> dict[str, Any] | None:
    candidates = [m.group(1) for m in re.finditer(r"```(?:json)?\s*\n(.*?)```", text, re.S)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None

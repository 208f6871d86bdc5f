"""Step 3 and 4 of a general environment: tasks with a reference solution and a verifier, made harder level
by level, each kept only when it passes its self-checks.

For one task (level 1, or level L made from the kept task of level L-1):

1. `task_writer` writes the request and the answer format (level > 1: the previous task made harder: more
   conditions, more tools to combine, and, when the harder task needs one, a new tool over the environment's
   database: checked like the environment's tools and packed as a new bundle version, see
   `general_env.level_tools`; a tool that fails its checks discards the level with the reason, and the
   reference solution must use it);
2. `solution_writer` writes `solve(tools)`; it is checked statically (tools only, no database, files or
   imports beyond pure ones) and run twice in the sandbox on fresh copies of the database: it must finish,
   and the two runs must leave the same state hash (else `nondeterministic_state`);
3. `verifier_writer` writes `check_*(state, answer)` functions, checked statically;
4. self-checks: the solution's final state and answer pass every check (else `solution_fails_verifier`), and a
   do-nothing attempt (no tool call, no answer) fails at least one (else `verifier_accepts_nothing`);
5. a second, independently written solution that also passes and reaches the same state makes that state
   the task's expected final state (`expected_state_hash`), compared at grading as well.

A failed check goes back to the writer with what failed, `general.max_revisions` times, before the task is
discarded with the reason. Nothing here writes to the store: the flow records the outcome.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from agent import Agent, AgentError, BufferedRecorder, CallRecord, TrajectoryRecord
from agent.replies import code_block, first_json_object
from general_env.bundle import Bundle
from general_env.execution import HarnessFailure, WorldExecutor
from general_env.level_tools import ADDED, ToolAddition, add_tool, proposed_tool
from general_env.tool_code import check_functions, check_solution, used_tools
from tasksynth.config import Config
from tasksynth.hashing import content_hash

TASK_SCHEMA = 1
LEVEL_ONE = ("Write a task at difficulty level 1: it needs at least two tool calls (for example a search, "
             "then a lookup or an action on what was found).")
HARDER = ("Write the task below again at difficulty level {level}: keep its setting, and make it need more "
          "steps: add one or two conditions that must be checked against the data, or a further action, or a "
          "total to compute; it must still have exactly one correct outcome.\n\nThe task at level {previous}: "
          "{task}\nIts answer format: {answer_format}\n\nIf the harder task needs a tool the list above lacks "
          "(say, a total over several records), you may add one: put \"new_tool\" in your JSON object: "
          "{{\"name\": \"...\", \"kind\": \"read\" or \"write\", \"code\": \"def name(db, arg: type, ...) -> type: "
          "with a docstring (first line: what it does; Args: each argument) over the SQLite connection db\", "
          "\"sample_calls\": [{{\"arguments\": {{...}}}}]}}. It is checked like the other tools (its sample calls "
          "must succeed, wrong calls must fail with a clear ValueError) and the task must need it.")


@dataclass
class TaskOutcome:
    task_id: str
    env_id: str
    level: int
    parent_task_id: str | None
    status: str  # verified | discarded
    index: int = 0
    reason: str | None = None
    detail: str | None = None
    prompt: str = ""
    answer_format: str = ""
    solution: str | None = None
    verifier: str = ""
    checks: list[str] = field(default_factory=list)
    reference_answer: Any = None
    expected_state_hash: str | None = None
    trajectory_id: str | None = None
    bundle_id: str | None = None  # the bundle version the task was made with (None: the one it was given)
    tool_addition: ToolAddition | None = None  # the tool this level proposed, added or rejected
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)

    def row(self, bundle_id: str | None, run_id: str | None) -> dict[str, Any]:
        bundle_id = self.bundle_id or bundle_id
        return {"task_id": self.task_id, "env_id": self.env_id, "bundle_id": bundle_id, "level": self.level,
                "parent_task_id": self.parent_task_id, "prompt": self.prompt, "answer_format": self.answer_format,
                "solution": self.solution, "verifier": self.verifier, "checks": self.checks,
                "reference_answer": json.dumps(self.reference_answer),
                "expected_state_hash": self.expected_state_hash, "status": self.status, "reason": self.reason,
                "detail": self.detail, "trajectory_id": self.trajectory_id, "run_id": run_id}


def task_id(env_id: str, index: int, level: int, parent_task_id: str | None) -> str:
    return content_hash(TASK_SCHEMA, env_id, index, level, parent_task_id)


def tools_text(bundle: Bundle) -> str:
    lines = []
    for spec in bundle.tools:
        function = spec["function"]
        parameters = ", ".join(f"{name}: {schema.get('type', 'any')}"
                               for name, schema in function["parameters"].get("properties", {}).items())
        lines.append(f"- {function['name']}({parameters}) [{bundle.tool_kinds.get(function['name'], '?')}]: "
                     f"{function['description']}")
    return "\n".join(lines)


def write_task(config: Config, bundle: Bundle, env_id: str, index: int, *, level: int = 1,
               parent: dict[str, Any] | None = None) -> TaskOutcome:
    """A verified task, or a discarded one with its reason (never raises for what a model wrote)."""
    parent_id = parent["task_id"] if parent else None
    outcome = TaskOutcome(task_id(env_id, index, level, parent_id), env_id, level, parent_id, "discarded", index=index)
    recorder = BufferedRecorder()
    variables = {"category": bundle.category, "tools": tools_text(bundle), "notes": bundle.notes.get("notes", ""),
                 "level_instructions": LEVEL_ONE if level == 1 else HARDER.format(
                     level=level, previous=level - 1, task=parent["prompt"], answer_format=parent["answer_format"])}
    try:
        with WorldExecutor(config) as worlds:
            _write(config, bundle, worlds, outcome, recorder, variables)
    except AgentError as exc:
        _discard(outcome, "agent_setup", str(exc))
    outcome.calls, outcome.trajectories = recorder.calls, recorder.trajectories
    return outcome


def _write(config: Config, bundle: Bundle, worlds: WorldExecutor, outcome: TaskOutcome, recorder: BufferedRecorder,
           variables: dict[str, str]) -> None:
    writer = Agent("task_writer", config, tools=[], recorder=recorder, prompt_vars=variables)
    result = writer.run_sync(f"Write task number {outcome.index + 1} now." if outcome.level == 1
                             else "Write the harder task now.")
    outcome.trajectory_id = result.trajectory_id
    if result.stop_reason == "error":
        return _discard(outcome, "endpoint_error", result.error)
    task = first_json_object(result.final_answer) or {}
    if not isinstance(task.get("task"), str) or not task["task"].strip():
        return _discard(outcome, "unparsable_task", "no JSON object with a `task` in the task writer's reply")
    outcome.prompt = task["task"].strip()
    outcome.answer_format = str(task.get("answer_format") or "").strip()
    request = f"Task: {outcome.prompt}\nAnswer format: {outcome.answer_format or 'as the task says'}"
    proposal = proposed_tool(task) if outcome.level > 1 else None
    if proposal is not None:
        addition = outcome.tool_addition = add_tool(config, bundle, proposal)
        if addition.status != ADDED:
            return _discard(outcome, addition.reason, f"new tool {addition.tool!r}: {addition.detail}")
        bundle, outcome.bundle_id = addition.bundle, addition.bundle.bundle_id
        variables = {**variables, "tools": tools_text(bundle)}

    solution = _solution(config, bundle, worlds, recorder, request, variables, outcome)
    if solution is None:
        return
    source, solved = solution
    if proposal is not None and outcome.tool_addition.tool not in used_tools(source):
        return _discard(outcome, "new_tool_unused",
                        f"the reference solution does not call the new tool {outcome.tool_addition.tool!r}")
    outcome.solution, outcome.reference_answer = source, solved["answer"]
    verifier = _verifier(config, bundle, worlds, recorder, request, solved, outcome)
    if verifier is None:
        return
    outcome.verifier, outcome.checks = verifier
    outcome.expected_state_hash = _unique_state(config, bundle, worlds, recorder, request, variables, outcome,
                                                solved)
    outcome.status = "verified"


def _solution(config, bundle, worlds, recorder, request, variables, outcome):
    """(source, result of a run) of a solution that follows the rules, finishes and is deterministic."""
    agent = Agent("solution_writer", config, tools=[], recorder=recorder, prompt_vars=variables)
    tool_names = [spec["function"]["name"] for spec in bundle.tools]
    message = f"{request}\n\nWrite `solve(tools)`."
    reason, detail = "unparsable_solution", "no ```python block with `solve` in the reply"
    for _ in range(config.general.max_revisions + 1):
        result = agent.run_sync(message)
        if result.stop_reason == "error":
            return _discard(outcome, "endpoint_error", result.error)
        source = code_block(result.final_answer)
        if source is None:
            reason, detail = "unparsable_solution", "no ```python block in the reply"
            message = f"{request}\n\nYour reply had no ```python block. Write `solve(tools)` in one."
            continue
        problems = check_solution(source, tool_names)
        if problems:
            reason, detail = "solution_breaks_rules", "; ".join(problems)[:1000]
            message = f"{request}\n\nYour solution breaks these rules: {detail}\nWrite it again."
            continue
        runs = [_run_solution(worlds, bundle, source) for _ in range(2)]
        failed = next((run for run in runs if run.get("error")), None)
        if failed:
            reason, detail = "solution_fails", _error_text(failed["error"])
            message = f"{request}\n\nYour solution failed: {detail}\nCalls it made: {_calls_text(failed)}\nFix it."
            continue
        if runs[0]["hash"] != runs[1]["hash"]:
            return _discard(outcome, "nondeterministic_state", "two runs of the solution left different states")
        return source, runs[0]
    return _discard(outcome, reason, detail)


def _verifier(config, bundle, worlds, recorder, request, solved, outcome):
    """(source, check names) of a verifier that passes the solution and fails doing nothing."""
    schema = "\n".join(f"  {table}: {data['columns']}" for table, data in solved["state"].items())
    agent = Agent("verifier_writer", config, tools=[], recorder=recorder, prompt_vars={"schema": schema})
    base = f"{request}\n\nThe reference solution's answer was: {json.dumps(solved['answer'])}"
    message = base + "\n\nWrite the check functions."
    idle = _run(worlds, bundle, "replay", calls=[])
    reason, detail = "unparsable_verifier", "no ```python block in the reply"
    for _ in range(config.general.max_revisions + 1):
        result = agent.run_sync(message)
        if result.stop_reason == "error":
            return _discard(outcome, "endpoint_error", result.error)
        source = code_block(result.final_answer)
        if source is None:
            message = base + "\n\nYour reply had no ```python block. Write the check functions in one."
            continue
        names, problems = check_functions(source)
        if problems:
            reason, detail = "verifier_breaks_rules", "; ".join(problems)[:1000]
            message = f"{base}\n\nYour verifier breaks these rules: {detail}\nWrite it again."
            continue
        on_solution = _run(worlds, bundle, "run_checks", verifier_source=source, state=solved["state"],
                           answer=solved["answer"])
        if not on_solution.get("passed"):
            reason, detail = "solution_fails_verifier", _checks_text(on_solution)
            message = (f"{base}\n\nOn the reference solution's result your checks gave: {detail}. They must all "
                       "pass there. Write them again.")
            continue
        on_nothing = _run(worlds, bundle, "run_checks", verifier_source=source, state=idle["state"], answer=None)
        if on_nothing.get("passed"):
            reason, detail = "verifier_accepts_nothing", "every check passed for an attempt that did nothing"
            message = (f"{base}\n\nYour checks also pass when nothing was done and no answer given. Add a check "
                       "that the task's goal was reached. Write them again.")
            continue
        return source, names
    return _discard(outcome, reason, detail)


def _unique_state(config, bundle, worlds, recorder, request, variables, outcome, solved) -> str | None:
    """The final state's hash when an independently written second solution passes and reaches it."""
    settings = dataclasses.replace(config.role("solution_writer"),
                                   temperature=min(1.0, config.role("solution_writer").temperature + 0.3))
    agent = Agent("solution_writer", config, tools=[], recorder=recorder, prompt_vars=variables, settings=settings)
    result = agent.run_sync(f"{request}\n\nWrite `solve(tools)`. Work it out independently, in your own way.")
    source = code_block(result.final_answer) if result.ok else None
    if source is None or check_solution(source, [s["function"]["name"] for s in bundle.tools]):
        return None
    other = _run_solution(worlds, bundle, source)
    if other.get("error"):
        return None
    verdict = _run(worlds, bundle, "run_checks", verifier_source=outcome.verifier, state=other["state"],
                   answer=other["answer"])
    return solved["hash"] if verdict.get("passed") and other["hash"] == solved["hash"] else None


def _run_solution(worlds: WorldExecutor, bundle: Bundle, source: str) -> dict[str, Any]:
    return _run(worlds, bundle, "run_solution", solution_source=source)


def _run(worlds: WorldExecutor, bundle: Bundle, entry: str, **arguments: Any) -> dict[str, Any]:
    """A harness entry point on a fresh copy of the database; a limit the model's code hit comes back as a
    failed result (an error for a solution, a failed check for a verifier), as the writer would see it."""
    if entry != "run_checks":
        arguments.update(tools_source=bundle.tools_source, clock=bundle.clock, seed=bundle.seed)
    try:
        with worlds.attempt(bundle.database) as world:
            return world.run(entry, **arguments)
    except HarnessFailure as exc:
        failure = f"{exc.outcome}: {exc.reason}"
        if entry == "run_checks":
            return {"checks": {}, "errors": {"<sandbox>": failure}, "passed": False}
        return {"error": {"message": failure}, "calls": [], "state": {}, "hash": None, "answer": None}


def _discard(outcome: TaskOutcome, reason: str, detail: str | None) -> None:
    outcome.status, outcome.reason, outcome.detail = "discarded", reason, (detail or "")[:2000]
    return None


def _error_text(error: Any) -> str:
    return (error.get("message") if isinstance(error, dict) else str(error))[:600]


def _calls_text(run: dict[str, Any]) -> str:
    return "; ".join(f"{c['name']}({json.dumps(c['arguments'])}) -> "
                     f"{'error: ' + c['error'] if 'error' in c else 'ok'}" for c in run.get("calls", []))[:800]


def _checks_text(verdict: dict[str, Any]) -> str:
    parts = [f"{name}={'pass' if ok else 'fail'}" for name, ok in verdict.get("checks", {}).items()]
    parts += [f"{name} raised {text}" for name, text in verdict.get("errors", {}).items()]
    return ", ".join(parts)[:800] or "no checks ran"

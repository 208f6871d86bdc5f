"""Grading an attempt at a general tool-environment task from its trajectory alone.

The trajectory is a list of OpenAI chat messages: assistant messages carry `tool_calls` (function name and
JSON arguments), the last assistant message without tool calls is the answer. Grading replays those calls in
order on a fresh copy of the environment's database, then runs the task's checks on the final state and the
answer; where the task's final state is unique it also compares the state's hash with the reference
solution's. The reward is 1 when every check passes (and the hash matches, where one is expected); partial
credit (passed / total checks) is reported beside it.

Inside the pipeline an attempt is graded where its episode ran (`grade_episode`): the same checks and hash,
computed in one call on the state the episode's own tool calls left, when those calls are exactly the
trajectory's (`episode_matches`); the replay would run the same calls, seeded the same way, on the same
database, so the verdict is the same without running them twice. Anything else is graded by replay.

The replay and the checks run model-written code (tools, verifier), so they go through `run`, a callable
that executes a `general_env.harness` entry point: the sandbox's call service in the pipeline and in
`tasksynth general grade`, or a trainer's own sandbox around the bundle's `harness.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

HarnessRun = Callable[..., dict[str, Any]]  # run(entry_point_name, **arguments) -> the entry point's result
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class GeneralGrade:
    reward: float  # 1.0 or 0.0
    partial: float  # passed checks / checks
    checks: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    state_hash: str = ""
    state_matches: bool | None = None  # None: the task expects no particular final state
    calls: int = 0
    failed_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trajectory_calls(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """The tool calls an agent made, in order, and its final answer (normalised, see `normalise_answer`)."""
    calls: list[dict[str, Any]] = []
    answer: Any = None
    for message in messages:
        if message.get("role") != "assistant":
            continue
        tool_calls = message.get("tool_calls") or []
        for call in tool_calls:
            function = call.get("function") or {}
            arguments = function.get("arguments") or "{}"
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    arguments = {"__unparsable__": arguments}
            calls.append({"name": function.get("name", ""), "arguments": arguments})
        if not tool_calls:
            answer = normalise_answer(message.get("content"))
    return calls, answer


def normalise_answer(value: Any) -> Any:
    """An answer as the checks see it: JSON text decoded, a bare number as a number, other text stripped."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    if _NUMBER.match(text):
        number = float(text)
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    if text[:1] in "[{\"":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def grade_general(task: dict[str, Any], messages: Sequence[dict[str, Any]], *, db_path: str, tools_source: str,
                  run: HarnessRun, clock: str, seed: int) -> GeneralGrade:
    """Grade one trajectory. `task` holds `verifier` (the check functions' source) and, when the final
    state is unique, `expected_state_hash`. `db_path` is a fresh copy of the bundle's database (consumed)."""
    calls, answer = trajectory_calls(messages)
    replayed = run("replay", tools_source=tools_source, db_path=db_path, calls=calls, clock=clock, seed=seed)
    verdict = run("run_checks", verifier_source=task["verifier"], state=replayed["state"], answer=answer)
    return _grade(task, verdict, replayed["hash"], replayed["calls"])


def episode_matches(messages: Sequence[dict[str, Any]], executed: Sequence[dict[str, Any]]) -> bool:
    """Whether the calls an episode ran (`{"name", "arguments"}`, in order) are exactly its trajectory's: then
    its final state is the one a replay reaches (a call the agent loop refused to run, say arguments that do
    not fit the schema, makes them differ)."""
    calls, _ = trajectory_calls(messages)
    return calls == [{"name": c["name"], "arguments": c["arguments"]} for c in executed]


def grade_episode(task: dict[str, Any], messages: Sequence[dict[str, Any]], executed: Sequence[dict[str, Any]], *,
                  db_path: str, run: HarnessRun) -> GeneralGrade:
    """Grade a trajectory on the state its own episode left in `db_path`, one harness call; only when
    `episode_matches(messages, executed)` (`executed`: the episode's calls with their outcomes)."""
    _, answer = trajectory_calls(messages)
    verdict = run("grade_state", verifier_source=task["verifier"], db_path=db_path, answer=answer)
    return _grade(task, verdict, verdict["hash"], executed)


def _grade(task: dict[str, Any], verdict: dict[str, Any], final_hash: str,
           outcomes: Sequence[dict[str, Any]]) -> GeneralGrade:
    checks = verdict.get("checks", {})
    expected = task.get("expected_state_hash")
    matches = None if not expected else final_hash == expected
    passed = bool(verdict.get("passed")) and matches is not False
    return GeneralGrade(reward=1.0 if passed else 0.0,
                        partial=sum(checks.values()) / len(checks) if checks else 0.0,
                        checks=checks, errors=verdict.get("errors", {}), state_hash=final_hash,
                        state_matches=matches, calls=len(outcomes),
                        failed_calls=sum("error" in c for c in outcomes))

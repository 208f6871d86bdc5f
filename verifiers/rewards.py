"""One entry point for the reward of an attempt at any exported task: `reward(row, attempt, ...)`.

The exported row's `verifier` column says how its reward is computed (`type`), and this module dispatches:

| verifier type | attempt | computed by |
|---|---|---|
| `tests` (code) | the JUnit XML of the hidden tests run on the attempt's tree | every fail_to_pass and pass_to_pass test passes |
| `rubric` (search) | the final answer text | `verifiers.rubric.grade_search` (exact match, else a judge) |
| `tool_checks` (general) | the trajectory (OpenAI messages) | `verifiers.general.grade_general`: replay + checks |
| `answer_format` (code_interpreter) | the final answer (text or value) | `verifiers.notebook.grade_answer`: the format's rule |

Running an attempt's code (the tests, the tools, the checks) is the caller's: a code attempt's tests run in its
environment's container, a general attempt's replay in a sandbox (`run`). `tasksynth <kind> grade` wraps this.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from verifiers.junit import PASSED, parse_junit


@dataclass
class Reward:
    reward: float  # what a trainer uses: 0..1
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


class RewardError(ValueError):
    """A row whose verifier this module cannot read, or an attempt of the wrong shape."""


def verifier_of(row: Mapping[str, Any]) -> dict[str, Any]:
    verifier = row.get("verifier", row)
    if isinstance(verifier, str):
        try:
            verifier = json.loads(verifier)
        except ValueError as exc:
            raise RewardError(f"the row's verifier is not JSON: {exc}") from None
    if not isinstance(verifier, dict) or "type" not in verifier:
        raise RewardError("the row has no verifier with a `type`")
    return verifier


def reward(row: Mapping[str, Any], attempt: Any, *, judge: Callable[[str], str] | None = None,
           run: Callable[..., dict[str, Any]] | None = None, db_path: str | None = None,
           tools_source: str | None = None, clock: str | None = None, seed: int = 0) -> Reward:
    """The reward of `attempt` at the task of exported `row` (its `verifier` decides how)."""
    verifier = verifier_of(row)
    kind = verifier["type"]
    if kind == "tests":
        return _tests_reward(verifier, attempt)
    if kind == "rubric":
        from verifiers.rubric import grade_search

        grade = grade_search(verifier, attempt, judge=judge)
        return Reward(grade.score, "search", {"correct": grade.correct, "method": grade.method,
                                              "dimensions": grade.dimensions, "detail": grade.detail})
    if kind == "tool_checks":
        from verifiers.general import grade_general

        if run is None or db_path is None or tools_source is None or clock is None:
            raise RewardError("a tool-environment attempt is graded by replaying it: give run, db_path (a fresh "
                              "copy of the bundle's database), tools_source, clock and seed")
        grade = grade_general({"verifier": verifier["source"],
                               "expected_state_hash": verifier.get("expected_state_hash")}, attempt,
                              db_path=db_path, tools_source=tools_source, run=run, clock=clock, seed=seed)
        return Reward(grade.reward, "general", grade.to_dict())
    if kind == "answer_format":
        from verifiers.notebook import grade_answer

        grade = grade_answer(verifier["answer_format"], verifier["answer"], attempt)
        return Reward(1.0 if grade.correct else 0.0, "code_interpreter", {"reason": grade.reason})
    raise RewardError(f"unknown verifier type {kind!r} (known: tests, rubric, tool_checks, answer_format)")


def _tests_reward(verifier: dict[str, Any], attempt: str | bytes | Sequence[str | bytes]) -> Reward:
    """1 when every fail_to_pass and pass_to_pass test passed in the attempt's JUnit report(s)."""
    reports = [attempt] if isinstance(attempt, (str, bytes)) else list(attempt)
    outcomes: dict[str, str] = {}
    for report in reports:
        outcomes.update({test: outcome.outcome for test, outcome in parse_junit(report).items()})
    wanted = list(verifier.get("fail_to_pass") or []) + list(verifier.get("pass_to_pass") or [])
    failing = [test for test in wanted if outcomes.get(test) != PASSED]
    return Reward(0.0 if failing or not wanted else 1.0, "code",
                  {"tests": len(wanted), "failing": failing[:50], "missing": [t for t in failing if t not in outcomes][:50]})

"""Step 5 of a general environment: the pass@k filter. The `solver` role attempts a task with only the
environment's tools, k times; each attempt is graded from its trajectory alone, as a trainer would grade it.

One attempt:
1. a fresh copy of the bundle's database in a sandbox container; each tool the solver calls runs there
   (`harness.call_tool`), so the attempt changes only its own copy;
2. the solver's trajectory (OpenAI messages with `tool_calls`) is graded as a trainer would grade it, by the
   task's checks (and the expected state hash, if any) on the final state its calls reach. When the calls
   the episode ran are exactly the trajectory's, its container state is that final state, and the grade is
   one call there (`verifiers.general.grade_episode`); otherwise (a call the loop refused to run, a call a
   limit stopped, a container that died and restarted the state) the calls are replayed on a fresh copy
   (`verifiers.general.grade_general`, what `tasksynth general grade` does). Both give the same verdict: every
   tool call's randomness is seeded from its position in the attempt, so a replay repeats the episode.

Outcomes: `solved` (reward 1), `failed` (reward 0, with what failed: the checks, the solver's budget, a limit
the tools hit), or `error` when something outside the attempt failed (the endpoint, the sandbox's engine):
errors are not attempts and do not count in n.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import Agent, AgentError, BufferedRecorder, CallRecord, Tool, TrajectoryRecord
from agent.loop import Opening
from general_env.bundle import Bundle
from general_env.execution import AttemptWorld, HarnessFailure, WorldExecutor
from tasksynth.config import Config
from tasksynth.hashing import content_hash
from verifiers.general import GeneralGrade, episode_matches, grade_episode, grade_general

ROLE = "solver"
SOLVED, FAILED, ERROR = "solved", "failed", "error"


@dataclass
class Episode:
    """The tool calls that ran in an attempt's container, in order, with their outcomes."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # the first limit that stopped a call: its state is then the replay's to judge
    infra_error: str | None = None  # the sandbox could not run a call: the attempt is an error, not a failure


@dataclass
class AttemptOutcome:
    attempt_id: str
    task_id: str
    attempt: int
    outcome: str
    reason: str | None = None
    reward: float = 0.0
    partial: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)
    tool_calls: int = 0
    trajectory_id: str | None = None
    seconds: float = 0.0
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)

    def row(self, run_id: str | None) -> dict[str, Any]:
        return {"attempt_id": self.attempt_id, "task_id": self.task_id, "attempt": self.attempt,
                "outcome": self.outcome, "reason": self.reason, "reward": self.reward, "partial": self.partial,
                "checks": self.checks, "tool_calls": self.tool_calls, "trajectory_id": self.trajectory_id,
                "seconds": round(self.seconds, 3), "run_id": run_id}


class ToolCallFailed(Exception):
    """A tool raised in the sandbox; the solver sees the message as the tool's result."""


def attempt_id(task_id: str, index: int) -> str:
    return content_hash("general-attempt", task_id, index)


def attempt_batch(config: Config, bundle: Bundle, task: dict[str, Any], indices: list[int], *,
                  stop_after_first_success: bool = False) -> list[AttemptOutcome]:
    """Attempts `indices` of one task. Their first turns are sampled in one request (`n` = the batch: one
    shared prefill on the bundled runner); then each attempt goes on alone, one after the other (batches of
    a task run side by side)."""
    outcomes: list[AttemptOutcome] = []
    shared = BufferedRecorder()
    try:
        opener = Agent(ROLE, config, tools=environment_tools(bundle, None), recorder=shared)
        openings = opener.sample_openings_sync(_request(task), len(indices))
    except AgentError:
        openings = []  # each attempt reports the setup problem itself
    with WorldExecutor(config) as worlds:
        for position, index in enumerate(indices):
            opening = openings[position] if position < len(openings) else None
            outcome = attempt_task(config, worlds, bundle, task, index, opening=opening)
            outcomes.append(outcome)
            if stop_after_first_success and outcome.outcome == SOLVED:
                break
    if outcomes:  # the shared first-turn request is accounted once, with the batch's first attempt
        outcomes[0].calls[:0] = shared.calls
    return outcomes


def attempt_task(config: Config, worlds: WorldExecutor, bundle: Bundle, task: dict[str, Any], index: int, *,
                 opening: Opening | None = None) -> AttemptOutcome:
    from tasksynth.sandbox.results import SandboxInfraError

    started = time.monotonic()
    recorder = BufferedRecorder()
    outcome = AttemptOutcome(attempt_id(task["task_id"], index), task["task_id"], index, ERROR)
    try:
        with worlds.attempt(bundle.database) as world:
            episode = Episode()
            agent = Agent(ROLE, config, tools=environment_tools(bundle, world, episode), recorder=recorder)
            result = agent.run_sync(_request(task), opening=opening)
            outcome.trajectory_id = result.trajectory_id
            if episode.infra_error:
                raise SandboxInfraError(episode.infra_error)
            graded_here = result.stop_reason != "error" and graded_in_episode(world, episode, result.transcript)
            if graded_here:
                _grade(result, outcome, "episode", lambda: grade_episode(task, result.transcript, episode.calls,
                                                                         db_path=world.db_path, run=world.run))
        # A replay takes a container of its own, so it waits until the episode's is given back.
        if result.stop_reason == "error":
            outcome.reason = f"endpoint_error: {result.error}"[:500]
        elif not graded_here:
            _grade(result, outcome, "replay", lambda: replay_grade(worlds, bundle, task, result.transcript))
    except AgentError as exc:
        outcome.reason = f"agent_setup: {exc}"[:500]
    except SandboxInfraError as exc:
        outcome.reason = f"infra_error: {exc}"[:500]
    outcome.seconds = time.monotonic() - started
    outcome.calls, outcome.trajectories = recorder.calls, recorder.trajectories
    return outcome


def environment_tools(bundle: Bundle, world: AttemptWorld | None, episode: Episode | None = None) -> list[Tool]:
    """The bundle's tools as agent tools whose every call runs in the attempt's sandbox container (`world`
    None: for describing the tools only, as in a request that samples first turns). `episode` collects the
    calls that ran.

    The tools are coroutine functions that block while their call runs: an attempt has its event loop to
    itself (`Agent.run_sync`), which has nothing else to do meanwhile, and a call handed to a thread instead
    cost a thread pool per attempt."""
    episode = episode if episode is not None else Episode()
    tools = []
    for spec in bundle.tools:
        function = spec["function"]

        async def invoke(_name: str = function["name"], **arguments: Any) -> Any:
            if world is None:
                raise ToolCallFailed("no environment is attached to these tools")
            entry: dict[str, Any] = {"name": _name, "arguments": arguments}
            episode.calls.append(entry)
            try:
                called = world.run("call_tool", name=_name, arguments=arguments, clock=bundle.clock,
                                   seed=bundle.seed, tools_source=bundle.tools_source,
                                   call_index=len(episode.calls) - 1)
            except HarnessFailure as exc:
                entry["error"] = f"the tool was stopped ({exc.outcome}: {exc.reason})"
                episode.stopped = episode.stopped or entry["error"]
                if exc.outcome == "infra_error":
                    episode.infra_error = episode.infra_error or exc.reason
                raise ToolCallFailed(entry["error"]) from None
            if "error" in called:
                entry["error"] = called["error"]
                raise ToolCallFailed(called["error"])
            return called["result"]

        tools.append(Tool(name=function["name"], description=function["description"],
                          parameters=function["parameters"], fn=invoke))
    return tools


def _request(task: dict[str, Any]) -> str:
    answer_format = task.get("answer_format") or "as the task says"
    return f"{task['prompt']}\n\nGive the final answer in this format: {answer_format}"


def graded_in_episode(world: AttemptWorld, episode: Episode, messages: list[dict[str, Any]]) -> bool:
    """Whether the state the episode left is the one a replay of its trajectory reaches (module docstring)."""
    return world.state_intact and episode.stopped is None and episode_matches(messages, episode.calls)


def replay_grade(worlds: WorldExecutor, bundle: Bundle, task: dict[str, Any],
                 messages: list[dict[str, Any]]) -> GeneralGrade:
    with worlds.attempt(bundle.database) as grading:
        return grade_general(task, messages, db_path=grading.db_path, tools_source=bundle.tools_source,
                             run=grading.run, clock=bundle.clock, seed=bundle.seed)


def _grade(result: Any, outcome: AttemptOutcome, graded_on: str, grade_it: Callable[[], GeneralGrade]) -> None:
    """`graded_on`: "episode" or "replay", kept with the checks (how the verdict was reached)."""
    outcome.tool_calls = result.tool_calls
    try:
        grade = grade_it()
    except HarnessFailure as exc:
        if exc.outcome == "infra_error":  # the sandbox failed, not the attempt: an error, left out of n
            outcome.reason = f"infra_error: {exc.reason}"[:500]
            return
        outcome.outcome, outcome.reason = FAILED, f"grading stopped: {exc.outcome}: {exc.reason}"[:500]
        return
    outcome.reward, outcome.partial = grade.reward, grade.partial
    outcome.checks = {"checks": grade.checks, "errors": grade.errors, "state_matches": grade.state_matches,
                      "graded_on": graded_on}
    if grade.reward == 1.0:
        outcome.outcome = SOLVED
        return
    outcome.outcome = FAILED
    failed = [name for name, ok in grade.checks.items() if not ok]
    if result.stop_reason != "answer":
        outcome.reason = f"solver stopped: {result.stop_reason}"
    elif failed:
        outcome.reason = "failed checks: " + ", ".join(failed)
    else:
        outcome.reason = "final state differs from the expected one"

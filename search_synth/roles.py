"""The agent roles of the search pipeline and how one run of a role comes back to the flow.

Roles (each a prompt file in data/prompts/ and settings under `agents.<role>`):
`question_builder` (with search), `answerer` (with or without search, per answerer configuration),
`verifier` (with search: the truth check and the second check) and `grader` (no tools: the judge).

A step runs anywhere and writes nothing: it returns the agent's call and trajectory records with its
output, and the flow process writes them in the transaction that finishes the step. An endpoint that fails
for good raises `EndpointDown`, so the step is not finished and a rerun does it again; any other way a run
ends (a budget spent, a bad reply) is an outcome the step stores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent import Agent, AgentResult, BufferedRecorder, CallRecord, StopReason, TrajectoryRecord
from agent.prompts import find_prompt
from tasksynth.config import DEFAULT_RUNNER_MODEL, Config, RoleConfig
from tasksynth.errors import TasksynthError

QUESTION_BUILDER = "question_builder"
ANSWERER = "answerer"
VERIFIER = "verifier"
GRADER = "grader"

# Where a role keeps RoleConfig's generic defaults, the pipeline uses these.
ROLE_DEFAULTS: dict[str, dict[str, Any]] = {
    QUESTION_BUILDER: {"max_turns": 8, "max_tokens": 768},
    ANSWERER: {"max_turns": 6, "max_tokens": 256},
    VERIFIER: {"max_turns": 4, "max_tokens": 256, "temperature": 0.0},
    GRADER: {"max_turns": 1, "max_tokens": 128, "temperature": 0.0},
}
# Settings that change what a model says (a changed port or timeout does not redo finished work).
KEY_SETTINGS = ("model", "temperature", "top_p", "max_tokens", "max_turns", "extra_body", "prompt", "tool_format")


class SearchSynthError(TasksynthError):
    """The search pipeline cannot run: no corpus, a bad import file, a bad answerer configuration."""


class EndpointDown(SearchSynthError):
    """An agent's endpoint failed for good; the step is left unfinished so that a rerun does it again."""


@dataclass
class RoleRun:
    """One agent run's result and its records, for the flow to write."""

    result: AgentResult
    model: str
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)


def role_settings(config: Config, role: str, **overrides: Any) -> RoleConfig:
    """A role's settings with the pipeline's defaults where it keeps the generic ones, then `overrides`
    (None values are ignored)."""
    settings = config.role(role)
    generic = RoleConfig()
    changes = {k: v for k, v in ROLE_DEFAULTS.get(role, {}).items() if getattr(settings, k) == getattr(generic, k)}
    changes.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(settings, **changes)


def settings_key(config: Config, role: str, settings: RoleConfig) -> dict[str, Any]:
    """What of a role decides its output: the sampling settings and the prompt file's text."""
    prompt = find_prompt(role, settings.prompt, home=config.home_path)
    return {"role": role, **{k: getattr(settings, k) for k in KEY_SETTINGS},
            "prompt_text": prompt.read_text() if prompt else ""}


def run_role(config: Config, role: str, message: str, *, tools: Sequence[Any] = (),
             settings: RoleConfig | None = None) -> RoleRun:
    """Run `role` on one user message; raises `EndpointDown` when its endpoint failed for good."""
    settings = settings or role_settings(config, role)
    settings = dataclasses.replace(settings, tools=[])  # the tools given here are the tools it gets
    recorder = BufferedRecorder()
    agent = Agent(role, config, tools=list(tools), recorder=recorder, settings=settings)
    result = agent.run_sync(message)
    calls, trajectories = recorder.drain()
    if result.stop_reason == StopReason.ERROR and result.final_answer is None:
        raise EndpointDown(f"{role} ({settings.model} at {settings.base_url}): {result.error}")
    return RoleRun(result, settings.model, calls, trajectories)


def is_strong(config: Config, model: str) -> bool:
    """A model counts as strong enough for a filter when `search.strong_models` lists it; with no list,
    every model but the bundled runner's (a 135M model that cannot answer hard questions) counts."""
    strong = config.search.strong_models
    if strong:
        return model in strong
    return model not in {config.runner.served_name, DEFAULT_RUNNER_MODEL}

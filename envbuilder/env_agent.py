"""The environment-building agent: when the heuristic recipe fails, a model works the install out in a sandbox.

    attempt = run_env_agent(config, request)          # the agent, in a sandbox Session -> AgentAttempt
    replayed = replay_recipe(config, request, attempt.recipe)   # a fresh build of what it found -> Replay

The agent (role `env_builder`, endpoint and budgets from `agents.env_builder`) gets the repository checked out
at /testbed (a scratch copy, writable), a venv at /work/venv, the failing log and four tools: `run_command`,
`read_file`, `write_file` and `request_dependency(ecosystem, spec)`, which asks the trusted host fetcher
(`envbuilder.wheelhouse`) to download a requirement into the wheelhouse; the session has no network and
pip installs from the wheelhouse only, exactly as the image build does. It ends by answering with a recipe
(JSON). A run that spends its turns, tokens or time stops `budget_exhausted`.

What the agent says is not trusted: its recipe becomes a `Recipe` (origin "agent") that is replayed from
scratch, a new environment layer built from a fresh checkout and the wheelhouse, then an instance and one run
of the target tests, which must give a JUnit report with at least one test. Only then does the environment
count; a recipe that leaned on something the session left behind (a file it wrote, a package it installed
by hand) fails the replay and is rejected (`recipe_not_reproducible`). An accepted recipe is saved under the
repository's dependency fingerprint (`envbuilder.recipes.save_fingerprint_recipe`) so later candidates of the
same repository and fingerprint reuse it without the agent.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import Agent, NullRecorder, Recorder, StopReason, as_tool
from envbuilder.containers import scratch_dir
from envbuilder.images import (PIP_REQUIREMENT, LayerBuild, build_environment, build_instance, environment_id,
                               pip_upgrade_step, remove_image)
from envbuilder.recipes import PYTEST_COMMAND, Recipe
from envbuilder.repos import SourceTree, export_tree
from envbuilder.runners import runner_for
from envbuilder.wheelhouse import (WHEELHOUSE_MOUNT, DependencyUnavailable, FetchLog,
                                   Wheelhouse, target_python)
from tasksynth.config import Config
from tasksynth.sandbox import Mount, Session, run_oneshot
from tasksynth.sandbox.isolation import Limits
from verifiers.grading import OK, TESTS_CRASHED

ROLE = "env_builder"
ACCEPTED = "accepted"
BUDGET_EXHAUSTED = "budget_exhausted"
AGENT_GAVE_UP = "agent_gave_up"  # the agent answered {"failed": ...}, or no usable recipe, or its endpoint failed
NOT_REPRODUCIBLE = "recipe_not_reproducible"
NO_TESTS = "no_tests_collected"
_BUDGET_STOPS = {StopReason.TURNS, StopReason.TOKENS, StopReason.WALL, StopReason.COST, StopReason.CONTEXT}
SESSION_VENV = "/work/venv"
TESTBED = "/testbed"
MAX_TOOL_OUTPUT = 6000  # characters of a command's output shown to the agent (its tail: errors come last)
REPORT_MARK = "=====TASKSYNTH-JUNIT-REPORT====="


@dataclass
class AgentRequest:
    """What the agent starts from: the candidate's repository at the commit the environment is built from, the
    heuristic recipe that failed and its log, the base image, and the tests that must run."""

    repo: str
    repo_path: Path
    commit: str
    base_tag: str
    fingerprint: str
    failed_recipe: Recipe
    failure_log: str
    targets: list[str] = field(default_factory=list)


@dataclass
class AgentAttempt:
    status: str  # accepted (a recipe to replay) | budget_exhausted | agent_gave_up
    recipe: Recipe | None
    detail: str
    cost_usd: float = 0.0
    tokens: int = 0
    turns: int = 0
    seconds: float = 0.0
    stop_reason: str = ""


@dataclass
class Replay:
    ok: bool
    detail: str
    environment: LayerBuild | None = None
    env_id: str | None = None
    seconds: float = 0.0


def run_env_agent(config: Config, request: AgentRequest, *, recorder: Recorder | None = None) -> AgentAttempt:
    """One agent episode in a sandbox session on the base image; returns its recipe, or why there is none."""
    started = time.monotonic()
    wheelhouse = Wheelhouse(config)
    target = target_python(config, request.failed_recipe.python, request.base_tag)
    fetched = FetchLog()
    try:
        wheelhouse.provide([PIP_REQUIREMENT], target, fetched)
    except DependencyUnavailable as exc:
        return AgentAttempt(AGENT_GAVE_UP, None, f"the session's pip could not be provided: {exc}")
    with tempfile.TemporaryDirectory(prefix="tasksynth-envagent-", dir=scratch_dir(config)) as tmp:
        testbed = Path(tmp) / "testbed"
        export_tree(request.repo_path, request.commit, testbed)
        _open_to_sandbox_user(testbed)
        env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE_MOUNT, "PIP_NO_INPUT": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "VIRTUAL_ENV": SESSION_VENV, "HOME": "/work",
               "PATH": f"{SESSION_VENV}/bin:/usr/local/bin:/usr/bin:/bin"}
        limits = Limits.from_config(config, wall_s=float(config.docker.build_timeout_s))
        with Session(config, request.base_tag, mounts=[Mount(str(testbed), TESTBED, read_only=False),
                                                       Mount(str(wheelhouse.files), WHEELHOUSE_MOUNT)],
                     limits=limits, workdir=TESTBED, env=env) as session:
            prepared = session.run(f"python3 -m venv {SESSION_VENV} && {pip_upgrade_step()}", timeout_s=300)
            if prepared.outcome != "ok" or prepared.exit_code != 0:
                return AgentAttempt(AGENT_GAVE_UP, None, "the session's venv could not be made: "
                                    + _tail(prepared.stdout + prepared.stderr, 500))
            tools = _tools(session, wheelhouse, target, fetched)
            agent = Agent(ROLE, config, tools=tools, recorder=recorder if recorder is not None else NullRecorder(),
                          prompt_vars={"wheelhouse": WHEELHOUSE_MOUNT, "testbed": TESTBED})
            result = agent.run_sync(_task_text(request))
    spent = dict(cost_usd=result.cost_usd, tokens=result.usage.total_tokens, turns=result.turns,
                 seconds=time.monotonic() - started, stop_reason=result.stop_reason)
    if result.stop_reason in _BUDGET_STOPS:
        return AgentAttempt(BUDGET_EXHAUSTED, None, f"the agent stopped on its {result.stop_reason.replace('_', ' ')}"
                            f" after {result.turns} turns", **spent)
    if not result.ok:
        return AgentAttempt(AGENT_GAVE_UP, None, f"the agent's run ended with {result.stop_reason}: {result.error}",
                            **spent)
    try:
        recipe = recipe_from_answer(result.final_answer or "", request.failed_recipe)
    except ValueError as exc:
        return AgentAttempt(AGENT_GAVE_UP, None, str(exc), **spent)
    return AgentAttempt(ACCEPTED, recipe, "the agent answered with a recipe", **spent)


def recipe_from_answer(answer: str, failed: Recipe) -> Recipe:
    """The agent's final answer as a Recipe (origin "agent"); ValueError says why it is not one."""
    match = re.search(r"\{.*\}", answer, re.S)
    if not match:
        raise ValueError(f"the agent's answer holds no JSON recipe: {answer[:200]!r}")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"the agent's recipe is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("the agent's recipe is not a JSON object")
    if "failed" in data:
        raise ValueError(f"the agent gave up: {str(data['failed'])[:300]}")
    steps = data.get("install", data.get("env_steps"))
    if not isinstance(steps, list) or not all(isinstance(s, str) and s.strip() for s in steps):
        raise ValueError("the agent's recipe has no list of install commands (`install`)")
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("the agent's recipe's `env` is not an object of strings")
    test_command = data.get("test_command") or PYTEST_COMMAND
    if not isinstance(test_command, str):
        raise ValueError("the agent's recipe's `test_command` is not a string")
    return Recipe(python=failed.python, env_steps=list(steps), test_runner=failed.test_runner,
                  test_command=_without_junit_option(test_command), env=env, language=failed.language,
                  dependency_files=list(failed.dependency_files), origin="agent",
                  notes=["written by the environment-building agent after the heuristic recipe failed",
                         *[f"agent: {n}" for n in data.get("notes", []) if isinstance(n, str)][:10]])


def replay_recipe(config: Config, request: AgentRequest, recipe: Recipe) -> Replay:
    """Build the agent's recipe from scratch (a new environment layer from a fresh checkout), then an instance,
    and run the target tests once: the recipe counts only when that run gives a JUnit report of >= 1 test."""
    started = time.monotonic()
    env_id = environment_id(request.base_tag, recipe, request.fingerprint)
    environment = build_environment(config, request.repo_path, request.commit, recipe, request.base_tag,
                                    request.repo, env_id)
    if not environment.ok:
        return Replay(False, f"the replayed install failed: {environment.detail}", environment, env_id,
                      time.monotonic() - started)
    instance = build_instance(config, request.repo_path, request.commit, recipe, environment.image, request.repo)
    if not instance.ok:
        return Replay(False, f"the replayed instance build failed: {instance.detail}", environment, env_id,
                      time.monotonic() - started)
    try:
        status, detail = run_tests_once(config, instance.image, recipe, present_targets(request))
    finally:
        if instance.status == "built":
            remove_image(instance.image)  # the candidate's own instance is built (or reused) by the caller
    return Replay(status == OK, detail, environment, env_id, time.monotonic() - started)


def present_targets(request: AgentRequest) -> list[str]:
    """The target tests that exist at the environment's commit (a test patch may add the others later); none:
    the whole suite."""
    files = set(SourceTree(request.repo_path, request.commit).files)
    return [t for t in request.targets if t.split("::", 1)[0] in files]


def run_tests_once(config: Config, image: str, recipe: Recipe, targets: list[str]) -> tuple[str, str]:
    """One run of `targets` in `image` as validation runs them: (OK, detail) when it gave a JUnit report of at
    least one test, else (why not, detail with the end of its output)."""
    runner = runner_for(recipe.test_runner)
    report = "/tmp/junit.xml"
    command = (f"cd {TESTBED} && {runner.command(recipe.test_command, targets, report)}; code=$?; "
               f"echo; echo {REPORT_MARK}; cat {report} 2>/dev/null; exit $code")
    result = run_oneshot(config, image, ["bash", "-c", command], workdir=TESTBED,
                         limits=Limits.from_config(config, wall_s=float(config.docker.test_timeout_s)))
    if result.outcome != "ok":
        return "tests_crashed", f"the test run ended {result.outcome}: {result.reason}"
    output, _, junit = result.stdout.partition(REPORT_MARK)
    status, detail, outcomes = runner.read_report(result.exit_code, junit.strip() or None, targets)
    if status == OK and not outcomes:
        return NO_TESTS, "the test run reported no test"
    # pytest names a module it could not collect (an import error) without "::": its tests did not run
    uncollected = sorted(t for t, o in outcomes.items() if "::" not in t and o.outcome == "error")
    if status == OK and uncollected:
        messages = "; ".join(f"{t}: {outcomes[t].message or ''}"[:300] for t in uncollected[:3])
        return TESTS_CRASHED, (f"the test run could not collect {', '.join(uncollected[:5])}: {messages}\n"
                               f"{_tail(output + result.stderr, 1500)}")
    if status != OK:
        return status, f"the test run: {detail}\n{_tail(output + result.stderr, 1500)}"
    return OK, f"the test run reported {len(outcomes)} tests"


def _tools(session: Session, wheelhouse: Wheelhouse, target: Any, fetched: FetchLog) -> list:
    def run_command(command: str, timeout_s: int = 300) -> str:
        """Run a bash command in the container (in /testbed, the venv first on PATH, no network).

        Args:
            command: The command line.
            timeout_s: Wall-clock limit in seconds (at most 900).
        """
        result = session.run(f"bash -c {_quote(command)}", timeout_s=max(1, min(int(timeout_s), 900)))
        head = f"exit code {result.exit_code}" if result.exit_code is not None else f"outcome {result.outcome}"
        return f"{head}\n{_tail(result.stdout + result.stderr, MAX_TOOL_OUTPUT)}"

    def read_file(path: str) -> str:
        """Read a text file of the container.

        Args:
            path: Absolute path, or relative to /testbed.
        """
        data = session.read_file(_absolute(path), max_bytes=200_000)
        return data.decode("utf-8", "replace")

    def write_file(path: str, content: str) -> str:
        """Write a text file in the container (under /testbed, /work or /tmp).

        Args:
            path: Absolute path, or relative to /testbed.
            content: The whole new content.
        """
        session.write_file(_absolute(path), content)
        return f"wrote {len(content)} characters to {_absolute(path)}"

    def request_dependency(ecosystem: str, spec: str) -> str:
        """Ask the trusted host fetcher to download a dependency (and what it needs) into the offline
        wheelhouse; then install it with pip as usual.

        Args:
            ecosystem: The package ecosystem: "pip" (Python) is served here.
            spec: A requirement, e.g. "requests>=2.28".
        """
        if ecosystem.lower() not in ("pip", "pypi", "python"):
            return f"unsupported ecosystem {ecosystem!r}: this environment serves pip only"
        try:
            log = wheelhouse.provide([spec], target, FetchLog())
        except DependencyUnavailable as exc:
            return f"not available: {exc}"
        fetched.lines.extend(log.lines)
        return "available in the wheelhouse now" + (f" ({'; '.join(log.lines)[:500]})" if log.lines else "")

    return [as_tool(fn) for fn in (run_command, read_file, write_file, request_dependency)]


def _task_text(request: AgentRequest) -> str:
    recipe = request.failed_recipe
    targets = " ".join(request.targets) or "(the whole suite)"
    return (f"Repository {request.repo} at commit {request.commit}, checked out at {TESTBED}.\n"
            f"Python {recipe.python}; a venv is at {SESSION_VENV} (first on PATH).\n"
            f"Target tests: {targets}\n\n"
            "The heuristic recipe that failed:\n" + "\n".join(f"  {s}" for s in recipe.env_steps) +
            f"\n\nIts log (the end):\n{_tail(request.failure_log, 4000)}\n")


def _without_junit_option(command: str) -> str:
    # the runner adds its own --junitxml; one the agent wrote would point the report elsewhere
    return re.sub(r"\s--junit-?xml(=|\s+)\S+", "", command).strip()


def _absolute(path: str) -> str:
    return path if path.startswith("/") else f"{TESTBED}/{path}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def _open_to_sandbox_user(root: Path) -> None:
    # The session's user (uid 1000) writes the scratch checkout; it is ours and thrown away after the episode.
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, 0o777)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 | (os.stat(path).st_mode & 0o111))


__all__ = ["ACCEPTED", "AGENT_GAVE_UP", "BUDGET_EXHAUSTED", "NOT_REPRODUCIBLE", "NO_TESTS", "AgentAttempt", "AgentRequest",
           "Replay", "recipe_from_answer", "present_targets", "replay_recipe", "run_env_agent",
           "run_tests_once"]

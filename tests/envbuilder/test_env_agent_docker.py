"""The environment-building agent on the real engine, its model a scripted OpenAI-compatible server.

The repository's setup.py refuses to install, so the heuristic recipe (an editable install) fails. The
scripted agent's tool calls run for real in a sandbox session (pip from the offline wheelhouse, pytest on the
checkout); its recipe is then replayed from scratch. A recipe that needs a file the agent wrote by hand in the
session fails that replay and is rejected; an agent that spends its turns stops `budget_exhausted`."""

from __future__ import annotations

import json

import pytest
from scripted_server import ScriptedServer, reply, tool_call

from envbuilder.build import build_candidate
from envbuilder.env_agent import ACCEPTED, BUDGET_EXHAUSTED, NOT_REPRODUCIBLE, recipe_from_answer
from envbuilder.recipes import Recipe, fingerprint_recipe_path
from tests.envbuilder.test_offline_build_docker import candidate_of, index_files, serve_index  # noqa: F401
from verifiers.grading import INSTALL_FAILED

pytestmark = pytest.mark.docker

REFUSING_REPO = {
    "setup.py": "raise SystemExit('calcpkg is not installable: its tests run from the source tree')\n",
    "calcpkg/__init__.py": "def add(a, b):\n    return a + b\n",
    "tests/test_calc.py": "from calcpkg import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}
GOOD_RECIPE = {"install": ["python -m pip install pytest"], "env": {"PYTHONPATH": "/testbed"},
               "test_command": "python -m pytest -rA -p no:cacheprovider --junitxml=/tmp/mine.xml",
               "notes": ["setup.py refuses to install; the tests import the package from the checkout"]}


@pytest.fixture
def agent_config(tmp_path, index_files, flow_config):  # noqa: F811 - the imported fixture
    """Our index on 127.0.0.1 (wheels of pip, setuptools, pytest), the agent on, its role at the server."""
    files = tmp_path / "index"
    files.mkdir()
    for wheel in index_files.iterdir():
        (files / wheel.name).write_bytes(wheel.read_bytes())
    index, url = serve_index(files)

    def make(server: ScriptedServer, **role: str):
        return flow_config(code__index_url=url, code__env_agent="true",
                           agents__env_builder__base_url=server.base_url, agents__env_builder__model="scripted",
                           agents__env_builder__max_retries="0", agents__env_builder__timeout_s="30",
                           **{f"agents__env_builder__{k}": v for k, v in role.items()})

    yield make
    index.shutdown()


def test_a_failing_heuristic_recipe_is_fixed_by_the_agent_replayed_and_reused(tmp_path, agent_config):
    script = [reply(tool_calls=[tool_call("run_command", {"command": "python -m pip install pytest"})]),
              reply(tool_calls=[tool_call("run_command", {"command": "PYTHONPATH=/testbed python -m pytest -q"})]),
              reply(json.dumps(GOOD_RECIPE), usage=(900, 120))]
    with ScriptedServer(script) as server:
        config = agent_config(server)
        candidate = candidate_of(tmp_path, REFUSING_REPO, "calcpkg")

        outcome = build_candidate(config, candidate)

        assert outcome.ok, outcome.instance["detail"]
        env = outcome.environment
        assert (env["recipe_origin"], env["agent_status"], env["status"]) == ("agent", ACCEPTED, "built")
        assert env["recipe"]["env_steps"] == ["python -m pip install pytest"]
        assert env["agent_turns"] == 3 and env["agent_tokens"] > 0 and env["agent_seconds"] > 0
        # the tools ran for real in the session: pytest's own output came back to the model
        tool_results = [m["content"] for m in server.requests[2].messages if m["role"] == "tool"]
        assert "exit code 0" in tool_results[0] and "1 passed" in tool_results[1], tool_results
        # the instance runs the tests with the agent's env, the runner's own report path
        assert "--junitxml=/io/junit.xml" in outcome.instance["test_command"]
        assert "/tmp/mine.xml" not in outcome.instance["test_command"]

        # a second candidate of the repository with the same dependency files reuses the recipe: no agent call
        again = candidate_of(tmp_path / "again", {**REFUSING_REPO, "README": "changed\n"}, "calcpkg")
        second = build_candidate(config, again)
        assert second.ok, second.instance["detail"]
        assert second.environment["recipe_origin"] == "agent" and "agent_status" not in second.environment
        assert len(server.requests) == 3
    assert fingerprint_recipe_path(config.home_path / "recipes", "t/calcpkg", env["fingerprint"]).is_file()


def test_a_recipe_that_leans_on_a_file_the_agent_wrote_is_not_reproducible(tmp_path, agent_config):
    handmade = {"install": ["python -m pip install -r agent-requirements.txt"], "env": {"PYTHONPATH": "/testbed"}}
    script = [reply(tool_calls=[tool_call("write_file", {"path": "agent-requirements.txt", "content": "pytest\n"})]),
              reply(tool_calls=[tool_call("run_command",
                                          {"command": "python -m pip install -r agent-requirements.txt"})]),
              reply(json.dumps(handmade))]
    with ScriptedServer(script) as server:
        config = agent_config(server)
        outcome = build_candidate(config, candidate_of(tmp_path, REFUSING_REPO, "handmade"))

    assert not outcome.ok and outcome.instance["reason"] == INSTALL_FAILED
    env = outcome.environment
    assert (env["status"], env["reason"], env["agent_status"]) == ("failed", NOT_REPRODUCIBLE, NOT_REPRODUCIBLE)
    assert "agent-requirements.txt" in env["agent_detail"]
    assert not list((config.home_path / "recipes").glob("*/*.json"))


def test_an_agent_that_spends_its_turns_stops_budget_exhausted(tmp_path, agent_config):
    script = [reply(tool_calls=[tool_call("run_command", {"command": f"echo try {n}"})]) for n in range(5)]
    with ScriptedServer(script) as server:
        config = agent_config(server, max_turns="2")
        outcome = build_candidate(config, candidate_of(tmp_path, REFUSING_REPO, "stubborn"))

    assert not outcome.ok
    assert outcome.environment["reason"] == BUDGET_EXHAUSTED
    assert "budget_exhausted" in outcome.instance["detail"]
    assert len(server.requests) == 2


def test_the_agents_answer_becomes_an_agent_recipe_or_a_clear_refusal():
    failed = Recipe(python="3.10", env_steps=["python -m pip install -e ."])
    recipe = recipe_from_answer("Done.\n" + json.dumps(GOOD_RECIPE), failed)
    assert (recipe.origin, recipe.python, recipe.env) == ("agent", "3.10", {"PYTHONPATH": "/testbed"})
    assert recipe.test_command == "python -m pytest -rA -p no:cacheprovider"
    for answer, says in (('{"failed": "needs a GPU"}', "gave up: needs a GPU"), ("no idea", "no JSON recipe"),
                         ('{"install": "pip install x"}', "no list of install commands")):
        with pytest.raises(ValueError, match=says):
            recipe_from_answer(answer, failed)

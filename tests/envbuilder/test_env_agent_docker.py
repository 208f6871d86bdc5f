"""The environment-building agent on the real engine, its model a scripted OpenAI-compatible server.

The repository's setup.py refuses to install, so the heuristic recipe (an editable install) fails. The
scripted agent's tool calls run for real in a sandbox session (pip from the offline wheelhouse, pytest on the
checkout); its recipe is then replayed from scratch. A recipe that needs a file the agent wrote by hand in the
session fails that replay and is rejected; an agent that spends its turns stops `budget_exhausted`."""

from __future__ import annotations

import asyncio
import json

import pytest
from scripted_server import ScriptedServer, reply, tool_call
from typer.testing import CliRunner

from envbuilder.build import build_candidate
from envbuilder.env_agent import ACCEPTED, BUDGET_EXHAUSTED, NOT_REPRODUCIBLE, recipe_from_answer
from envbuilder.recipes import Recipe
from envbuilder.samples import Sample, SampleCommit, build_repo
from tasksynth.cli.main import app as main_app
from tasksynth.config import Price
from tasksynth.store import open_store
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


def calcpkg_repo(tmp_path):
    """A repository whose setup.py refuses to install; its second commit fixes `half` and adds a test."""
    fixed = {"calcpkg/__init__.py": "def half(x):\n    return x / 2\n",
             "tests/test_calc.py": REFUSING_REPO["tests/test_calc.py"].replace(
                 "add", "half").replace("half(2, 3) == 5", "half(4) == 2") + "\n\ndef test_odd():\n"
                                                                          "    assert half(3) == 1.5\n"}
    first = {**REFUSING_REPO, "calcpkg/__init__.py": "def half(x):\n    return x // 2\n",
             "tests/test_calc.py": "from calcpkg import half\n\n\ndef test_half():\n    assert half(4) == 2\n"}
    return build_repo(Sample("calcpkg", "t/calcpkg", [SampleCommit("init", first),
                                                       SampleCommit("half: true division", fixed)]),
                      tmp_path / "repos" / "t" / "calcpkg")


def test_a_failing_heuristic_recipe_is_fixed_by_the_agent_replayed_validated_and_reused(tmp_path, agent_config,
                                                                                         pipeline):
    script = [reply(tool_calls=[tool_call("run_command", {"command": "python -m pip install pytest"})]),
              reply(tool_calls=[tool_call("run_command", {"command": "PYTHONPATH=/testbed python -m pytest -q"})]),
              reply(json.dumps(GOOD_RECIPE), usage=(900, 120))]
    with ScriptedServer(script) as server:
        config = agent_config(server)
        config.prices["scripted"] = Price(input_per_mtok=100.0, output_per_mtok=400.0)
        repo = calcpkg_repo(tmp_path)

        summary = pipeline(config, git=[str(repo.path)])

        with open_store(config, read_only=True) as store:
            env = store.query("SELECT * FROM environments")[0]
            task = store.query("SELECT * FROM code_tasks")[0]
            candidate = store.query("SELECT * FROM candidates")[0]
            instance = store.query("SELECT * FROM code_instances")[0]
        assert (task["verdict"], list(task["fail_to_pass"])) == ("valid", ["tests/test_calc.py::test_odd"]), task
        assert (env["recipe_origin"], env["agent_status"], env["status"]) == ("agent", ACCEPTED, "built")
        assert env["recipe"]["env_steps"] == ["python -m pip install pytest"]
        assert env["agent_turns"] == 3 and env["agent_seconds"] > 0
        assert env["agent_cost_usd"] == pytest.approx((10 + 10 + 900) * 100e-6 + (5 + 5 + 120) * 400e-6)
        # the runs write the runner's own report, not the path the agent's command named
        assert "--junitxml=/io/junit.xml" in instance["test_command"] and "mine.xml" not in instance["test_command"]
        # the tools ran for real in the session: pytest's own output came back to the model
        tool_results = [m["content"] for m in server.requests[2].messages if m["role"] == "tool"]
        assert "exit code 0" in tool_results[0] and "1 passed" in tool_results[1], tool_results

        # `code report` and the flow run's artifact: one candidate, built by the agent, valid, its cost
        shown = CliRunner().invoke(main_app, ["code", "report", "--json"], env={"TASKSYNTH_HOME": config.home})
        assert shown.exit_code == 0, shown.output
        funnel = json.loads(shown.output)
        assert funnel["funnel"] == [["candidates", 1], ["filtered", 1], ["built heuristically", 0],
                                    ["built by agent", 1], ["valid", 1]]
        assert funnel["cost_usd_per_valid_environment"] == pytest.approx(env["agent_cost_usd"])
        artifact = {row["stage"]: row["count"] for row in _artifact(summary["run_id"], "code-environments")}
        assert artifact["built by agent"] == 1 and artifact["valid"] == 1
        assert artifact["agent episodes ended accepted"] == 1

        # a later commit of the repository (same dependency files) reuses the recipe: no agent call
        later = {**candidate, "instance_id": "calcpkg-later", "candidate_id": "calcpkg-later",
                 "base_commit": repo.head, "patch": "", "test_patch": ""}
        second = build_candidate(config, later)
        assert second.ok, second.instance["detail"]
        assert second.environment["recipe_origin"] == "agent" and "agent_status" not in second.environment
        assert second.environment["env_id"] == env["env_id"]
        assert len(server.requests) == 3


def _artifact(flow_run_id: str, key: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])))

    found = asyncio.run(read())
    assert found, f"no artifact {key}"
    data = found[0].data
    return data if isinstance(data, list) else json.loads(data)


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


def test_an_environment_that_installs_but_cannot_collect_its_tests_goes_to_the_agent(tmp_path, agent_config):
    """No setup.py: the heuristic recipe installs pytest and puts /testbed on PYTHONPATH; the tests import
    `wheel`, which nothing declares, so they do not collect. The agent's recipe adds it."""
    files = {"fmt.py": "def shout(text):\n    return text.upper()\n",
             "tests/test_fmt.py": "import wheel\n\nfrom fmt import shout\n\n\ndef test_shout():\n"
                                  "    assert wheel.__name__ and shout('a') == 'A'\n"}
    recipe = {"install": ["python -m pip install pytest wheel"], "env": {"PYTHONPATH": "/testbed"}}
    script = [reply(tool_calls=[tool_call("request_dependency", {"ecosystem": "pip", "spec": "wheel"})]),
              reply(json.dumps(recipe))]
    with ScriptedServer(script) as server:
        config = agent_config(server)
        candidate = {**candidate_of(tmp_path, files, "fmt"), "test_patch": ""}
        outcome = build_candidate(config, candidate)

    assert outcome.ok, outcome.instance["detail"]
    env = outcome.environment
    assert (env["recipe_origin"], env["agent_status"]) == ("agent", ACCEPTED)
    task = server.requests[0].messages[-1]["content"]
    assert "tests/test_fmt.py" in task and "wheel" in task  # the agent was shown why the tests do not run
    assert "available in the wheelhouse" in server.requests[1].messages[-1]["content"]

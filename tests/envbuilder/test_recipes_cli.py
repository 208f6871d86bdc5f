"""`tasksynth code recipes export|import`: an agent's recipes move to another home, and candidates of the same
repository and dependency fingerprint there get them from the recipe providers (no agent, no heuristic)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from envbuilder.recipes import (Recipe, RecipeContext, dependency_fingerprint, find_recipe, save_fingerprint_recipe,
                                stored_recipes)
from envbuilder.repos import SourceTree
from envbuilder.samples import Sample, SampleCommit, build_repo
from tasksynth.cli.main import app

FILES = {"setup.py": "raise SystemExit('no')\n", "pkg/__init__.py": "", "tests/test_pkg.py": "def test_x():\n    pass\n"}


def invoke(home, *args):
    return CliRunner().invoke(app, ["code", "recipes", *args], env={"TASKSYNTH_HOME": str(home)})


def test_recipes_exported_from_one_home_are_found_for_the_same_fingerprint_in_another(tmp_path):
    repo = build_repo(Sample("pkg", "t/pkg", [SampleCommit("init", FILES)]), tmp_path / "pkg")
    tree = SourceTree(repo.path, repo.head)
    fingerprint = dependency_fingerprint(tree)
    agent_recipe = Recipe(env_steps=["python -m pip install pytest"], env={"PYTHONPATH": "/testbed"}, origin="agent")
    save_fingerprint_recipe(tmp_path / "a" / "recipes", "t/pkg", fingerprint, agent_recipe)
    bundle = tmp_path / "recipes.json"

    exported = invoke(tmp_path / "a", "export", str(bundle))
    imported = invoke(tmp_path / "b", "import", str(bundle))
    again = invoke(tmp_path / "b", "import", str(bundle))

    assert exported.exit_code == 0 and "exported 1 recipes" in exported.output
    assert imported.exit_code == 0 and "1 imported" in imported.output, imported.output
    assert "1 unchanged" in again.output
    found = find_recipe(tree, RecipeContext("t/pkg", ["3.11"], tmp_path / "b" / "recipes"))
    assert (found.origin, found.env_steps, found.env) == ("agent", agent_recipe.env_steps, {"PYTHONPATH": "/testbed"})
    # another repository, or other dependency files, still get the heuristic recipe
    other = find_recipe(tree, RecipeContext("t/other", ["3.11"], tmp_path / "b" / "recipes"))
    assert other.origin == "heuristic"


def test_a_differing_stored_recipe_is_kept_unless_replaced_and_bad_files_are_refused(tmp_path):
    save_fingerprint_recipe(tmp_path / "a" / "recipes", "t/pkg", "ab" * 32, Recipe(env_steps=["echo new"]))
    save_fingerprint_recipe(tmp_path / "b" / "recipes", "t/pkg", "ab" * 32, Recipe(env_steps=["echo old"]))
    bundle = tmp_path / "recipes.json"
    invoke(tmp_path / "a", "export", str(bundle))

    kept = invoke(tmp_path / "b", "import", str(bundle))
    assert "1 kept" in kept.output and stored_recipes(tmp_path / "b" / "recipes")[0]["recipe"]["env_steps"] == ["echo old"]
    replaced = invoke(tmp_path / "b", "import", str(bundle), "--replace")
    assert "1 imported" in replaced.output
    assert stored_recipes(tmp_path / "b" / "recipes")[0]["recipe"]["env_steps"] == ["echo new"]

    evil = json.loads(bundle.read_text())
    evil["recipes"][0]["fingerprint"] = "../../escape"
    bundle.write_text(json.dumps(evil))
    refused = invoke(tmp_path / "b", "import", str(bundle))
    assert refused.exit_code != 0 and "bad dependency fingerprint" in _flat(refused.output)
    bundle.write_text("[1, 2]")
    assert "is not a recipes file" in _flat(invoke(tmp_path / "b", "import", str(bundle)).output)


def _flat(output: str) -> str:
    """The text of a usage error as one line: rich wraps it in a box at the terminal's width."""
    return " ".join(output.replace("│", " ").split())


def test_code_report_prints_the_environment_funnel_from_the_store(tmp_path):
    from tasksynth.config import load_config
    from tasksynth.store import open_store

    home = tmp_path / "home"
    nothing = CliRunner().invoke(app, ["code", "report"], env={"TASKSYNTH_HOME": str(home)})
    assert nothing.exit_code == 0 and "nothing yet" in nothing.output
    config = load_config(environ={"TASKSYNTH_HOME": str(home)})
    with open_store(config) as store:
        store.insert("candidates", [{"candidate_id": f"c{n}", "source": "git", "instance_id": f"i{n}", "repo": "t/r",
                                     "base_commit": "b", "patch": "", "test_patch": "", "problem_statement": ""}
                                    for n in range(3)])
        store.insert("environments", [
            {"env_id": "e-heur", "repo": "t/r", "base_image": "b", "image": "tasksynth/env:e-heur", "recipe": {},
             "recipe_origin": "heuristic", "fingerprint": "f", "status": "built", "build_seconds": 10.0,
             "agent_status": None, "agent_cost_usd": None, "agent_seconds": None},
            {"env_id": "e-agent", "repo": "t/r", "base_image": "b", "image": "tasksynth/env:e-agent", "recipe": {},
             "recipe_origin": "agent", "fingerprint": "g", "status": "built", "build_seconds": 20.0,
             "agent_status": "accepted", "agent_cost_usd": 0.03, "agent_seconds": 30.0}])
        store.insert("code_instances", [
            {"instance_id": "i0", "candidate_id": "c0", "env_id": "e-heur", "status": "built", "reason": None},
            {"instance_id": "i1", "candidate_id": "c1", "env_id": "e-agent", "status": "built", "reason": None},
            {"instance_id": "i2", "candidate_id": "c2", "status": "failed", "reason": "patch_outside_repo"}])
        store.insert("code_tasks", [{"instance_id": f"i{n}", "candidate_id": f"c{n}", "repo": "t/r",
                                     "base_commit": "b", "env_id": env, "verdict": "valid"}
                                    for n, env in ((0, "e-heur"), (1, "e-agent"))])

    shown = CliRunner().invoke(app, ["code", "report"], env={"TASKSYNTH_HOME": str(home)})

    assert shown.exit_code == 0, shown.output
    lines = [line.split() for line in shown.output.splitlines()]
    assert ["candidates", "3"] in lines and ["filtered", "2"] in lines and ["valid", "2"] in lines
    assert ["built", "heuristically", "1"] in lines and ["built", "by", "agent", "1"] in lines
    assert "agent episodes: 1 (1 accepted)" in shown.output
    assert "$0.0300, $0.0150 per valid environment" in shown.output
    assert "environment time: 60.0 s, 30.0 s per valid environment" in shown.output

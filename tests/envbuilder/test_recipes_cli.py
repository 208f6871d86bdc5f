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
    assert refused.exit_code != 0 and "bad dependency fingerprint" in refused.output
    bundle.write_text("[1, 2]")
    assert "is not a recipes file" in invoke(tmp_path / "b", "import", str(bundle)).output

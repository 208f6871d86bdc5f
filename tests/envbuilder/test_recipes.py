"""Install recipes from project metadata, the Python version, dependency fingerprints and test selection."""

import pytest

from envbuilder.errors import UnsupportedProject
from envbuilder.recipes import (Recipe, RecipeContext, dependency_fingerprint, detect_language, detect_python,
                                find_recipe)
from envbuilder.repos import SourceTree
from envbuilder.runners import PytestRunner
from envbuilder.samples import Sample, SampleCommit, build_repo

AVAILABLE = ["3.9", "3.11", "3.13"]


def tree_of(tmp_path, files, name="proj"):
    built = build_repo(Sample(name, f"t/{name}", [SampleCommit("init", files)]), tmp_path / name)
    return SourceTree(built.path, built.head)


@pytest.mark.parametrize("files, version", [
    ({"pyproject.toml": '[project]\nname="x"\nrequires-python=">=3.8"\n'}, "3.11"),  # the default when allowed
    ({"pyproject.toml": '[project]\nname="x"\nrequires-python=">=3.12"\n'}, "3.13"),
    ({"pyproject.toml": '[project]\nname="x"\nrequires-python=">=3.8,<3.10"\n'}, "3.9"),
    ({"setup.py": "setup(name='x', python_requires='>=3.8', classifiers=['Programming Language :: Python :: 3.9'])"},
     "3.9"),  # the newest version the project lists
    ({"setup.cfg": "[metadata]\nname = x\n[options]\npython_requires = >=3.10\n"}, "3.11"),
    ({"tox.ini": "[tox]\nenvlist = py39,py313\n"}, "3.13"),
    ({".github/workflows/ci.yml": "jobs:\n  t:\n    strategy:\n      matrix:\n        python-version: ['3.8', '3.9']\n"},
     "3.9"),
])
def test_python_version_from_metadata(tmp_path, files, version):
    chosen, why = detect_python(tree_of(tmp_path, files), AVAILABLE)
    assert chosen == version and why


def test_no_available_python_is_a_clear_error(tmp_path):
    with pytest.raises(UnsupportedProject, match="allows none of the available Pythons"):
        detect_python(tree_of(tmp_path, {"pyproject.toml": '[project]\nname="x"\nrequires-python="<3"\n'}), AVAILABLE)


def test_heuristic_recipe_for_a_setuptools_project_with_requirements_and_tox(tmp_path):
    tree = tree_of(tmp_path, {
        "setup.py": "from setuptools import setup\nsetup(name='x', extras_require={'test': ['pytest'], 'docs': []})\n",
        "requirements.txt": "attrs\n", "requirements-test.txt": "pytest\n", "docs/requirements.txt": "sphinx\n",
        "requirements-docs.txt": "sphinx\n", "tox.ini": "[testenv]\ndeps =\n    hypothesis\n    -rrequirements.txt\n",
        "x/__init__.py": "",
    })
    recipe = find_recipe(tree, RecipeContext("t/proj", AVAILABLE))
    assert recipe.origin == "heuristic" and recipe.test_runner == "pytest"
    assert recipe.env_steps == [
        "python -m pip install setuptools wheel",
        "python -m pip install -r requirements-test.txt",
        "python -m pip install -r requirements.txt",
        "python -m pip install hypothesis",
        "python -m pip install --no-build-isolation --config-settings editable_mode=compat -e '.[test]'",
        "python -m pip install pytest",
    ]
    assert recipe.dependency_files == ["requirements-docs.txt", "requirements-test.txt", "requirements.txt",
                                       "setup.py", "tox.ini"]
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # data: stored and read back unchanged


def test_a_plain_directory_of_modules_goes_on_pythonpath(tmp_path):
    recipe = find_recipe(tree_of(tmp_path, {"mod.py": "X = 1\n", "test_mod.py": "def test():\n    pass\n"}),
                         RecipeContext("t/proj", AVAILABLE))
    assert recipe.env == {"PYTHONPATH": "/testbed"} and recipe.env_steps == ["python -m pip install pytest"]


def test_a_user_recipe_file_wins_over_the_heuristic(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "t__proj.json").write_text('{"python": "3.9", "env_steps": ["python -m pip install pytest==8.0"]}')
    recipe = find_recipe(tree_of(tmp_path, {"mod.py": ""}), RecipeContext("t/proj", AVAILABLE, recipes))
    assert recipe.origin == "user" and recipe.python == "3.9" and recipe.env_steps == ["python -m pip install pytest==8.0"]


def test_other_languages_have_no_recipe_yet(tmp_path):
    with pytest.raises(UnsupportedProject, match="no recipe for haskell projects"):
        find_recipe(tree_of(tmp_path, {"src/Main.hs": ""}), RecipeContext("t/proj", AVAILABLE), language="haskell")


def test_go_and_javascript_are_detected_and_get_their_recipes(tmp_path):
    go = tree_of(tmp_path / "go", {"go.mod": "module x\n", "x.go": "package x\n"})
    assert detect_language(go) == "go"
    assert find_recipe(go, RecipeContext("t/go", AVAILABLE), language="go").test_runner == "gotest"
    js = tree_of(tmp_path / "js", {"package.json": "{}", "index.js": ""})
    assert detect_language(js) == "javascript"
    with pytest.raises(UnsupportedProject, match="without package-lock.json"):
        find_recipe(js, RecipeContext("t/js", AVAILABLE), language="javascript")
    # a Python project with a package.json for its docs stays Python
    assert detect_language(tree_of(tmp_path / "py", {"package.json": "{}", "setup.py": ""})) == "python"


def test_fingerprint_follows_dependency_files_only(tmp_path):
    sample = Sample("fp", "t/fp", [
        SampleCommit("a", {"pyproject.toml": '[project]\nname="x"\n', "x.py": "A = 1\n"}),
        SampleCommit("b", {"x.py": "A = 2\n"}),
        SampleCommit("c", {"pyproject.toml": '[project]\nname="x"\ndependencies=["attrs"]\n'}),
    ])
    built = build_repo(sample, tmp_path / "fp")
    prints = [dependency_fingerprint(SourceTree(built.path, sha)) for sha in built.shas]
    assert prints[0] == prints[1] != prints[2]


def test_tests_to_run_are_the_touched_ones_and_those_of_touched_modules():
    runner = PytestRunner()
    files = ["pkg/ops.py", "pkg/text.py", "tests/test_ops.py", "tests/test_text.py", "tests/conftest.py",
             "tests/test_old.py"]
    test_patch = ("diff --git a/tests/test_new.py b/tests/test_new.py\nnew file mode 100644\n--- /dev/null\n"
                  "+++ b/tests/test_new.py\n@@ -0,0 +1 @@\n+def test_x(): pass\n"
                  "diff --git a/tests/conftest.py b/tests/conftest.py\n--- a/tests/conftest.py\n+++ b/tests/conftest.py\n"
                  "diff --git a/tests/test_old.py b/tests/test_old.py\ndeleted file mode 100644\n--- a/tests/test_old.py\n"
                  "+++ /dev/null\n")
    patch = "diff --git a/pkg/ops.py b/pkg/ops.py\n--- a/pkg/ops.py\n+++ b/pkg/ops.py\n"
    assert runner.select_tests(files, test_patch, patch, "touched") == ["tests/test_new.py", "tests/test_ops.py"]
    assert runner.select_tests(files, test_patch, patch, "all") == []
    assert runner.command("python -m pytest", ["tests/test_new.py"]) == \
        "python -m pytest --junitxml=/io/junit.xml tests/test_new.py"

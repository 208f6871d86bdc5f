"""Install recipes: how to put a repository's dependencies into an image, as plain data.

A `Recipe` is a list of shell steps plus the test command, stored with the environment (`environments.recipe`)
so that a user can read and replay it, and an agent can write one later (`origin = "agent"`). Recipes come
from providers tried in order: a user's recipe file (`<home>/recipes/<owner>__<name>.json`), then one an
accepted agent run left for the repository's dependency fingerprint (`<owner>__<name>/<fingerprint>.json`), then
the heuristic one found from the project's metadata (pyproject.toml, setup.py, setup.cfg, requirements files,
tox.ini). An agent provider plugs into `PROVIDERS` the same way.

Where the steps run: `env_steps` in the repository-environment layer, as the non-root user, in /testbed holding
the files of the commit that fixed the dependency fingerprint, with the venv /opt/venv first on PATH, in the
sandbox without network: pip installs from the wheelhouse only (`envbuilder.wheelhouse`), which the host fills
beforehand with what `recipe_requirements` reads from the steps, and later with what an install reports missing;
`instance_steps` in the instance layer at the candidate's base commit (usually none: the editable install of
the environment layer points at /testbed, so a new checkout there is imported as it is).
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from envbuilder.errors import UnsupportedProject
from envbuilder.repos import SourceTree
from tasksynth.hashing import content_hash, sha256_bytes

RECIPE_SCHEMA = 1
# Files whose contents decide the installed dependencies: the dependency fingerprint hashes them.
DEPENDENCY_PATTERNS = ("pyproject.toml", "setup.py", "setup.cfg", "requirements*.txt", "requirements/*.txt",
                       "*requirements*.txt", "constraints*.txt", "tox.ini", "Pipfile", "Pipfile.lock", "poetry.lock",
                       "uv.lock", "go.mod", "go.sum", "package.json", "package-lock.json", "yarn.lock",
                       "pnpm-lock.yaml", "Cargo.toml", "Cargo.lock", "*/Cargo.toml", "CMakeLists.txt",
                       "pom.xml", "*/pom.xml", "build.gradle", "build.gradle.kts", "settings.gradle",
                       "settings.gradle.kts", "composer.json", "composer.lock")
TEST_EXTRAS = ("test", "tests", "testing", "dev")
DEFAULT_PYTHON = "3.11"
PYTEST_COMMAND = ("python -m pytest -rA -p no:cacheprovider --continue-on-collection-errors "
                  "-o junit_family=xunit1 --rootdir=/testbed")


@dataclass
class Recipe:
    python: str = DEFAULT_PYTHON
    env_steps: list[str] = field(default_factory=list)
    instance_steps: list[str] = field(default_factory=list)
    test_runner: str = "pytest"
    test_command: str = PYTEST_COMMAND
    env: dict[str, str] = field(default_factory=dict)  # variables set in the instance image
    language: str = "python"
    dependency_files: list[str] = field(default_factory=list)
    origin: str = "heuristic"  # heuristic | user | agent
    notes: list[str] = field(default_factory=list)  # why each choice was made, for the reader

    def to_dict(self) -> dict[str, Any]:
        return {"schema": RECIPE_SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def env_digest(self) -> str:
        """What the environment layer depends on (notes and instance steps do not change it)."""
        return content_hash(RECIPE_SCHEMA, self.language, self.python, self.env_steps)

    def script(self) -> str:
        """The recipe as one shell script a user can replay in a checkout."""
        lines = ["#!/bin/bash", f"# recipe ({self.origin}) for Python {self.python}", "set -euxo pipefail",
                 "python3 -m venv /opt/venv && export PATH=/opt/venv/bin:$PATH", *self.env_steps,
                 *self.instance_steps, *(f"export {k}={shlex.quote(v)}" for k, v in self.env.items()),
                 f"{self.test_command} --junitxml=junit.xml"]
        return "\n".join(lines) + "\n"


def dependency_files(tree: SourceTree) -> list[str]:
    return sorted(path for path in tree.files
                  if any(fnmatch.fnmatch(path, pattern) and (pattern.count("/") == path.count("/"))
                         for pattern in DEPENDENCY_PATTERNS))


def dependency_fingerprint(tree: SourceTree) -> str:
    """A hash of the dependency files' contents: two commits with the same one share an environment."""
    return content_hash([(path, sha256_bytes((tree.read(path) or "").encode())) for path in dependency_files(tree)])


# ------------------------------------------------------------------------------------------------ providers

RecipeProvider = Callable[[SourceTree, "RecipeContext"], "Recipe | None"]


@dataclass
class RecipeContext:
    repo: str
    pythons: list[str]  # versions a base image can be had for
    recipes_dir: Path | None = None


def user_recipe(tree: SourceTree, context: RecipeContext) -> Recipe | None:
    """A recipe a user (or an earlier agent run) wrote: `<recipes_dir>/<owner>__<name>.json`."""
    if not context.recipes_dir:
        return None
    path = context.recipes_dir / f"{context.repo.replace('/', '__')}.json"
    if not path.is_file():
        return None
    recipe = Recipe.from_dict(json.loads(path.read_text()))
    recipe.origin = recipe.origin if recipe.origin != "heuristic" else "user"
    recipe.dependency_files = dependency_files(tree)
    return recipe


def heuristic_recipe(tree: SourceTree, context: RecipeContext) -> Recipe:
    """Install the package (editable) with its test extras and requirements files, and pytest."""
    notes: list[str] = []
    python, why = detect_python(tree, context.pythons)
    notes.append(f"python {python}: {why}")
    pyproject = _toml(tree.read("pyproject.toml"))
    setup_cfg = _ini(tree.read("setup.cfg"))
    setup_py = tree.read("setup.py") or ""
    steps: list[str] = []

    build_requires = list(pyproject.get("build-system", {}).get("requires", []))
    backend = pyproject.get("build-system", {}).get("build-backend", "")
    installable = bool(pyproject.get("project") or pyproject.get("tool", {}).get("poetry") or setup_py
                       or setup_cfg.has_section("metadata"))
    if installable:
        if not build_requires:
            build_requires = ["setuptools", "wheel"]
            notes.append("no [build-system]: setuptools and wheel")
        elif (not backend or "setuptools" in backend) and not any(r.startswith("wheel") for r in build_requires):
            build_requires.append("wheel")  # setuptools before 70 builds wheels only with `wheel` installed
        steps.append("python -m pip install " + " ".join(shlex.quote(r) for r in build_requires))

    for requirements in _requirements_files(tree.files):
        steps.append(f"python -m pip install -r {shlex.quote(requirements)}")
        notes.append(f"requirements file {requirements}")

    tox_deps = _tox_deps(tree.read("tox.ini"))
    if tox_deps:
        steps.append("python -m pip install " + " ".join(shlex.quote(d) for d in tox_deps))
        notes.append("test dependencies from tox.ini [testenv] deps")

    env: dict[str, str] = {}
    if installable:
        extras = [e for e in _extras(pyproject, setup_cfg, setup_py) if e in TEST_EXTRAS]
        target = "." + (f"[{','.join(extras)}]" if extras else "")
        options = "--no-build-isolation"
        if not backend or "setuptools" in backend:
            # compat: a path entry for /testbed, so a later checkout there imports as it is, new modules too
            options += " --config-settings editable_mode=compat"
        steps.append(f"python -m pip install {options} -e {shlex.quote(target)}")
        notes.append(f"editable install of the package with extras {extras or 'none'}")
    else:
        env["PYTHONPATH"] = "/testbed"
        notes.append("not an installable package: /testbed goes on PYTHONPATH")
    steps.append("python -m pip install pytest")
    notes.append("pytest runs the tests (unittest suites included)")
    return Recipe(python=python, env_steps=steps, env=env, dependency_files=dependency_files(tree), notes=notes)


def fingerprint_recipe(tree: SourceTree, context: RecipeContext) -> Recipe | None:
    """A recipe an accepted agent run (or an import) left for this repository and dependency fingerprint:
    `<recipes_dir>/<owner>__<name>/<fingerprint>.json`. Candidates sharing both reuse it without the agent."""
    if not context.recipes_dir:
        return None
    path = fingerprint_recipe_path(context.recipes_dir, context.repo, dependency_fingerprint(tree))
    if not path.is_file():
        return None
    recipe = Recipe.from_dict(json.loads(path.read_text()))
    recipe.dependency_files = dependency_files(tree)
    return recipe


def fingerprint_recipe_path(recipes_dir: Path, repo: str, fingerprint: str) -> Path:
    return recipes_dir / repo.replace("/", "__") / f"{fingerprint}.json"


def save_fingerprint_recipe(recipes_dir: Path, repo: str, fingerprint: str, recipe: Recipe) -> Path:
    """Keep a recipe for the repository's candidates with this fingerprint (written whole, then renamed)."""
    path = fingerprint_recipe_path(recipes_dir, repo, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(recipe.to_dict(), indent=1, sort_keys=True) + "\n")
    partial.replace(path)
    return path


def stored_recipes(recipes_dir: Path) -> list[dict[str, Any]]:
    """Every fingerprint recipe of the directory: {"repo", "fingerprint", "recipe"} (for `code recipes export`)."""
    found = []
    if recipes_dir.is_dir():
        for path in sorted(recipes_dir.glob("*/*.json")):
            owner, _, name = path.parent.name.partition("__")
            found.append({"repo": f"{owner}/{name}" if name else owner, "fingerprint": path.stem,
                          "recipe": json.loads(path.read_text())})
    return found


PROVIDERS: list[RecipeProvider] = [user_recipe, fingerprint_recipe, heuristic_recipe]
# Languages other than Python (PROVIDERS): their providers, in order.
LANGUAGE_PROVIDERS: dict[str, list[RecipeProvider]] = {
    "go": [user_recipe, fingerprint_recipe, lambda tree, context: go_recipe(tree, context)],
    "javascript": [user_recipe, fingerprint_recipe, lambda tree, context: javascript_recipe(tree, context)],
    **{language: [user_recipe, fingerprint_recipe,
                  lambda tree, context, language=language: _language_recipe(language, tree, context)]
       for language in ("rust", "cpp", "java", "php")}}


def _language_recipe(language: str, tree: SourceTree, context: RecipeContext) -> Recipe:
    """A language whose heuristic recipe lives beside its runner (`envbuilder.runners_<language>`, which imports
    this module: hence the import at call time)."""
    runner_module = importlib.import_module(f"envbuilder.runners_{language}")
    return getattr(runner_module, f"{language}_recipe")(tree, context)


def go_recipe(tree: SourceTree, context: RecipeContext) -> Recipe:
    """Go: the toolchain and Debian's Go libraries come with the image (`tasksynth.docker.toolchains`); the tests
    run in GOPATH mode over those sources, unless go.mod requires modules Debian lacks: then in module mode, offline,
    over the modules the host fetched (`envbuilder.go_fetch`), served from the image as a file proxy."""
    from envbuilder.go_fetch import GO_MODULE_ENV, go_modules_debian_lacks
    from tasksynth.docker.toolchains import TOOLCHAIN_ENV

    lacking = go_modules_debian_lacks(tree)
    if not lacking:
        return Recipe(env_steps=["go version"], test_runner="gotest", test_command="go test -count=1",
                      env=dict(TOOLCHAIN_ENV["go"]), language="go", dependency_files=dependency_files(tree),
                      notes=["go.mod found: Go, tests by `go test -json` converted to JUnit",
                             "dependencies from Debian's golang-*-dev sources (GOPATH=/usr/share/gocode)"])
    # the install checks, without network, that the layer serves the whole module graph (its cache is thrown away)
    check_env = {**GO_MODULE_ENV, "GOMODCACHE": "/tmp/gomodcache-check", "GOFLAGS": "-mod=mod -modcacherw"}
    check = " ".join(f"{k}={shlex.quote(v)}" for k, v in check_env.items())
    return Recipe(env_steps=["go version", f"env {check} go mod download && rm -rf /tmp/gomodcache-check"],
                  test_runner="gotest", test_command="go test -count=1", env=dict(GO_MODULE_ENV), language="go",
                  dependency_files=dependency_files(tree),
                  notes=["go.mod found: Go, tests by `go test -json` converted to JUnit",
                         f"modules Debian's golang-*-dev sources lack ({', '.join(lacking)}): fetched by the host "
                         f"(go mod download), module mode over {GO_MODULE_ENV['GOPROXY']}"])


def javascript_recipe(tree: SourceTree, context: RecipeContext) -> Recipe:
    """JavaScript/TypeScript: Debian's nodejs in the image, the lock file's packages fetched by the host with the
    project's package manager (npm, yarn, pnpm) and scripts off (`envbuilder.js_package_managers`) at
    /opt/node_modules, linked into each checkout; mocha, jest or vitest with a JUnit reporter runs the tests
    (`envbuilder.runners_js`)."""
    from envbuilder.js_package_managers import detect_package_manager, root_script_steps
    from envbuilder.runners_js import javascript_tests

    manager = detect_package_manager(tree)
    tests = javascript_tests(tree)
    return Recipe(env_steps=["node --version"],
                  instance_steps=["ln -sfn /opt/node_modules /testbed/node_modules", *root_script_steps(tree)],
                  test_runner=tests.runner, test_command=tests.command, language="javascript",
                  dependency_files=dependency_files(tree),
                  notes=[f"package.json found: JavaScript; dependencies from {manager.why}", *tests.notes])


def detect_language(tree: SourceTree, declared: str | None = None) -> str:
    """The language whose recipe builds the candidate: what its source declared, unless it said Python (the
    default) of a repository that has a go.mod, package.json, Cargo.toml, CMakeLists.txt, a Maven or Gradle build
    or a composer.json / phpunit.xml, and no Python metadata."""
    files = set(tree.files)
    if declared in ("rust", "cpp") and {"pyproject.toml", "setup.py", "setup.cfg"} & files:
        return "python"  # a Python package with a native extension: its tests are Python's
    if declared and declared != "python":
        return declared
    python_metadata = {"pyproject.toml", "setup.py", "setup.cfg"} & files or any(
        f.endswith(".py") for f in files)
    if "go.mod" in files and not python_metadata:
        return "go"
    if "package.json" in files and not python_metadata:
        return "javascript"
    # Rust, C/C++, Java and PHP repositories often carry helper scripts in Python: only Python's metadata files
    # say Python
    python_package = {"pyproject.toml", "setup.py", "setup.cfg"} & files
    if "Cargo.toml" in files and not python_package:
        return "rust"
    if "CMakeLists.txt" in files and not python_package:
        return "cpp"
    if {"pom.xml", "build.gradle", "build.gradle.kts"} & files and not python_package:
        return "java"
    if {"composer.json", "phpunit.xml", "phpunit.xml.dist"} & files and not python_package:
        return "php"
    return "python"


def find_recipe(tree: SourceTree, context: RecipeContext, language: str = "python",
                providers: list[RecipeProvider] | None = None) -> Recipe:
    if language not in ("python", *LANGUAGE_PROVIDERS):
        raise UnsupportedProject(f"no recipe for {language} projects yet (known: python, "
                                 f"{', '.join(LANGUAGE_PROVIDERS)})")
    for provider in providers or LANGUAGE_PROVIDERS.get(language) or PROVIDERS:
        recipe = provider(tree, context)
        if recipe is not None:
            return recipe
    raise UnsupportedProject("no recipe provider made a recipe")


# ------------------------------------------------------------------------------------------------ python version

_CLASSIFIER = re.compile(r"Programming Language :: Python :: (\d+\.\d+)")
_PY_REQUIRES = re.compile(r"python_requires\s*=\s*['\"]([^'\"]+)['\"]")
_TOX_ENV = re.compile(r"\bpy(\d)(\d{1,2})\b")
_CI_VERSION = re.compile(r"['\"]?(3\.\d{1,2})['\"]?")


def detect_python(tree: SourceTree, available: list[str], default: str = DEFAULT_PYTHON) -> tuple[str, str]:
    """The Python version to build with, and why: the newest available version the project lists (classifiers,
    tox envs, CI matrices) within its `requires-python`; else the default when allowed; else the newest allowed."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    pyproject = _toml(tree.read("pyproject.toml"))
    setup_cfg = _ini(tree.read("setup.cfg"))
    setup_py = tree.read("setup.py") or ""
    spec_text = (pyproject.get("project", {}).get("requires-python")
                 or (setup_cfg.get("options", "python_requires", fallback=None) if setup_cfg.has_section("options")
                     else None)
                 or next(iter(_PY_REQUIRES.findall(setup_py)), None))
    try:
        spec = SpecifierSet(spec_text) if spec_text else SpecifierSet()
    except InvalidSpecifier:
        spec, spec_text = SpecifierSet(), None
    allowed = [v for v in available if spec.contains(v, prereleases=True)]
    if not allowed:
        raise UnsupportedProject(f"requires-python {spec_text!r} allows none of the available Pythons "
                                 f"({', '.join(available)})")
    listed = set(_CLASSIFIER.findall("\n".join(pyproject.get("project", {}).get("classifiers", []))))
    listed |= set(_CLASSIFIER.findall(setup_cfg.get("metadata", "classifiers", fallback="")
                                      if setup_cfg.has_section("metadata") else ""))
    listed |= set(_CLASSIFIER.findall(setup_py))
    listed |= {f"{a}.{b}" for a, b in _TOX_ENV.findall(tree.read("tox.ini") or "")}
    for path in tree.files:
        if path.startswith(".github/workflows/") and path.endswith((".yml", ".yaml")):
            for line in (tree.read(path) or "").splitlines():
                if "python-version" in line or "python:" in line:
                    listed |= set(_CI_VERSION.findall(line))
    where = f"requires-python {spec_text!r}" if spec_text else "no requires-python"
    chosen = [v for v in allowed if v in listed]
    if chosen:
        best = max(chosen, key=_version_key)
        return best, f"newest available version the project lists ({where})"
    if default in allowed:
        return default, f"the default ({where}; no listed version is available)"
    return max(allowed, key=_version_key), f"newest allowed ({where})"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


# ------------------------------------------------------------------------------------------------ metadata

def _toml(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}


def _ini(text: str | None) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    if text:
        try:
            parser.read_string(text)
        except configparser.Error:
            return configparser.ConfigParser(interpolation=None)
    return parser


def _extras(pyproject: dict[str, Any], setup_cfg: configparser.ConfigParser, setup_py: str) -> list[str]:
    extras = list(pyproject.get("project", {}).get("optional-dependencies", {}))
    extras += list(pyproject.get("tool", {}).get("poetry", {}).get("extras", {}))
    if setup_cfg.has_section("options.extras_require"):
        extras += list(setup_cfg["options.extras_require"])
    match = re.search(r"extras_require\s*=\s*\{(.*?)\}", setup_py, re.S)
    if match:
        extras += re.findall(r"['\"]([\w.-]+)['\"]\s*:", match.group(1))
    return list(dict.fromkeys(extras))


def _requirements_files(files: list[str]) -> list[str]:
    """requirements.txt and the test/dev ones; documentation requirements are left out."""
    chosen = []
    for path in sorted(files):
        name = path.rsplit("/", 1)[-1].lower()
        top = path.count("/") == 0 or path.startswith("requirements/")
        if not top or not name.endswith(".txt") or "requirements" not in name and not path.startswith("requirements/"):
            continue
        if any(word in name for word in ("doc", "lint", "release", "publish")):
            continue
        if name in ("requirements.txt",) or any(word in name for word in ("test", "dev", "ci")) \
                or path.startswith("requirements/") and "base" in name:
            chosen.append(path)
    return chosen


def _tox_deps(text: str | None) -> list[str]:
    parser = _ini(text)
    if not parser.has_section("testenv"):
        return []
    deps = []
    for line in parser.get("testenv", "deps", fallback="").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "{" in line or ":" in line.split(" ")[0] and "://" not in line:
            continue
        deps.append(line)
    return deps


# ------------------------------------------------------------------------------------------------ requirements

# Options of `pip install` that take a value (their value is not a requirement).
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-t", "--target",
                      "--config-settings", "-C", "-i", "--index-url", "--extra-index-url", "-f", "--find-links",
                      "--prefix", "--root", "--src", "--upgrade-strategy", "--python-version", "--platform",
                      "--implementation", "--abi", "--only-binary", "--no-binary", "--progress-bar"}


def recipe_requirements(recipe: Recipe, read: Callable[[str], str | None]) -> list[str]:
    """The requirements a recipe's `pip install` steps name, as far as they can be read without running
    anything: plain requirements, requirements files (and the files they include), and the static
    dependencies of a local project installed with its extras ([project] in pyproject.toml). The offline
    build fetches these first; whatever else an install asks for (setup.py's install_requires, markers for
    another interpreter) it reports missing, and is fetched then. `read` gives a file of the checkout."""
    found: list[str] = []
    for step in recipe.env_steps + recipe.instance_steps:
        for command in re.split(r"&&|;|\|\|", step):
            try:
                words = shlex.split(command)
            except ValueError:
                continue
            if "pip" not in " ".join(words[:3]) or "install" not in words:
                continue
            args = words[words.index("install") + 1:]
            found += _pip_arguments(args, read)
    return list(dict.fromkeys(found))


def _pip_arguments(args: list[str], read: Callable[[str], str | None]) -> list[str]:
    found: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        value = args[index + 1] if index + 1 < len(args) else ""
        if word in ("-r", "--requirement"):
            found += _requirements_file(value, read, depth=0)
        elif word in ("-e", "--editable"):
            found += _local_project(value, read)
        if word in _PIP_VALUE_OPTIONS:
            index += 2
            continue
        if word.startswith("-"):
            index += 1
            continue
        if word.startswith((".", "/")):
            found += _local_project(word, read)
        elif _is_requirement(word):
            found.append(word)
        index += 1
    return found


def _requirements_file(path: str, read: Callable[[str], str | None], depth: int) -> list[str]:
    if depth > 5:
        return []
    found: list[str] = []
    folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    for line in (read(path.lstrip("./") if path.startswith("./") else path) or "").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] in ("-r", "--requirement") and len(words) > 1:
            found += _requirements_file(folder + words[1], read, depth + 1)
        elif not line.startswith("-") and _is_requirement(line):
            found.append(line)
    return found


def _local_project(target: str, read: Callable[[str], str | None]) -> list[str]:
    """The static dependencies (and requested extras) of the project at `target` (`.` or `.[test]`)."""
    path, _, extras = target.partition("[")
    if path.strip("./"):
        return []  # another folder: its metadata is read when it is built
    wanted = [e.strip() for e in extras.rstrip("]").split(",") if e.strip()]
    project = _toml(read("pyproject.toml")).get("project", {})
    found = list(project.get("dependencies", []))
    for extra in wanted:
        found += project.get("optional-dependencies", {}).get(extra, [])
    return [r for r in found if _is_requirement(r)]


def _is_requirement(text: str) -> bool:
    from packaging.requirements import InvalidRequirement, Requirement

    if "://" in text or text.startswith(("git+", "file:")):
        return False
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return False
    return requirement.url is None

"""JavaScript package managers: npm, yarn (classic, v1) and pnpm, told apart by the lock file, and the trusted
host-side fetch of a project's dependencies with each, no code of the project or of a dependency run.

Which manager: `pnpm-lock.yaml` -> pnpm, `yarn.lock` -> yarn, `package-lock.json` -> npm (npm keeps its own
fetcher, `envbuilder.npm_fetch`). The manager's version is the one `package.json`'s `packageManager` field names
(`pnpm@8.15.4`), else the newest release that writes the lock file's format (pnpm by `lockfileVersion`, yarn v1 by
its `# yarn lockfile v1` header). yarn berry (v2+, a `__metadata` lock) and workspaces (monorepos) are reported
as unsupported, not guessed at.

The managers themselves come from the npm registry: `npm install --ignore-scripts` of the pinned version into
`<home>/js-tools/<name>-<version>` (once). The fetch copies only `package.json` and the lock file of the commit to
a scratch folder and runs the manager there with the lock file frozen and scripts off (`yarn install
--frozen-lockfile --ignore-scripts`, `pnpm install --frozen-lockfile --ignore-scripts`); the registry is the
manager's own configuration, or `code.npm_registry`. The result is kept at `<home>/npm/<hash of manager, version,
package.json and lock file>/node_modules` (a cache keyed by the lock file) and copied into the environment's image
by a build without network (`tasksynth.docker.toolchains.node_modules_image`).

A JUnit reporter the project does not depend on itself (jest-junit, mocha-junit-reporter) is installed, pinned,
into `<home>/js-tools/reporters-<hash>` and copied into the same layer at `/opt/js-reporters`, never into the
repository. Dependencies that have lifecycle scripts (`preinstall`, `install`, `postinstall`; esbuild's binary
check is the common one) are listed after the fetch: their scripts become steps of the environment layer, which
run in the sandbox without network (the repository's own `preinstall`/`install`/`postinstall` too, in the
instance layer, where its checkout is); a native addon that needs compiling (`binding.gyp`, node-gyp) cannot be
built there (no compiler in the image) and makes the project unsupported, saying which package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from envbuilder.errors import UnsupportedProject
from envbuilder.repos import SourceTree
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import Config
from tasksynth.hashing import content_hash

if TYPE_CHECKING:
    from envbuilder.recipes import Recipe

NODE_MODULES_MOUNT = "/opt/node_modules"  # where the layer puts the project's node_modules
REPORTERS_MOUNT = "/opt/js-reporters"  # where the layer puts the reporters the project lacks
LOCK_FILES = {"pnpm": "pnpm-lock.yaml", "yarn": "yarn.lock", "npm": "package-lock.json"}
# The release of each manager that writes a lock file format (pnpm: lockfileVersion; yarn: classic's v1).
PNPM_FOR_LOCKFILE = {"9": "9.15.9", "6": "8.15.9", "5": "7.33.7"}
YARN_CLASSIC = "1.22.22"
# Reporters added when the project does not have them, pinned (their own dependencies resolve at the pin's time).
REPORTER_PINS = {"jest-junit": "16.0.0", "mocha-junit-reporter": "2.2.1"}
LIFECYCLE_SCRIPTS = ("preinstall", "install", "postinstall")
FETCH_TIMEOUT_S = 900
_YARN_V1_HEADER = re.compile(r"^# yarn lockfile v1\s*$", re.M)
_PNPM_LOCKFILE_VERSION = re.compile(r"""^lockfileVersion:\s*['"]?(\d+)(?:\.\d+)?['"]?\s*$""", re.M)
_EXACT_VERSION = re.compile(r"^(\d+)\.\d+\.\d+$")
_YARN_DEFAULT_REGISTRY = re.compile(r'^(\s+resolved )"https://registry\.(?:yarnpkg\.com|npmjs\.org)/', re.M)


@dataclass(frozen=True)
class PackageManager:
    name: str  # npm | yarn | pnpm
    version: str  # the manager's version used to fetch ("" for npm: the host's own)
    lock_file: str
    why: str  # how it was chosen, for the recipe's notes


@dataclass
class FetchedDependencies:
    node_modules: Path
    key: str  # the cache key (manager, version, package.json, lock file)
    manager: PackageManager
    reporters: Path | None = None  # a node_modules of the reporters the project lacks
    install_scripts: list[str] = field(default_factory=list)  # steps running the dependencies' lifecycle scripts


def detect_package_manager(tree: SourceTree) -> PackageManager:
    """The manager whose lock file the commit has (pnpm, yarn, npm, in that order when several are there)."""
    package = _package_json(tree)
    if package.get("workspaces") or tree.read("pnpm-workspace.yaml") is not None:
        raise UnsupportedProject("a JavaScript workspace (monorepo: `workspaces` in package.json or "
                                 "pnpm-workspace.yaml) is not supported yet")
    declared_name, _, declared_version = str(package.get("packageManager") or "").partition("@")
    declared_version = declared_version.split("+", 1)[0]
    pnpm_lock, yarn_lock = tree.read(LOCK_FILES["pnpm"]), tree.read(LOCK_FILES["yarn"])
    if pnpm_lock is not None:
        match = _PNPM_LOCKFILE_VERSION.search(pnpm_lock)
        major = match.group(1) if match else None
        if declared_name == "pnpm" and _EXACT_VERSION.match(declared_version):
            return PackageManager("pnpm", declared_version, LOCK_FILES["pnpm"],
                                  f"pnpm-lock.yaml: pnpm {declared_version} (package.json's packageManager)")
        if major not in PNPM_FOR_LOCKFILE:
            raise UnsupportedProject(f"pnpm-lock.yaml with lockfileVersion {major or 'missing'}: no pnpm release "
                                     f"known for it (known: {', '.join(sorted(PNPM_FOR_LOCKFILE))})")
        version = PNPM_FOR_LOCKFILE[major]
        return PackageManager("pnpm", version, LOCK_FILES["pnpm"],
                              f"pnpm-lock.yaml (lockfileVersion {major}): pnpm {version}")
    if yarn_lock is not None:
        declared_major = _EXACT_VERSION.match(declared_version) if declared_name == "yarn" else None
        if not _YARN_V1_HEADER.search(yarn_lock) or (declared_major and declared_major.group(1) != "1"):
            raise UnsupportedProject("yarn berry (v2+: yarn.lock without the `# yarn lockfile v1` header, or "
                                     "packageManager yarn@2+) is not supported yet; yarn classic (v1) is")
        version = declared_version if declared_major else YARN_CLASSIC
        return PackageManager("yarn", version, LOCK_FILES["yarn"], f"yarn.lock (v1): yarn {version}")
    if tree.read(LOCK_FILES["npm"]) is not None:
        return PackageManager("npm", "", LOCK_FILES["npm"], "package-lock.json: npm ci")
    raise UnsupportedProject("a JavaScript project without package-lock.json, yarn.lock or pnpm-lock.yaml: its "
                             "dependencies cannot be installed reproducibly without a lock file")


def fetch_dependencies(config: Config, tree: SourceTree, reporters: Sequence[str] = ()) -> FetchedDependencies:
    """The commit's dependencies installed by its package manager on the host with scripts off (once per lock
    file), the missing `reporters` beside them, and the lifecycle scripts the sandbox must run."""
    manager = detect_package_manager(tree)
    if manager.name == "npm":
        from envbuilder.npm_fetch import fetch_node_modules

        node_modules, key = fetch_node_modules(config, tree)
    else:
        node_modules, key = _fetch_with(config, tree, manager)
    return FetchedDependencies(node_modules, key, manager,
                               reporters=fetch_reporters(config, reporters) if reporters else None,
                               install_scripts=install_script_steps(node_modules))


def manager_command(config: Config, manager: PackageManager) -> list[str]:
    """The command line that runs `manager` (downloaded from the npm registry once, with no script of it run)."""
    entry = {"yarn": "yarn/bin/yarn.js", "pnpm": "pnpm/bin/pnpm.cjs"}[manager.name]
    folder = _npm_install(config, f"{manager.name}-{manager.version}", [f"{manager.name}@{manager.version}"])
    return ["node", str(folder / "node_modules" / entry)]


def fetch_reporters(config: Config, names: Sequence[str]) -> Path:
    """A node_modules holding the pinned `names` (jest-junit, mocha-junit-reporter) and what they need."""
    unknown = sorted(set(names) - set(REPORTER_PINS))
    if unknown:
        raise DependencyUnavailable(", ".join(unknown), "no pinned version of this JUnit reporter is known")
    specs = sorted(f"{name}@{REPORTER_PINS[name]}" for name in set(names))
    return _npm_install(config, f"reporters-{content_hash(*specs, length=12)}", specs) / "node_modules"


def install_script_steps(node_modules: Path) -> list[str]:
    """Shell steps that run, in the sandbox, the lifecycle scripts of every installed package that has some
    (in the order npm runs them); UnsupportedProject for a native addon that needs node-gyp."""
    steps, native = [], []
    for package_dir in _installed_packages(node_modules):
        try:
            manifest = json.loads((package_dir / "package.json").read_text())
        except (OSError, ValueError):
            continue
        scripts = manifest.get("scripts") if isinstance(manifest.get("scripts"), dict) else {}
        has_gyp = (package_dir / "binding.gyp").is_file()
        if has_gyp and not (scripts.get("install") or scripts.get("preinstall")):
            native.append(str(manifest.get("name") or package_dir.name))
            continue
        if any("node-gyp" in str(scripts.get(s) or "") for s in LIFECYCLE_SCRIPTS):
            native.append(str(manifest.get("name") or package_dir.name))
            continue
        inside = f"{NODE_MODULES_MOUNT}/{package_dir.relative_to(node_modules).as_posix()}"
        for script in LIFECYCLE_SCRIPTS:
            if scripts.get(script):
                steps.append(f"(cd {shlex.quote(inside)} && PATH={NODE_MODULES_MOUNT}/.bin:$PATH "
                             f"npm_lifecycle_event={script} sh -c {shlex.quote(str(scripts[script]))})")
    if native:
        raise UnsupportedProject(f"dependencies with native addons that need compiling (node-gyp), which the "
                                 f"JavaScript image cannot build: {', '.join(sorted(set(native)))}")
    return steps


def root_script_steps(tree: SourceTree) -> list[str]:
    """The repository's own install lifecycle scripts (`preinstall`, `install`, `postinstall`, what npm runs
    after installing; `prepare`, a build step, is left out) as steps of the instance layer, which run in the
    sandbox without network in the checkout, dependencies linked at node_modules."""
    scripts = _package_json(tree).get("scripts")
    scripts = scripts if isinstance(scripts, dict) else {}
    return [f"PATH=/testbed/node_modules/.bin:$PATH npm_lifecycle_event={name} sh -c {shlex.quote(str(scripts[name]))}"
            for name in LIFECYCLE_SCRIPTS if scripts.get(name)]


def _installed_packages(node_modules: Path) -> list[Path]:
    """Every package folder under node_modules (nested ones and pnpm's .pnpm store included), links not followed,
    each real folder once, sorted."""
    found: dict[Path, Path] = {}
    for root, dirs, files in os.walk(node_modules):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if d != ".bin" and not (here / d).is_symlink())
        parent = here.parent
        in_node_modules = parent.name == "node_modules" or (parent.name.startswith("@")
                                                            and parent.parent.name == "node_modules")
        if "package.json" in files and in_node_modules and not here.name.startswith("."):
            found.setdefault(here.resolve(), here)
    return sorted(found.values())


def _fetch_with(config: Config, tree: SourceTree, manager: PackageManager) -> tuple[Path, str]:
    package, lock = tree.read("package.json"), tree.read(manager.lock_file)
    key = content_hash(manager.name, manager.version, package, lock, length=16)
    folder = config.home_path / "npm" / key
    if (folder / "node_modules").is_dir():
        return folder / "node_modules", key
    command = manager_command(config, manager)
    registry = config.code.npm_registry
    env = {**os.environ, "CI": "true", **({"npm_config_registry": registry} if registry else {})}
    if manager.name == "yarn":
        command += ["install", "--frozen-lockfile", "--ignore-scripts", "--ignore-engines", "--non-interactive",
                    "--no-progress", "--silent"]
    else:
        command += ["install", "--frozen-lockfile", "--ignore-scripts", "--reporter=append-only",
                    "--config.manage-package-manager-versions=false", "--config.confirmModulesPurge=false",
                    *([f"--registry={registry}"] if registry else [])]
    folder.parent.mkdir(parents=True, exist_ok=True)
    if manager.name == "yarn" and registry:
        # yarn v1 downloads from the URLs its lock file names, whatever the configured registry; the integrity
        # hashes beside them still check what the mirror serves
        lock = _YARN_DEFAULT_REGISTRY.sub(lambda m: f'{m.group(1)}"{registry.rstrip("/")}/', lock or "")
        command.append(f"--registry={registry}")
    with tempfile.TemporaryDirectory(prefix=f"tasksynth-{manager.name}-", dir=folder.parent) as tmp:
        work = Path(tmp)
        (work / "package.json").write_text(package or "")
        (work / manager.lock_file).write_text(lock or "")
        try:
            result = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env,
                                    timeout=FETCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DependencyUnavailable(f"{manager.name} packages of {manager.lock_file}",
                                        f"{manager.name} install took longer than {FETCH_TIMEOUT_S}s") from None
        if result.returncode != 0 or not (work / "node_modules").is_dir():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
            raise DependencyUnavailable(f"{manager.name} packages of {manager.lock_file}",
                                        f"{manager.name} install --frozen-lockfile failed:\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)
        (work / "node_modules").rename(folder.with_suffix(".partial"))
    folder.mkdir(exist_ok=True)
    folder.with_suffix(".partial").rename(folder / "node_modules")
    return folder / "node_modules", key


def _npm_install(config: Config, name: str, specs: list[str]) -> Path:
    """`<home>/js-tools/<name>` holding `specs` installed by the host's npm with scripts off (once)."""
    folder = config.home_path / "js-tools" / name
    if (folder / "node_modules").is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    registry = config.code.npm_registry
    with tempfile.TemporaryDirectory(prefix="tasksynth-js-tools-", dir=folder.parent) as tmp:
        command = ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--save-exact",
                   "--loglevel=error", "--prefix", tmp, *([f"--registry={registry}"] if registry else []), *specs]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
        except FileNotFoundError:
            raise DependencyUnavailable(" ".join(specs), "npm is not installed on this host") from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
            raise DependencyUnavailable(" ".join(specs), f"npm install failed:\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)
        Path(tmp).rename(folder)
        Path(tmp).mkdir()  # the context manager removes it again
    return folder


def _package_json(tree: SourceTree) -> dict:
    text = tree.read("package.json")
    if text is None:
        raise UnsupportedProject("a JavaScript project without package.json")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UnsupportedProject(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UnsupportedProject("package.json is not a JSON object")
    return data


def javascript_image(config: Config, tree: SourceTree, recipe: Recipe, toolchain_tag: str) -> tuple[str, Recipe]:
    """(the image holding the commit's dependencies and the reporters `recipe`'s test command names, the recipe
    with the dependencies' lifecycle scripts as its first environment steps) for a JavaScript recipe."""
    from envbuilder.images import UID  # images -> recipes -> this module: imported when used
    from tasksynth.docker.toolchains import node_modules_image

    reporters = [name for name in REPORTER_PINS if f"{REPORTERS_MOUNT}/node_modules/{name}" in recipe.test_command]
    fetched = fetch_dependencies(config, tree, reporters)
    steps = [step for step in fetched.install_scripts if step not in recipe.env_steps]
    # the sandboxed user owns the dependencies: lifecycle scripts (theirs, the repository's: patch-package) write
    # there while the layers are built; a validation's root file system is read-only
    tag = node_modules_image(config, toolchain_tag, fetched.node_modules, fetched.key, reporters=fetched.reporters,
                             owner=f"{UID}:{UID}")
    if steps:
        recipe = dataclasses.replace(recipe, env_steps=[*steps, *recipe.env_steps], notes=[
            *recipe.notes, f"{len(steps)} lifecycle scripts of dependencies run in the sandbox, without network"])
    return tag, recipe

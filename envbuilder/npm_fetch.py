"""The trusted npm fetcher: a JavaScript project's dependencies, downloaded on the host, no code of theirs run.

Only `package.json` and `package-lock.json` of the commit are copied to a scratch folder, and
`npm ci --ignore-scripts` installs exactly the lock file's versions there (no lifecycle script of the project
or of any dependency runs; the registry is npm's own configuration, or `code.npm_registry`). The result is kept
at `<home>/npm/<hash of both files>/node_modules` and copied into the environment's image by a build without
network (`tasksynth.docker.toolchains.node_modules_image`); tests then run offline in the sandbox.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from envbuilder.errors import UnsupportedProject
from envbuilder.repos import SourceTree
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import Config
from tasksynth.hashing import content_hash


def fetch_node_modules(config: Config, tree: SourceTree) -> tuple[Path, str]:
    """(the node_modules folder, its key) for the commit's lock file, downloaded once per lock file."""
    package, lock = tree.read("package.json"), tree.read("package-lock.json")
    if package is None or lock is None:
        raise UnsupportedProject("a JavaScript project without package-lock.json: its dependencies cannot be "
                                 "installed reproducibly (npm ci needs the lock file)")
    key = content_hash("npm", package, lock, length=16)
    folder = config.home_path / "npm" / key
    if (folder / "node_modules").is_dir():
        return folder / "node_modules", key
    folder.parent.mkdir(parents=True, exist_ok=True)
    registry = config.code.npm_registry
    with tempfile.TemporaryDirectory(prefix="tasksynth-npm-", dir=folder.parent) as tmp:
        work = Path(tmp)
        (work / "package.json").write_text(package)
        (work / "package-lock.json").write_text(lock)
        command = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error",
                   *([f"--registry={registry}"] if registry else [])]
        try:
            result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=900)
        except FileNotFoundError:
            raise DependencyUnavailable("npm packages", "npm is not installed on this host") from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
            raise DependencyUnavailable("npm packages of package-lock.json", f"npm ci failed:\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)
        (work / "node_modules").rename(folder.with_suffix(".partial"))
    folder.mkdir(exist_ok=True)
    folder.with_suffix(".partial").rename(folder / "node_modules")
    return folder / "node_modules", key

"""The trusted Composer fetcher: a PHP project's dependencies, downloaded on the host, no code of theirs run.

Only composer.json (and composer.lock when the commit has one) are copied to a scratch folder, and
`composer install --no-scripts --no-plugins` installs there: no script of the project or of a package, no
Composer plugin, runs; platform requirements are not checked against the host (the image's PHP runs the tests).
Packages come from the configured `code.composer_repository` (Packagist's URL or a mirror), which replaces
packagist.org in a Composer home of the fetch's own (no user configuration, no credentials). The vendor folder
is kept at `<home>/composer/<hash of both files and the URL>/vendor`; the PHP autoloader of the recipe
(`envbuilder.runners_php.AUTOLOADER`) loads `/opt/vendor/autoload.php` first when an image carries one.

With `code.composer_repository` empty nothing is fetched: Debian's `php-*` packages under /usr/share/php are the
only source, which is how these machines work (Packagist is not reachable from them). A fetch that fails names
the repository and Composer's own message (`DependencyUnavailable`, the candidate's `install_failed`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from envbuilder.errors import UnsupportedProject
from envbuilder.repos import SourceTree
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import Config
from tasksynth.hashing import content_hash

VENDOR_PATH = "/opt/vendor"  # where an image carries a fetched vendor folder; the recipe's autoloader loads it


def composer_home_config(repository_url: str) -> dict:
    """Composer's global config.json: the given repository in place of packagist.org, nothing interactive."""
    return {"config": {"secure-http": repository_url.startswith("https://"), "allow-plugins": False},
            "repositories": {"packagist.org": {"type": "composer", "url": repository_url}}}


def fetch_vendor(config: Config, tree: SourceTree, repository_url: str, *, timeout_s: float = 900) -> tuple[Path, str]:
    """(the vendor folder, its key) for the commit's composer.json/composer.lock, installed once per pair and
    repository URL. Raises UnsupportedProject (no composer.json) or DependencyUnavailable."""
    manifest, lock = tree.read("composer.json"), tree.read("composer.lock")
    if manifest is None:
        raise UnsupportedProject("no composer.json: the project's PHP dependencies are not declared")
    key = content_hash("composer", manifest, lock, repository_url, length=16)
    folder = config.home_path / "composer" / key
    if (folder / "vendor").is_dir():
        return folder / "vendor", key
    composer = shutil.which("composer")
    if composer is None:
        raise DependencyUnavailable("Composer packages of composer.json",
                                    "composer is not installed on this host (Debian: apt-get install composer)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tasksynth-composer-", dir=folder.parent) as tmp:
        work = Path(tmp)
        (work / "project").mkdir()
        (work / "project" / "composer.json").write_text(manifest)
        if lock is not None:
            (work / "project" / "composer.lock").write_text(lock)
        (work / "home").mkdir()
        (work / "home" / "config.json").write_text(json.dumps(composer_home_config(repository_url)))
        command = [composer, "install", "--no-scripts", "--no-plugins", "--no-interaction", "--no-progress",
                   "--ignore-platform-reqs", "--prefer-dist"]
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(work), "COMPOSER_HOME": str(work / "home"),
                       "COMPOSER_CACHE_DIR": str(work / "cache"), "COMPOSER_DISABLE_NETWORK": "0",
                       "COMPOSER_NO_INTERACTION": "1"}
        try:
            result = subprocess.run(command, cwd=work / "project", capture_output=True, text=True,
                                    timeout=timeout_s, env=environment)
        except subprocess.TimeoutExpired:
            raise DependencyUnavailable("Composer packages of composer.json",
                                        f"{repository_url} did not answer within {timeout_s:.0f} s") from None
        if result.returncode != 0:
            # Composer boxes its error in lines padded by two spaces, wrapped, between its notices and the
            # command's usage: the box's words joined back into one line
            lines = (result.stdout + result.stderr).splitlines()
            boxed = [line.strip() for line in lines if line.startswith("  ") and line.strip()]
            tail = " ".join(boxed)[-600:] or "\n".join(line for line in lines if line.strip())[-600:]
            raise DependencyUnavailable("Composer packages of composer.json",
                                        f"composer install from {repository_url} failed:\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (work / "project" / "vendor").rename(folder / "vendor")
    return folder / "vendor", key


def with_fetched_vendor(config: Config, tree: SourceTree, toolchain_tag: str) -> str:
    """The PHP toolchain image with the project's fetched vendor folder at /opt/vendor when
    `code.composer_repository` names a repository; unchanged otherwise."""
    if not config.code.composer_repository:
        return toolchain_tag
    from tasksynth.docker.toolchains import dependencies_image

    vendor, key = fetch_vendor(config, tree, config.code.composer_repository)
    return dependencies_image(config, toolchain_tag, vendor, VENDOR_PATH, key, "php")

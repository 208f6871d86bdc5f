"""Debian dictionaries as a corpus: `apt-get install` the packages at run time (we never ship their text),
then read the dictd databases they put under /usr/share/dictd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from search_synth.corpus.model import CorpusError
from search_synth.corpus.sources import Chained, DictdSource

DICTD_DIR = Path("/usr/share/dictd")


def package_indexes(package: str) -> list[Path]:
    """The dictd `.index` files an installed package owns (empty when it is not installed)."""
    listing = Path(f"/var/lib/dpkg/info/{package}.list")
    if not listing.exists():
        listing = next(Path("/var/lib/dpkg/info").glob(f"{package}:*.list"), listing)
    if not listing.exists():
        return []
    return sorted(Path(line) for line in listing.read_text().splitlines()
                  if line.endswith(".index") and Path(line).parent == DICTD_DIR and Path(line).exists())


def install_packages(packages: list[str]) -> None:
    missing = [p for p in packages if not package_indexes(p)]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise CorpusError(f"installing {' '.join(missing)} needs apt-get (a Debian or Ubuntu system)")
    if os.geteuid() != 0:
        raise CorpusError(f"installing {' '.join(missing)} needs root: run `sudo apt-get install "
                          f"{' '.join(missing)}` first, then rerun")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:  # a stale package list is the usual cause: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env,
                                capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CorpusError(f"apt-get install {' '.join(missing)} failed: {tail[0]}")


def debian_source(packages: list[str], *, install: bool = True) -> Chained:
    """A source over every dictd database of the given Debian packages, installing them first if needed."""
    if install:
        install_packages(packages)
    parts = []
    for package in packages:
        indexes = package_indexes(package)
        if not indexes:
            raise CorpusError(f"Debian package {package!r} holds no dictd database under {DICTD_DIR} "
                              "(dictd packages are named dict-*, e.g. dict-gcide, dict-jargon, dict-foldoc)")
        parts.extend(DictdSource(index) for index in indexes)
    return DebianSource(parts, packages)


class DebianSource(Chained):
    def __init__(self, parts, packages):
        super().__init__(parts)
        self.packages = list(packages)

    def describe(self) -> str:
        return f"debian:{','.join(self.packages)} ({super().describe()})"

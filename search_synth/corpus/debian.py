"""Debian dictionaries as a corpus: `apt-get install` the packages at run time (we never ship their text),
then read the dictd databases they put under /usr/share/dictd (dict-gcide, dict-jargon, dict-foldoc, ...) or
WordNet's own database (wordnet-base)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from search_synth.corpus.model import CorpusError
from search_synth.corpus.sources import Chained, DictdSource
from search_synth.corpus.wordnet import WordNetSource

DICTD_DIR = Path("/usr/share/dictd")


def _package_files(package: str) -> list[Path]:
    """The files an installed package owns, from dpkg's list (empty when it is not installed)."""
    listing = Path(f"/var/lib/dpkg/info/{package}.list")
    if not listing.exists():
        listing = next(Path("/var/lib/dpkg/info").glob(f"{package}:*.list"), listing)
    return [Path(line) for line in listing.read_text().splitlines()] if listing.exists() else []


def package_indexes(package: str) -> list[Path]:
    """The dictd `.index` files an installed package owns."""
    return sorted(p for p in _package_files(package)
                  if p.name.endswith(".index") and p.parent == DICTD_DIR and p.exists())


def install_packages(packages: list[str]) -> None:
    missing = [p for p in packages if not package_sources(p)]
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
        found = package_sources(package)
        if not found:
            raise CorpusError(f"Debian package {package!r} holds no dictd database under {DICTD_DIR} and no WordNet "
                              "database (dictd packages are named dict-*, e.g. dict-gcide, dict-jargon, dict-foldoc; "
                              "WordNet is wordnet-base)")
        parts.extend(found)
    return DebianSource(parts, packages)


def package_sources(package: str) -> list:
    """The sources an installed package provides: its dictd databases, or WordNet's database files."""
    found = [DictdSource(index) for index in package_indexes(package)]
    for path in _package_files(package):
        if path.name == "data.noun" and path.exists():
            found.append(WordNetSource(path.parent))
    return found


class DebianSource(Chained):
    def __init__(self, parts, packages):
        super().__init__(parts)
        self.packages = list(packages)

    def describe(self) -> str:
        return f"debian:{','.join(self.packages)} ({super().describe()})"

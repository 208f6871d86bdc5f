"""Sample repositories shipped as data (`data/samples/<name>.toml`) and built into real git repositories.

A sample is a list of commits, each writing whole files and deleting others. `build_repo` commits them with a
fixed author and fixed dates (one hour apart from the sample's `start_date`), so every build on every machine
gives the same SHAs. The benchmark builds its own sample (20 candidate commits) with the same function.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from envbuilder.errors import SourceError
from envbuilder.repos import FIXED_IDENTITY, git

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"


@dataclass
class SampleCommit:
    message: str
    files: dict[str, str] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    expect: str = ""  # what the pipeline should make of it: valid | <reason> | discard:<reason>


@dataclass
class Sample:
    name: str
    repo: str  # owner/name, as SWE-bench files name it
    commits: list[SampleCommit]
    start_date: str = "2024-01-01T09:00:00+00:00"


@dataclass
class BuiltSample:
    path: Path
    repo: str
    shas: list[str]  # one per commit, in order
    expected: dict[str, str]  # head sha -> expect

    @property
    def head(self) -> str:
        return self.shas[-1]


def load_sample(name: str, samples_dir: Path = SAMPLES_DIR) -> Sample:
    path = samples_dir / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in samples_dir.glob("*.toml"))) or "none"
        raise SourceError(f"no sample named {name!r} in {samples_dir} (known: {known})")
    data = tomllib.loads(path.read_text())
    commits = [SampleCommit(c["message"], dict(c.get("files", {})), list(c.get("delete", [])), c.get("expect", ""))
               for c in data["commit"]]
    return Sample(data.get("name", name), data.get("repo", f"tasksynth/{name}"), commits,
                  data.get("start_date", Sample.start_date))


def sample_repo_path(sample: Sample, repos_dir: Path) -> Path:
    """Where a sample lives under a repos directory: `owner/name`, as `--repos-dir` lookups expect."""
    return repos_dir / sample.repo


def build_sample(name: str, repos_dir: Path) -> BuiltSample:
    sample = load_sample(name)
    return build_repo(sample, sample_repo_path(sample, repos_dir))


def build_repo(sample: Sample, dest: Path) -> BuiltSample:
    """Commit the sample's history into a fresh repository at `dest` (replacing what was there)."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    git(dest, "init", "--quiet")
    start = dt.datetime.fromisoformat(sample.start_date)
    shas: list[str] = []
    expected: dict[str, str] = {}
    for index, commit in enumerate(sample.commits):
        for path, text in commit.files.items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            os.chmod(target, 0o644)
        for path in commit.delete:
            (dest / path).unlink(missing_ok=True)
        date = (start + dt.timedelta(hours=index)).isoformat()
        git(dest, "add", "--all")
        git(dest, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", commit.message,
            env={**FIXED_IDENTITY, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
        sha = git(dest, "rev-parse", "HEAD").strip()
        shas.append(sha)
        expected[sha] = commit.expect
    return BuiltSample(dest, sample.repo, shas, expected)


def swebench_sample_path(name: str = "minicalc") -> Path:
    return SAMPLES_DIR / f"{name}.swebench.jsonl"

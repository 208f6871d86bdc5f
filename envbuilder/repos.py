"""Local git repositories: where a candidate's repository lives, and reading trees at a commit.

Everything goes through the `git` CLI, so each operation can be replayed by hand. A repository is a local
path (a working copy or a bare mirror); a URL is cloned once into `<home>/repos/` when it is reachable.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from envbuilder.errors import SourceError

GIT_TIMEOUT_S = 300
# A fixed identity and clock for commits we make ourselves (samples, /testbed snapshots), so SHAs are stable.
FIXED_IDENTITY = {"GIT_AUTHOR_NAME": "tasksynth", "GIT_AUTHOR_EMAIL": "tasksynth@localhost",
                  "GIT_COMMITTER_NAME": "tasksynth", "GIT_COMMITTER_EMAIL": "tasksynth@localhost"}
GIT_CONFIG = ["-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", "-c", "init.defaultBranch=main",
              "-c", "core.quotepath=off", "-c", "advice.detachedHead=false"]
# How a candidate's patch is written: plain text, every path as it is (no rename detection), full blob ids.
DIFF_OPTIONS = ["--no-color", "--no-ext-diff", "--no-renames", "--full-index"]
_URL = re.compile(r"^(https?|ssh|git)://|^[\w.-]+@[\w.-]+:")


def git(repo: str | Path | None, *args: str, input: bytes | str | None = None, env: dict[str, str] | None = None,
        timeout: float = GIT_TIMEOUT_S, binary: bool = False) -> str | bytes:
    """Run git in `repo`; a failure is a `SourceError` with git's own message."""
    command = ["git", *GIT_CONFIG, *(["-C", str(repo)] if repo else []), *args]
    try:
        result = subprocess.run(command, input=input.encode() if isinstance(input, str) else input,
                                capture_output=True, timeout=timeout,
                                env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})})
    except subprocess.TimeoutExpired:
        raise SourceError(f"git {args[0]} took longer than {timeout:.0f}s in {repo}") from None
    except FileNotFoundError:
        raise SourceError("git is not installed") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise SourceError(f"git {' '.join(args[:2])} failed in {repo}: {message[-1] if message else 'no output'}")
    return result.stdout if binary else result.stdout.decode(errors="replace")


def is_url(target: str) -> bool:
    return bool(_URL.match(target))


def repo_name(target: str) -> str:
    """owner/name for a URL, the directory name for a path (without `.git`)."""
    text = target.rstrip("/")
    text = text[:-4] if text.endswith(".git") else text
    if is_url(text):
        parts = re.split(r"[/:]", text)
        return "/".join(p for p in parts[-2:] if p)
    return Path(text).name


def open_repository(target: str, home: Path, *, clone: bool = True) -> Path:
    """The local git directory for a path or URL; a URL is cloned (once) under `<home>/repos/`."""
    if not is_url(target):
        path = Path(target).expanduser().resolve()
        if not path.exists():
            raise SourceError(f"no repository at {path}")
        try:
            git(path, "rev-parse", "--git-dir")
        except SourceError:
            raise SourceError(f"{path} is not a git repository") from None
        return path
    mirror = home / "repos" / (repo_name(target).replace("/", "__") + ".git")
    if mirror.exists():
        return mirror
    if not clone:
        raise SourceError(f"no local mirror of {target} and cloning is off")
    mirror.parent.mkdir(parents=True, exist_ok=True)
    git(None, "clone", "--quiet", "--mirror", target, str(mirror), timeout=1800)
    return mirror


def find_mirror(repo: str, repos_dir: Path | None) -> Path | None:
    """A repository `owner/name` under `repos_dir`, as `owner__name`, `owner/name` or either with `.git`."""
    if not repos_dir:
        return None
    for name in (repo.replace("/", "__"), repo):
        for candidate in (repos_dir / name, repos_dir / f"{name}.git"):
            if candidate.is_dir():
                return candidate.resolve()
    return None


def has_commit(repo: Path, sha: str) -> bool:
    try:
        git(repo, "cat-file", "-e", f"{sha}^{{commit}}")
    except SourceError:
        return False
    return True


def list_files(repo: Path, commit: str) -> list[str]:
    return [line for line in git(repo, "ls-tree", "-r", "--name-only", "-z", commit).split("\0") if line]


def read_file(repo: Path, commit: str, path: str) -> str | None:
    try:
        return git(repo, "show", f"{commit}:{path}")
    except SourceError:
        return None


def export_tree(repo: Path, commit: str, dest: Path) -> None:
    """The tree of `commit` as plain files under `dest` (no .git), like `git archive | tar -x`."""
    data = git(repo, "archive", "--format=tar", commit, binary=True, timeout=1800)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(dest, filter="tar")


def snapshot(dest: Path, message: str, *, date: str = "2020-01-01T00:00:00+00:00") -> str:
    """Make `dest` a one-commit repository of its current files; returns the commit sha. An agent working in
    the instance sees the base commit's files and no history, so it cannot find the fix in a later commit."""
    env = {**FIXED_IDENTITY, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    git(dest, "init", "--quiet")
    git(dest, "add", "--all", "--force")
    git(dest, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", message, env=env)
    return git(dest, "rev-parse", "HEAD").strip()


class SourceTree:
    """The files of a repository at one commit, read lazily through git (nothing is checked out)."""

    def __init__(self, repo: Path, commit: str):
        self.repo, self.commit = Path(repo), commit
        self._files: list[str] | None = None
        self._texts: dict[str, str | None] = {}

    @property
    def files(self) -> list[str]:
        if self._files is None:
            self._files = list_files(self.repo, self.commit)
        return self._files

    def exists(self, path: str) -> bool:
        return path in set(self.files)

    def read(self, path: str) -> str | None:
        if path not in self._texts:
            self._texts[path] = read_file(self.repo, self.commit, path) if self.exists(path) else None
        return self._texts[path]

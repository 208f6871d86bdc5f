"""Candidates from a repository's history (`tasksynth code mine --git PATH_OR_URL`).

Walks the first-parent history of HEAD, so a merged pull request is one change (the merge against its first
parent) and the commits inside it are not mined twice. A change becomes a candidate when it touches test files
and other files: base commit = first parent, patch = the non-test part, test patch = the test part, problem
statement = the commit (or merge) message. Everything else is kept as a discard with its reason.

The history is read in two streaming passes whatever its length, not commands per commit: one `git log` for
the messages, one `git log -p` for the diffs (each against the first parent, with the same options a
`git diff BASE SHA` of the commit would use, so the patches are byte for byte the same). Judging a change is
a pure function of its message and diff (`judge_change`).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from envbuilder.errors import SourceError
from envbuilder.repos import DIFF_OPTIONS, GIT_CONFIG, git, open_repository, repo_name
from envbuilder.sources.candidate import Candidate, Discard
from envbuilder.sources.patches import language_of, split_patch

SOURCE = "git"
_SEPARATOR = "\x1e"
_COMMIT_MARK = "\x1fcommit "


@dataclass
class MineResult:
    candidates: list[Candidate] = field(default_factory=list)
    discards: list[Discard] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    max_patch_bytes: int = 200_000
    max_files_changed: int = 50


@dataclass(frozen=True)
class Change:
    """One first-parent step of the history: a commit or a merge, with its diff against its first parent."""

    sha: str
    parents: list[str]
    message: str
    created: str
    diff: str


def mine_history(target: str, home: Path, *, limits: Limits = Limits(), name: str | None = None,
                 clone: bool = True, rev: str = "HEAD", max_commits: int | None = None) -> MineResult:
    repo = open_repository(target, home, clone=clone)
    repo_label = name or repo_name(target)
    result = MineResult()
    for change in read_changes(repo, rev, max_commits=max_commits):
        found = judge_change(change, repo_label, str(repo), limits)
        (result.candidates if isinstance(found, Candidate) else result.discards).append(found)
    return result


def read_changes(repo: Path, rev: str = "HEAD", *, max_commits: int | None = None) -> Iterator[Change]:
    """The first-parent history of `rev`, oldest first (the newest `max_commits` when given)."""
    window = [f"--max-count={max_commits}"] if max_commits else []
    log = git(repo, "log", "--first-parent", "--reverse", *window,
              f"--format=%H %P{_SEPARATOR}%cI{_SEPARATOR}%B\x1d", rev)
    headers = []
    for entry in log.split("\x1d"):
        if not entry.strip():
            continue
        head, created, message = entry.strip("\n").split(_SEPARATOR, 2)
        shas = head.split()
        headers.append((shas[0], shas[1:], message.strip(), created))
    diffs = _first_parent_diffs(repo, rev, window)
    for sha, parents, message, created in headers:
        diff_sha, diff = next(diffs, (None, ""))
        if diff_sha != sha:
            raise SourceError(f"git log listed {sha} but its diff pass gave {diff_sha} in {repo}")
        yield Change(sha, parents, message, created, diff)


def _first_parent_diffs(repo: Path, rev: str, window: list[str]) -> Iterator[tuple[str, str]]:
    """(sha, diff against the first parent) of every first-parent commit, from one streaming `git log -p`.
    Every line of a diff starts with a diff marker, so a line starting with the record separator is always
    the next commit's header."""
    command = ["git", *GIT_CONFIG, "-C", str(repo), "log", "--first-parent", "--reverse", *window,
               "--diff-merges=first-parent", "-p", *DIFF_OPTIONS, f"--format={_COMMIT_MARK}%H", rev]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    mark = _COMMIT_MARK.encode()
    sha: str | None = None
    lines: list[bytes] = []
    try:
        for line in process.stdout:
            if line.startswith(mark):
                if sha is not None:
                    yield sha, _diff_text(lines)
                sha, lines = line[len(mark):].strip().decode(), []
            else:
                lines.append(line)
        if sha is not None:
            yield sha, _diff_text(lines)
    finally:
        process.stdout.close()
        stderr = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        code = process.wait()
    if code != 0:
        raise SourceError(f"git log -p failed in {repo}: {stderr.splitlines()[-1] if stderr else 'no output'}")


def _diff_text(lines: list[bytes]) -> str:
    if lines and lines[0] == b"\n":  # git log puts one blank line between a commit's header and its diff
        lines = lines[1:]
    return b"".join(lines).decode(errors="replace")


def judge_change(change: Change, repo_label: str, repo_url: str, limits: Limits) -> Candidate | Discard:
    """One commit (or merge) of the history: a candidate, or the reason it is not one."""
    sha, parents, message, created, diff = (change.sha, change.parents, change.message, change.created,
                                            change.diff)

    def discard(reason: str, detail: str | None = None) -> Discard:
        return Discard("mine", SOURCE, sha, reason, repo=repo_label, detail=detail)

    if not parents:
        return discard("root_commit", "the first commit has no parent to serve as the base")
    base = parents[0]
    if not diff.strip():
        return discard("empty_change", "a merge or commit with no changes against its first parent")
    split = split_patch(diff)
    changed = len(split.source_files) + len(split.test_files) + len(split.doc_files) + len(split.ci_files)
    if split.binary_files and not changed:
        return discard("binary_only", f"only binary files: {', '.join(split.binary_files[:5])}")
    if len(diff.encode()) > limits.max_patch_bytes:
        return discard("too_large", f"{len(diff.encode())} bytes of diff (limit {limits.max_patch_bytes})")
    if changed + len(split.binary_files) > limits.max_files_changed:
        return discard("too_many_files", f"{changed + len(split.binary_files)} files (limit "
                                         f"{limits.max_files_changed})")
    if not split.source_files and not split.test_files and split.doc_files:
        return discard("docs_only", f"only documentation: {', '.join(split.doc_files[:5])}")
    if not split.test_files:
        return discard("no_test_changes", "the change touches no test file")
    if not split.source_files:
        return discard("no_source_changes", "the change touches only tests (and docs or CI)")
    try:
        created_at = dt.datetime.fromisoformat(created).astimezone(dt.timezone.utc).replace(tzinfo=None)
    except ValueError:
        created_at = None
    return Candidate(
        source=SOURCE, repo=repo_label, base_commit=base, patch=split.patch, test_patch=split.test_patch,
        problem_statement=message or "(no commit message)", repo_url=repo_url, source_ref=sha,
        language=language_of(split.source_files) or "python", head_commit=sha, created_at=created_at,
        metadata={"merge": len(parents) > 1, "source_files": split.source_files, "test_files": split.test_files,
                  "binary_files": split.binary_files})

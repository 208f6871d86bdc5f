"""Candidates from a repository's history (`tasksynth code mine --git PATH_OR_URL`).

Walks the first-parent history of HEAD, so a merged pull request is one change (the merge against its first
parent) and the commits inside it are not mined twice. A change becomes a candidate when it touches test files
and other files: base commit = first parent, patch = the non-test part, test patch = the test part, problem
statement = the commit (or merge) message. Everything else is kept as a discard with its reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from envbuilder.repos import git, open_repository, repo_name
from envbuilder.sources.candidate import Candidate, Discard
from envbuilder.sources.patches import language_of, split_patch

SOURCE = "git"
_SEPARATOR = "\x1e"


@dataclass
class MineResult:
    candidates: list[Candidate] = field(default_factory=list)
    discards: list[Discard] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    max_patch_bytes: int = 200_000
    max_files_changed: int = 50


def mine_history(target: str, home: Path, *, limits: Limits = Limits(), name: str | None = None,
                 clone: bool = True, rev: str = "HEAD", max_commits: int | None = None) -> MineResult:
    repo = open_repository(target, home, clone=clone)
    repo_label = name or repo_name(target)
    log = git(repo, "log", "--first-parent", "--reverse", f"--format=%H %P{_SEPARATOR}%cI{_SEPARATOR}%B\x1d", rev)
    result = MineResult()
    entries = [e for e in log.split("\x1d") if e.strip()]
    if max_commits:
        entries = entries[-max_commits:]
    for entry in entries:
        head, created, message = entry.strip("\n").split(_SEPARATOR, 2)
        shas = head.split()
        sha, parents = shas[0], shas[1:]
        found = examine_change(repo, repo_label, str(repo), sha, parents, message.strip(), created, limits)
        (result.candidates if isinstance(found, Candidate) else result.discards).append(found)
    return result


def examine_change(repo: Path, repo_label: str, repo_url: str, sha: str, parents: list[str], message: str,
                   created: str, limits: Limits) -> Candidate | Discard:
    """One commit (or merge) of the history: a candidate, or the reason it is not one."""
    def discard(reason: str, detail: str | None = None) -> Discard:
        return Discard("mine", SOURCE, sha, reason, repo=repo_label, detail=detail)

    if not parents:
        return discard("root_commit", "the first commit has no parent to serve as the base")
    base = parents[0]
    diff = git(repo, "diff", "--no-color", "--no-ext-diff", "--no-renames", "--full-index", base, sha)
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

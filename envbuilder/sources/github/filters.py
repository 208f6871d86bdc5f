"""The heuristic filters of GitHub pairs, each with the reason it records when it drops one.

They run in the order of their cost: first on what the page listing already says about the PR (no
request), then on each linked issue (inline in GraphQL, else one request), then on the diff (one request,
only for PRs that passed the rest). A filter returns None to keep, or the `Rejection` to record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from envbuilder.sources.github.models import Issue, PullRequest
from envbuilder.sources.patches import SplitPatch, is_ci_path, is_doc_path, is_test_path, language_of
from tasksynth.config import Config


@dataclass
class Rejection:
    reason: str
    detail: str = ""


@dataclass
class Limits:
    min_issue_chars: int = 40
    max_files: int = 50
    max_patch_bytes: int = 200_000
    languages: list[str] = field(default_factory=lambda: ["python"])

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        return cls(config.github.min_issue_chars, config.code.max_files_changed, config.code.max_patch_bytes,
                   list(config.github.languages))


def check_pull(pr: PullRequest, issue_numbers: list[int], limits: Limits) -> Rejection | None:
    """On the listing alone: a linked issue, and (when the listing has files) tests, source, language."""
    if not issue_numbers:
        return Rejection("no_linked_issue", "no closingIssuesReferences and no closing keyword")
    if not pr.base_commit:
        return Rejection("no_base_commit")
    if pr.files is None:  # the REST listing: the diff will tell
        return None
    total = pr.files_total if pr.files_total is not None else len(pr.files)
    if total > limits.max_files:
        return Rejection("too_many_files", f"{total} files changed > {limits.max_files}")
    return _check_paths([f.path for f in pr.files], limits)


def check_issue(issue: Issue, pr: PullRequest, limits: Limits) -> Rejection | None:
    if issue.is_pull_request:
        return Rejection("issue_is_pull_request", f"#{issue.number} is a pull request, not an issue")
    body = (issue.body or "").strip()
    if len(body) < limits.min_issue_chars:
        return Rejection("issue_text_too_short", f"#{issue.number}: {len(body)} characters < {limits.min_issue_chars}")
    if issue.created_at and pr.created_at and issue.created_at > pr.created_at:
        return Rejection("issue_after_pr", f"#{issue.number} was opened after the pull request")
    return None


def check_diff(split: SplitPatch, limits: Limits) -> Rejection | None:
    if split.binary_files:
        return Rejection("binary_files", ", ".join(split.binary_files[:5]))
    paths = split.source_files + split.test_files + split.doc_files + split.ci_files
    if len(paths) > limits.max_files:
        return Rejection("too_many_files", f"{len(paths)} files changed > {limits.max_files}")
    rejection = _check_paths(paths, limits)
    if rejection:
        return rejection
    size = len(split.patch.encode()) + len(split.test_patch.encode())
    if size > limits.max_patch_bytes:
        return Rejection("patch_too_large", f"{size} bytes > {limits.max_patch_bytes}")
    return None


def _check_paths(paths: list[str], limits: Limits) -> Rejection | None:
    tests = [p for p in paths if is_test_path(p)]
    rest = [p for p in paths if not is_test_path(p)]
    source = [p for p in rest if not is_doc_path(p) and not is_ci_path(p)]
    if not paths:
        return Rejection("empty_patch", "the pull request changes no file")
    if not tests:
        return Rejection("no_test_patch", "no test file changed")
    if not source:
        if rest:
            return Rejection("docs_or_ci_only", "only documentation, CI and test files changed")
        return Rejection("empty_patch", "only test files changed")
    language = language_of(source)
    if language is None:
        suffixes = sorted({PurePosixPath(p).suffix or PurePosixPath(p).name for p in source})[:5]
        return Rejection("unsupported_language", f"no source file of a known language ({', '.join(suffixes)})")
    if language not in limits.languages:
        return Rejection("unsupported_language", f"{language} is not in github.languages")
    return None

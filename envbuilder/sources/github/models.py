"""What the miner knows about a pull request and the issues it resolves, whichever API it came from."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass
class Issue:
    number: int
    title: str
    body: str
    created_at: dt.datetime | None
    labels: list[str] = field(default_factory=list)
    url: str = ""
    repo: str = ""  # owner/name
    is_pull_request: bool = False  # GitHub's issues endpoint also answers for pull requests

    @property
    def text(self) -> str:
        return f"{self.title.strip()}\n\n{(self.body or '').strip()}".strip()


@dataclass
class ChangedFile:
    path: str
    additions: int = 0
    deletions: int = 0
    change_type: str = "MODIFIED"  # ADDED | DELETED | MODIFIED | RENAMED | COPIED | CHANGED


@dataclass
class PullRequest:
    repo: str
    number: int
    title: str
    body: str
    url: str
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    merged_at: dt.datetime | None
    base_commit: str
    head_commit: str | None = None
    merge_commit: str | None = None
    # None when the listing did not include files (the REST listing): the diff tells them later.
    files: list[ChangedFile] | None = None
    files_total: int | None = None
    commit_messages: list[str] = field(default_factory=list)
    # Issues GitHub itself links as closed by this PR (GraphQL closingIssuesReferences), fetched inline.
    closing_issues: list[Issue] = field(default_factory=list)
    author: str | None = None

    @property
    def key(self) -> str:
        return f"{self.repo}#{self.number}"


def parse_time(value: str | None) -> dt.datetime | None:
    """GitHub's ISO 8601 times (`2024-05-01T12:00:00Z`) as aware datetimes."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

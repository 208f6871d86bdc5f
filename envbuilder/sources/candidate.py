"""A candidate: one (repository, base commit, gold patch, test patch, problem statement) from any source."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from tasksynth.hashing import content_hash


@dataclass
class Candidate:
    source: str  # git | swebench | github
    repo: str  # owner/name, or a local name
    base_commit: str
    patch: str
    test_patch: str
    problem_statement: str
    instance_id: str = ""  # default: <repo with __>-<short hash>
    repo_url: str | None = None  # where to clone from: a path or URL
    source_ref: str | None = None  # commit sha, PR url, jsonl line
    language: str = "python"
    head_commit: str | None = None
    hints: str | None = None
    version: str | None = None
    environment_setup_commit: str | None = None
    imported_fail_to_pass: list[str] | None = None
    imported_pass_to_pass: list[str] | None = None
    created_at: dt.datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def candidate_id(self) -> str:
        """Same repository, commit and patches give the same id, whichever source found them."""
        return content_hash(self.repo, self.base_commit, self.patch, self.test_patch)

    def __post_init__(self) -> None:
        if not self.instance_id:
            self.instance_id = f"{self.repo.replace('/', '__')}-{self.candidate_id[:10]}"

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["candidate_id"] = self.candidate_id
        return row


@dataclass
class Discard:
    """Something a source looked at and did not keep, with the reason (kept in the `discards` table)."""

    stage: str
    source: str
    item: str
    reason: str
    repo: str | None = None
    detail: str | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)

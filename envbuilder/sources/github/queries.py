"""How merged pull requests are listed: one GraphQL page query (files, commit messages and closing issues
inline, so a page of 50 PRs is one request), or the REST listing when there is no token.

Both list newest update first. A merge updates a PR, so a scan that stops at the previous scan's newest
update time sees every PR merged since, and a cursor that resumes a scan never skips an unseen PR (one
that is updated meanwhile moves ahead of the cursor and is caught by the next scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envbuilder.sources.github.models import ChangedFile, Issue, PullRequest, parse_time

PAGE_SIZE = 50
MAX_FILES = 100  # a PR with more changed files than this is too big for a task anyway
MAX_COMMITS = 50
MAX_CLOSING_ISSUES = 10

CLOSING_ISSUES_FIELD = """
        closingIssuesReferences(first: %(issues)d) {
          nodes { number title body createdAt url repository { nameWithOwner } labels(first: 20) { nodes { name } } }
        }"""

PULLS_QUERY = """
query MergedPullRequests($owner: String!, $name: String!, $first: Int!, $after: String) {
  rateLimit { cost remaining resetAt limit }
  repository(owner: $owner, name: $name) {
    nameWithOwner
    pullRequests(states: MERGED, first: $first, after: $after, orderBy: {field: UPDATED_AT, direction: DESC}) {
      totalCount
      pageInfo { endCursor hasNextPage }
      nodes {
        number title body url createdAt updatedAt mergedAt
        baseRefOid headRefOid
        mergeCommit { oid }
        author { login }
        files(first: %(files)d) { totalCount nodes { path additions deletions changeType } }
        commits(first: %(commits)d) { totalCount nodes { commit { message } } }%(closing)s
      }
    }
  }
}
"""


def pulls_query(*, closing_issues: bool = True) -> str:
    """The page query; without `closingIssuesReferences` for servers that do not know the field."""
    closing = CLOSING_ISSUES_FIELD % {"issues": MAX_CLOSING_ISSUES} if closing_issues else ""
    return PULLS_QUERY % {"files": MAX_FILES, "commits": MAX_COMMITS, "closing": closing}


@dataclass
class Page:
    pulls: list[PullRequest]
    next_cursor: str | None  # where the following page starts (GraphQL endCursor, REST next URL)
    has_next: bool


def parse_graphql_page(data: dict[str, Any], repo: str) -> Page:
    repository = data.get("repository")
    if repository is None:
        from envbuilder.sources.github.client import GithubError

        raise GithubError(f"repository {repo} not found", 404)
    connection = repository["pullRequests"]
    pulls = [_graphql_pull(node, repo) for node in connection.get("nodes") or [] if node]
    info = connection.get("pageInfo") or {}
    return Page(pulls, info.get("endCursor"), bool(info.get("hasNextPage")))


def _graphql_pull(node: dict[str, Any], repo: str) -> PullRequest:
    files = node.get("files") or {}
    commits = node.get("commits") or {}
    closing = (node.get("closingIssuesReferences") or {}).get("nodes") or []
    return PullRequest(
        repo=repo, number=node["number"], title=node.get("title") or "", body=node.get("body") or "",
        url=node.get("url") or "", created_at=parse_time(node.get("createdAt")),
        updated_at=parse_time(node.get("updatedAt")), merged_at=parse_time(node.get("mergedAt")),
        base_commit=node.get("baseRefOid") or "", head_commit=node.get("headRefOid"),
        merge_commit=(node.get("mergeCommit") or {}).get("oid"),
        files=[ChangedFile(f["path"], f.get("additions", 0), f.get("deletions", 0), f.get("changeType", "MODIFIED"))
               for f in files.get("nodes") or []],
        files_total=files.get("totalCount"),
        commit_messages=[(c.get("commit") or {}).get("message") or "" for c in commits.get("nodes") or []],
        closing_issues=[_graphql_issue(i) for i in closing if i],
        author=(node.get("author") or {}).get("login"),
    )


def _graphql_issue(node: dict[str, Any]) -> Issue:
    return Issue(number=node["number"], title=node.get("title") or "", body=node.get("body") or "",
                 created_at=parse_time(node.get("createdAt")),
                 labels=[label["name"] for label in (node.get("labels") or {}).get("nodes") or []],
                 url=node.get("url") or "", repo=(node.get("repository") or {}).get("nameWithOwner", ""))


# ---------------------------------------------------------------------------------------------- REST


def rest_pulls_params(page_size: int = 100) -> dict[str, Any]:
    """`GET /repos/{owner}/{name}/pulls` for closed PRs, newest update first; merged ones have merged_at."""
    return {"state": "closed", "sort": "updated", "direction": "desc", "per_page": page_size}


def parse_rest_pull(obj: dict[str, Any], repo: str) -> PullRequest:
    return PullRequest(
        repo=repo, number=obj["number"], title=obj.get("title") or "", body=obj.get("body") or "",
        url=obj.get("html_url") or "", created_at=parse_time(obj.get("created_at")),
        updated_at=parse_time(obj.get("updated_at")), merged_at=parse_time(obj.get("merged_at")),
        base_commit=(obj.get("base") or {}).get("sha") or "", head_commit=(obj.get("head") or {}).get("sha"),
        merge_commit=obj.get("merge_commit_sha"), author=(obj.get("user") or {}).get("login"),
    )


def parse_rest_issue(obj: dict[str, Any], repo: str) -> Issue:
    return Issue(number=obj["number"], title=obj.get("title") or "", body=obj.get("body") or "",
                 created_at=parse_time(obj.get("created_at")),
                 labels=[label["name"] if isinstance(label, dict) else str(label) for label in obj.get("labels") or []],
                 url=obj.get("html_url") or "", repo=repo, is_pull_request="pull_request" in obj)

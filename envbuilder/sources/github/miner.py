"""Mining one repository: pages of merged PRs -> cheap filters -> issues and diffs -> candidates or discards.

Each page is written in one transaction together with where the scan stands (`github_cursors`) and every
PR examined (`github_pulls`), so a crash loses at most the page in flight and a rerun resumes at it,
skipping the PRs already examined. Requests per PR stay low: one GraphQL request per page of 50 PRs (files,
commit messages and closing issues inline), then one diff request only for the PRs that pass every filter
that needs no diff, and one issue request only for issues named by a keyword and not already inline.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envbuilder.sources.candidate import Candidate, Discard
from envbuilder.sources.github.client import DIFF_MEDIA, GithubClient, GithubError
from envbuilder.sources.github.filters import Limits, Rejection, check_diff, check_issue, check_pull
from envbuilder.sources.github.linking import closing_references
from envbuilder.sources.github.models import Issue, PullRequest, iso, parse_time
from envbuilder.sources.github.queries import (Page, parse_graphql_page, parse_rest_issue, parse_rest_pull,
                                               pulls_query, rest_pulls_params)
from envbuilder.sources.patches import language_of, split_patch
from tasksynth.config import Config

log = logging.getLogger(__name__)

SOURCE = "github"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class ReviewRequest:
    """What the LLM review sees: the task statement, the gold patch and the test patch."""

    repo: str
    pr_number: int
    problem_statement: str
    patch: str
    test_patch: str


@dataclass
class Review:
    score: float | None  # 0..1; None when the model's answer could not be read
    rationale: str
    accept: bool


Reviewer = Callable[[ReviewRequest], Review]


@dataclass
class Outcome:
    """What examining one PR gave: a candidate, or a discard with its reason."""

    pr: PullRequest
    candidate: Candidate | None = None
    discard: Discard | None = None
    issues: list[int] = field(default_factory=list)
    review: Review | None = None


@dataclass
class MiningReport:
    repo: str
    scan: str = ""
    pages: int = 0
    listed: int = 0  # PRs the pages listed
    examined: int = 0  # newly examined this run
    already_examined: int = 0
    candidates: int = 0
    discarded: Counter = field(default_factory=Counter)
    finished: bool = False  # the scan reached its boundary (or the oldest PR)

    def as_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "scan": self.scan, "pages": self.pages, "listed": self.listed,
                "examined": self.examined, "already_examined": self.already_examined,
                "candidates": self.candidates, "discarded": dict(self.discarded), "finished": self.finished}


@dataclass
class ScanState:
    cursor: str | None = None
    boundary: str | None = None
    newest: str | None = None
    finished: bool = False
    completed_through: str | None = None


class RepositoryMiner:
    """Mines repositories into the store through one client; safe to use from several threads at once."""

    def __init__(self, client: GithubClient, store, config: Config, *, reviewer: Reviewer | None = None,
                 run_id: str | None = None, on_page: Callable[[MiningReport], None] | None = None):
        self.client = client
        self.store = store
        self.config = config
        self.limits = Limits.from_config(config)
        self.reviewer = reviewer
        self.run_id = run_id
        self.on_page = on_page
        self.page_size = max(1, min(100, config.github.page_size))
        self._closing_field = True  # cleared for servers whose GraphQL has no closingIssuesReferences

    # ------------------------------------------------------------------------------------------ the scan

    def mine(self, repo: str, *, since: dt.datetime | None = None, limit: int | None = None) -> MiningReport:
        repo = normalize_repo(repo)
        mode = "graphql" if self.client.authenticated else "rest"
        scan = mode + (f"@{iso(since)}" if since else "")
        report = MiningReport(repo, scan)
        state = self._load_state(repo, scan)
        if state.finished or state.cursor is None and state.newest is None:
            boundary = max(filter(None, [iso(since), state.completed_through]), default=None)
            state = ScanState(boundary=boundary, completed_through=state.completed_through)
        boundary = parse_time(state.boundary)
        log.info("mining %s (%s) from %s down to %s", repo, scan, "a cursor" if state.cursor else "the top",
                 state.boundary or "the oldest pull request")
        # Pages are written by one writer thread while the next page is fetched and examined: a store write
        # is slower than a page of requests. At most one page waits to be written; each page is written
        # whole with its cursor, in order, so a crash still loses at most the pages not yet written.
        pending: Future | None = None
        examined = self._examined_numbers(repo)  # read once; kept up to date here as pages are examined
        with ThreadPoolExecutor(max_workers=max(1, self.config.github.concurrency),
                                thread_name_prefix=f"gh-{repo}") as pool, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gh-{repo}-writer") as writer:
            while True:
                page = self._page(repo, mode, state.cursor)
                report.pages += 1
                report.listed += len(page.pulls)
                if state.newest is None and page.pulls:
                    state.newest = max(iso(pr.updated_at) or "" for pr in page.pulls) or None
                in_range = [pr for pr in page.pulls
                            if boundary is None or pr.updated_at is None or pr.updated_at >= boundary]
                reached_boundary = len(in_range) < len(page.pulls)
                merged = [pr for pr in in_range if pr.merged_at is not None]
                fresh = [pr for pr in merged if pr.number not in examined]
                report.already_examined += len(merged) - len(fresh)
                truncated = False
                if limit is not None and len(fresh) > limit - report.examined:
                    fresh, truncated = fresh[: max(0, limit - report.examined)], True
                outcomes = list(pool.map(self._examine, fresh))
                examined.update(pr.number for pr in fresh)
                if not truncated:  # a truncated page is read again next time, skipping what is done
                    if reached_boundary or not page.has_next:
                        state.finished, state.completed_through = True, state.newest or state.completed_through
                    else:
                        state.cursor = page.next_cursor
                if pending is not None:
                    pending.result()  # a failed write stops the scan here
                pending = writer.submit(self._record, repo, scan, outcomes, replace(state))
                report.examined += len(outcomes)
                for outcome in outcomes:
                    if outcome.candidate:
                        report.candidates += 1
                    else:
                        report.discarded[outcome.discard.reason] += 1
                if self.on_page:
                    self.on_page(report)
                if state.finished:
                    report.finished = True
                    break
                if truncated or (limit is not None and report.examined >= limit):
                    break
            if pending is not None:
                pending.result()
        log.info("mined %s: %d examined, %d candidates, %s", repo, report.examined, report.candidates,
                 dict(report.discarded))
        return report

    def _page(self, repo: str, mode: str, cursor: str | None) -> Page:
        if mode == "rest":
            url = cursor or f"repos/{repo}/pulls"
            reply = self.client.get(url, params=None if cursor else rest_pulls_params())
            pulls = [parse_rest_pull(obj, repo) for obj in reply.json()]
            next_url = reply.links.get("next")
            return Page(pulls, next_url, next_url is not None)
        owner, name = repo.split("/")
        variables = {"owner": owner, "name": name, "first": self.page_size, "after": cursor}
        try:
            data = self.client.graphql(pulls_query(closing_issues=self._closing_field), variables)
        except GithubError as exc:
            if not (self._closing_field and "closingIssuesReferences" in str(exc)):
                raise
            log.warning("%s: this GraphQL server has no closingIssuesReferences; linking by keywords only",
                        self.client.graphql_url)
            self._closing_field = False
            data = self.client.graphql(pulls_query(closing_issues=False), variables)
        return parse_graphql_page(data, repo)

    # ------------------------------------------------------------------------------------------ one PR

    def _examine(self, pr: PullRequest) -> Outcome:
        try:
            return self._examine_pull(pr)
        except GithubError as exc:
            if exc.status in (404, 410, 451):  # gone for good: a permanent reason, not a retry
                return self._discard(pr, Rejection("not_found", str(exc)), stage="mine")
            raise

    def _examine_pull(self, pr: PullRequest) -> Outcome:
        inline = {i.number: i for i in pr.closing_issues if not i.repo or i.repo.lower() == pr.repo.lower()}
        numbers = list(inline)
        for text in [pr.body, *pr.commit_messages]:
            numbers += [n for n in closing_references(text, pr.repo) if n not in numbers]
        numbers = [n for n in numbers if n != pr.number]
        rejection = check_pull(pr, numbers, self.limits)
        if rejection:
            return self._discard(pr, rejection, issues=numbers)
        issues: list[Issue] = []
        first_rejection: Rejection | None = None
        for number in numbers:
            issue = inline.get(number) or self._issue(pr.repo, number)
            rejection = Rejection("issue_not_found", f"#{number}") if issue is None \
                else check_issue(issue, pr, self.limits)
            if rejection:
                first_rejection = first_rejection or rejection
            else:
                issues.append(issue)
        if not issues:
            return self._discard(pr, first_rejection, issues=numbers)
        try:
            diff = self.client.get(f"repos/{pr.repo}/pulls/{pr.number}", accept=DIFF_MEDIA).text
        except GithubError as exc:
            if exc.status in (404, 406, 422):  # 406: GitHub will not render diffs this large
                return self._discard(pr, Rejection("diff_unavailable", str(exc)), issues=numbers)
            raise
        split = split_patch(diff)
        rejection = check_diff(split, self.limits)
        if rejection:
            return self._discard(pr, rejection, issues=numbers)
        statement = "\n\n".join(issue.text for issue in issues)
        review = None
        if self.reviewer is not None:
            review = self.reviewer(ReviewRequest(pr.repo, pr.number, statement, split.patch, split.test_patch))
            if not review.accept:
                outcome = self._discard(pr, Rejection("llm_review_rejected", review.rationale[:500]),
                                        issues=numbers, stage="filter")
                outcome.review = review
                return outcome
        candidate = Candidate(
            source=SOURCE, repo=pr.repo, base_commit=pr.base_commit, patch=split.patch, test_patch=split.test_patch,
            problem_statement=statement, instance_id=f"{pr.repo.replace('/', '__')}-{pr.number}",
            repo_url=repo_clone_url(self.client.api_url, pr.repo), source_ref=pr.url,
            language=language_of(split.source_files) or "python", head_commit=pr.merge_commit,
            created_at=_naive_utc(pr.created_at),
            metadata={"pr_number": pr.number, "pr_title": pr.title, "pr_head": pr.head_commit,
                      "merged_at": iso(pr.merged_at), "author": pr.author,
                      "linked_by": "closingIssuesReferences" if any(i.number in inline for i in issues)
                      else "keyword",
                      "issues": [{"number": i.number, "url": i.url, "labels": i.labels,
                                  "created_at": iso(i.created_at)} for i in issues],
                      "test_files": split.test_files, "source_files": split.source_files,
                      "review": None if review is None else {"score": review.score, "rationale": review.rationale}},
        )
        return Outcome(pr, candidate=candidate, issues=[i.number for i in issues], review=review)

    def _issue(self, repo: str, number: int) -> Issue | None:
        try:
            return parse_rest_issue(self.client.get(f"repos/{repo}/issues/{number}").json(), repo)
        except GithubError as exc:
            if exc.status in (404, 410):
                return None
            raise

    def _discard(self, pr: PullRequest, rejection: Rejection, *, issues: list[int] | None = None,
                 stage: str = "filter") -> Outcome:
        discard = Discard(stage=stage, source=SOURCE, item=pr.key, reason=rejection.reason, repo=pr.repo,
                          detail=rejection.detail or None)
        return Outcome(pr, discard=discard, issues=list(issues or []))

    # ------------------------------------------------------------------------------------------ the store

    def _load_state(self, repo: str, scan: str) -> ScanState:
        rows = self.store.query("SELECT cursor, boundary, newest, finished, completed_through FROM github_cursors "
                                "WHERE repo = ? AND scan = ?", [repo, scan])
        return ScanState(**rows[0]) if rows else ScanState()

    def _examined_numbers(self, repo: str) -> set[int]:
        rows = self.store.query("SELECT number FROM github_pulls WHERE repo = ?", [repo])
        return {row["number"] for row in rows}

    def _record(self, repo: str, scan: str, outcomes: list[Outcome], state: ScanState) -> None:
        candidates = [o.candidate.as_row() for o in outcomes if o.candidate]
        discards = [{**o.discard.as_row(), "run_id": self.run_id} for o in outcomes if o.discard]
        pulls = [{"repo": repo, "number": o.pr.number, "outcome": "candidate" if o.candidate else "discard",
                  "reason": o.discard.reason if o.discard else None,
                  "candidate_id": o.candidate.candidate_id if o.candidate else None, "issues": o.issues,
                  "review_score": o.review.score if o.review else None,
                  "review_rationale": o.review.rationale if o.review else None, "run_id": self.run_id}
                 for o in outcomes]
        with self.store.transaction():
            self.store.insert("candidates", candidates)
            self.store.insert("discards", discards)
            self.store.insert("github_pulls", pulls)
            self.store.insert("github_cursors", [{
                "repo": repo, "scan": scan, "cursor": None if state.finished else state.cursor,
                "boundary": state.boundary, "newest": state.newest, "finished": state.finished,
                "completed_through": state.completed_through,
                "updated_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)}], on_conflict="replace")


def normalize_repo(repo: str) -> str:
    """`owner/name`, also from a URL (`https://github.com/owner/name(.git)`)."""
    text = repo.strip().rstrip("/")
    if text.endswith(".git"):
        text = text[:-4]
    if "://" in text:
        text = "/".join(text.split("://", 1)[1].split("/")[1:3])
    parts = text.split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) and p not in (".", "..") for p in parts):
        raise GithubError(f"not a repository (expected OWNER/NAME): {repo!r}")
    return text


def read_repo_list(path: str | Path) -> list[str]:
    """The repositories listed in a file, one OWNER/NAME or URL per line; `#` starts a comment."""
    file = Path(path)
    if not file.is_file():
        raise GithubError(f"--github-list: no such file: {file}")
    repos = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            repos.append(normalize_repo(text))
        except GithubError:
            raise GithubError(f"{file}:{number}: not a repository (expected OWNER/NAME): {text!r}") from None
    return repos


def repo_clone_url(api_url: str, repo: str) -> str:
    """Where to clone from: github.com for the public API, the Enterprise host otherwise."""
    base = api_url.rstrip("/")
    if base == "https://api.github.com":
        return f"https://github.com/{repo}.git"
    if base.endswith("/api/v3"):
        return f"{base[: -len('/api/v3')]}/{repo}.git"
    return f"{base}/{repo}.git"


def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value else None

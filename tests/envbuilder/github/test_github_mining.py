"""Mining the fake GitHub into a real store: pairs found, every filter's reason, resume, idempotence."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import TOKEN
from fake_github import FakePull
from scenarios import EXPECTED, NOT_MERGED, source_and_test, widgets_repo

from envbuilder.sources.github.client import GithubClient
from envbuilder.sources.github.miner import RepositoryMiner
from tasksynth.store import open_store

REPO_ROOT = Path(__file__).resolve().parents[3]


def mine(config, fake, sleeper, *, token=TOKEN, repo="acme/widgets", **kwargs):
    with open_store(config) as store, GithubClient(fake.url, token=token, sleeper=sleeper, backoff_s=0.05,
                                                   cache_dir=config.home_path / "cache" / "github") as client:
        miner = RepositoryMiner(client, store, config, on_page=kwargs.pop("on_page", None))
        report = miner.mine(repo, **kwargs)
        return report, client.stats


def outcomes(config) -> dict[int, str | None]:
    with open_store(config) as store:
        return {r["number"]: r["reason"] for r in store.query("SELECT number, reason FROM github_pulls")}


def test_graphql_mining_finds_the_pairs_and_records_every_reason(gh_config, fake, sleeper):
    repo = widgets_repo(fake)
    report, stats = mine(gh_config, fake, sleeper)
    assert outcomes(gh_config) == EXPECTED
    assert report.finished and report.examined == len(EXPECTED) and report.candidates == 3
    with open_store(gh_config) as store:
        candidates = {r["instance_id"]: r for r in store.query("SELECT * FROM candidates")}
        discards = store.query("SELECT item, reason, detail, stage, source FROM discards ORDER BY item")
    assert set(candidates) == {"acme__widgets-101", "acme__widgets-102", "acme__widgets-114"}
    first = candidates["acme__widgets-101"]
    assert first["source"] == "github" and first["language"] == "python"
    assert first["base_commit"] == repo.pulls[101].base_sha and first["head_commit"] == repo.pulls[101].merge_sha
    assert "diff --git a/src/widgets/core.py" in first["patch"] and "tests/" not in first["patch"]
    assert "diff --git a/tests/test_core.py" in first["test_patch"] and "src/" not in first["test_patch"]
    assert first["problem_statement"].startswith("Bug 1: resize misbehaves")
    assert "ZeroDivisionError" in first["problem_statement"]
    assert first["source_ref"] == "https://github.com/acme/widgets/pull/101"
    assert first["metadata"]["linked_by"] == "closingIssuesReferences"
    assert first["metadata"]["issues"][0]["labels"] == ["bug"]
    assert candidates["acme__widgets-102"]["metadata"]["linked_by"] == "keyword"
    assert candidates["acme__widgets-114"]["problem_statement"].startswith("Bug 14")  # from a commit message
    assert {d["item"]: d["reason"] for d in discards} == {f"acme/widgets#{n}": r for n, r in EXPECTED.items() if r}
    assert all(d["stage"] == "filter" and d["source"] == "github" and d["detail"] for d in discards)
    details = {d["reason"]: d["detail"] for d in discards}
    assert "#106 is a pull request" in details["issue_is_pull_request"]
    assert "go is not in github.languages" in details["unsupported_language"]
    # One GraphQL page; a diff only for PRs past every cheap filter; an issue only when no inline one exists.
    assert fake.count(path="^/graphql$") == 1
    diffs = {r.path for r in fake.requests if r.path.startswith("/repos/acme/widgets/pulls/")}
    assert diffs == {f"/repos/acme/widgets/pulls/{n}" for n in (101, 102, 110, 114, 115)}
    assert {r.path for r in fake.requests if "/issues/" in r.path} == \
        {"/repos/acme/widgets/issues/2", "/repos/acme/widgets/issues/106", "/repos/acme/widgets/issues/14"}
    assert stats.sent / report.examined <= 1.0


def test_without_a_token_it_mines_through_rest_at_the_anonymous_rate(gh_config, fake, sleeper, monkeypatch):
    widgets_repo(fake)
    report, stats = mine(gh_config, fake, sleeper, token=None)
    # REST lists no commit messages: #114's only link is in one, so it has none here.
    assert outcomes(gh_config) == {**EXPECTED, 114: "no_linked_issue"}
    assert report.scan == "rest" and not any(r.authorized for r in fake.requests)
    assert fake.count(path="graphql") == 0 and all(n not in outcomes(gh_config) for n in NOT_MERGED)


def test_mining_twice_adds_nothing_and_costs_one_request(gh_config, fake, sleeper):
    widgets_repo(fake)
    mine(gh_config, fake, sleeper)
    with open_store(gh_config) as store:
        before = [store.query(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in ("candidates", "discards")]
    fake.reset_log()
    report, stats = mine(gh_config, fake, sleeper)
    with open_store(gh_config) as store:
        after = [store.query(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in ("candidates", "discards")]
    assert after == before == [3, len(EXPECTED) - 3]
    assert report.examined == 0 and report.finished
    assert len(fake.requests) == 1  # the first page, to see that nothing was merged since


def test_a_later_run_picks_up_only_what_was_merged_since(gh_config, fake, sleeper):
    repo = widgets_repo(fake)
    mine(gh_config, fake, sleeper)
    repo.add_pull(FakePull(120, "Late fix", "Fixes #1 again", "2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z",
                           "2024-03-02T00:00:00Z", source_and_test("late")))
    report, _ = mine(gh_config, fake, sleeper)
    assert report.examined == 1 and report.candidates == 1
    assert outcomes(gh_config)[120] is None


def test_since_and_limit_bound_the_scan_and_a_rerun_continues(gh_config, fake, sleeper):
    widgets_repo(fake)
    since = dt.datetime(2024, 1, 22, 10, tzinfo=dt.timezone.utc)  # PRs 110.. were updated from then on
    report, _ = mine(gh_config, fake, sleeper, since=since, limit=3)
    assert report.examined == 3 and not report.finished
    report, _ = mine(gh_config, fake, sleeper, since=since)
    assert report.finished
    assert set(outcomes(gh_config)) == {110, 111, 112, 114, 115, 116}
    examined = Counter(r.path for r in fake.requests if r.status == 200 and "/pulls/" in r.path)
    assert max(examined.values()) == 1  # no diff fetched twice


def test_servers_without_closing_issues_references_fall_back_to_keywords(gh_config, fake, sleeper):
    fake.supports_closing_issues = False
    widgets_repo(fake)
    mine(gh_config, fake, sleeper)
    assert outcomes(gh_config) == EXPECTED  # every PR body also names its issue
    assert fake.count(path="graphql") == 2  # the refused query, then the one without the field


def test_a_killed_mining_resumes_where_it_stopped(gh_config, fake, sleeper):
    """SIGKILL a mining process mid-scan; the rerun continues from the stored cursor, examines every PR once
    and fetches no diff twice from GitHub (the one in flight comes back as a 304 from the disk cache)."""
    widgets_repo(fake)
    fake.latency_s = 0.1
    env = {**os.environ, "TASKSYNTH_HOME": str(gh_config.home_path), "GITHUB_TOKEN": TOKEN,
           "TASKSYNTH_GITHUB__API_URL": fake.url, "TASKSYNTH_GITHUB__PAGE_SIZE": "2",
           "TASKSYNTH_GITHUB__CONCURRENCY": "1", "PYTHONPATH": str(REPO_ROOT)}
    code = ("from tasksynth.config import load_config; from tasksynth.store import open_store; "
            "from envbuilder.sources.github.client import GithubClient; "
            "from envbuilder.sources.github.miner import RepositoryMiner; c = load_config(); "
            "s = open_store(c); RepositoryMiner(GithubClient.from_config(c), s, c).mine('acme/widgets')")
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=gh_config.home_path.parent)
    deadline = time.monotonic() + 60
    while fake.count(path="graphql") < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    first_run = fake.count(path="graphql")
    done_before = outcomes(gh_config)
    assert 2 <= len(done_before) < len(EXPECTED)  # pages 1.. are kept, the rest is not done

    fake.latency_s = 0.0
    gh_config.github.page_size = 2
    report, _ = mine(gh_config, fake, sleeper)
    assert outcomes(gh_config) == EXPECTED
    assert report.examined == len(EXPECTED) - len(done_before)
    resumed = [r for r in fake.requests if r.path == "/graphql"][first_run]
    assert resumed.graphql_variables["after"] is not None  # from the cursor, not from the top
    fetched = Counter(r.path for r in fake.requests if r.status == 200 and "/pulls/" in r.path)
    assert fetched and max(fetched.values()) == 1

"""The GitHub client against the fake GitHub: rate limits waited out, retries, conditional requests, links."""

from __future__ import annotations

import io
import time

import pytest
from conftest import TOKEN, RecordingSleeper
from rich.console import Console
from scenarios import widgets_repo

from envbuilder.sources.github.client import GithubClient, GithubError, graphql_url_for
from envbuilder.sources.github.queries import pulls_query
from envbuilder.sources.github.waiting import CountdownSleeper

SECONDARY = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
             "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}


def client_for(fake, tmp_path, sleeper, **kwargs) -> GithubClient:
    return GithubClient(fake.url, token=TOKEN, cache_dir=tmp_path / "cache", sleeper=sleeper, backoff_s=0.05,
                        **kwargs)


def test_secondary_limit_retry_after_is_waited_out_with_a_countdown(fake, tmp_path):
    widgets_repo(fake)
    fake.fail(r"/issues/1$", 403, headers={"Retry-After": "1"}, body=SECONDARY)
    screen = io.StringIO()
    countdown = CountdownSleeper(console=Console(file=screen, force_terminal=True, width=100), tick_s=0.1)
    with client_for(fake, tmp_path, countdown) as client:
        started = time.monotonic()
        issue = client.get("repos/acme/widgets/issues/1").json()
        elapsed = time.monotonic() - started
    assert issue["number"] == 1
    assert elapsed >= 1.0, "Retry-After: 1 must hold the retry back at least one second"
    assert fake.count(path=r"/issues/1$", status=403) == 1 and fake.count(path=r"/issues/1$", status=200) == 1
    assert "secondary rate limit" in screen.getvalue()  # the countdown line the user sees


def test_429_with_retry_after_and_502_then_success(fake, tmp_path):
    widgets_repo(fake)
    sleeper = RecordingSleeper(real=True)
    fake.fail(r"/issues/2$", 429, headers={"Retry-After": "1"}, body=SECONDARY)
    fake.fail(r"/pulls/101$", 502, body={"message": "Server Error"})
    with client_for(fake, tmp_path, sleeper) as client:
        assert client.get("repos/acme/widgets/issues/2").json()["number"] == 2
        diff = client.get("repos/acme/widgets/pulls/101", accept="application/vnd.github.diff").text
    assert diff.startswith("diff --git a/src/widgets/core.py")
    assert [round(s) for s, _ in sleeper.waits] == [1, 0]  # Retry-After, then the 502's short backoff
    assert client.stats.retries == 1 and client.stats.rate_limit_waits == 1


def test_a_server_that_keeps_failing_is_one_clear_error(fake, tmp_path, sleeper):
    widgets_repo(fake)
    fake.fail(r"/issues/1$", 502, times=10)
    with client_for(fake, tmp_path, sleeper, max_retries=2) as client, pytest.raises(GithubError) as caught:
        client.get("repos/acme/widgets/issues/1")
    assert caught.value.status == 502 and "HTTP 502" in str(caught.value)
    assert fake.count(path=r"/issues/1$") == 3


def test_primary_limit_spent_waits_for_the_reset_instead_of_failing(fake, tmp_path):
    widgets_repo(fake)
    fake.set_quota("core", remaining=1, reset_in=1.5)
    sleeper = RecordingSleeper(real=True)
    with client_for(fake, tmp_path, sleeper) as client:
        client.get("repos/acme/widgets/issues/1")  # spends the last request: X-RateLimit-Remaining: 0
        client.get("repos/acme/widgets/issues/2")  # must wait for X-RateLimit-Reset rather than be refused
    assert fake.count(status=403) == 0, "the client waited for the reset before asking again"
    assert len(sleeper.waits) == 1 and 0.5 <= sleeper.waits[0][0] <= 3.5
    assert "rate limit" in sleeper.waits[0][1]


def test_a_403_for_a_spent_limit_is_waited_out_and_retried(fake, tmp_path):
    widgets_repo(fake)
    fake.set_quota("core", remaining=0, reset_in=1.2)
    sleeper = RecordingSleeper(real=True)
    with client_for(fake, tmp_path, sleeper) as client:
        assert client.get("repos/acme/widgets/issues/1").json()["number"] == 1
    assert fake.count(status=403) == 1 and fake.count(status=200) == 1
    assert sleeper.waits and "primary rate limit" in sleeper.waits[0][1]


def test_a_permission_403_is_not_mistaken_for_a_rate_limit(fake, tmp_path, sleeper):
    widgets_repo(fake)
    fake.fail(r"/issues/1$", 403, body={"message": "Resource not accessible by integration"})
    with client_for(fake, tmp_path, sleeper) as client, pytest.raises(GithubError) as caught:
        client.get("repos/acme/widgets/issues/1")
    assert caught.value.status == 403 and "not accessible" in str(caught.value)
    assert sleeper.waits == []


def test_conditional_requests_reuse_the_disk_cache_and_cost_no_quota(fake, tmp_path, sleeper):
    widgets_repo(fake)
    with client_for(fake, tmp_path, sleeper) as client:
        first = client.get("repos/acme/widgets/issues/1")
    remaining_after_first = fake.quotas[(True, "core")].remaining
    with client_for(fake, tmp_path, sleeper) as client:  # a new process would see the same files
        again = client.get("repos/acme/widgets/issues/1")
    assert not first.from_cache and again.from_cache
    assert again.json() == first.json()
    assert fake.count(status=304) == 1 and fake.requests[-1].conditional
    assert fake.quotas[(True, "core")].remaining == remaining_after_first  # a 304 spends nothing
    assert client.stats.not_modified == 1 and client.stats.quota == 0


def test_link_pagination_walks_every_page(fake, tmp_path, sleeper):
    repo = widgets_repo(fake)
    numbers, url, params = [], "repos/acme/widgets/pulls", {"state": "closed", "per_page": 5}
    with client_for(fake, tmp_path, sleeper) as client:
        while url:
            reply = client.get(url, params=params)
            numbers += [pr["number"] for pr in reply.json()]
            url, params = reply.links.get("next"), None
            if url:
                assert f"/repositories/{repo.id}/pulls?" in url  # followed as GitHub gives it
    assert sorted(numbers) == sorted(repo.pulls)
    assert fake.count(path="pulls") == 4  # 16 PRs, 5 a page


def test_graphql_rate_limited_answer_is_waited_out(fake, tmp_path, sleeper):
    widgets_repo(fake)
    fake.fail(r"^/graphql$", 200, body={"errors": [{"type": "RATE_LIMITED",
                                                    "message": "API rate limit exceeded for user ID 1."}]},
              headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 30)})
    with client_for(fake, tmp_path, sleeper) as client:
        data = client.graphql(pulls_query(), {"owner": "acme", "name": "widgets", "first": 5, "after": None})
    assert len(data["repository"]["pullRequests"]["nodes"]) == 5
    assert len(sleeper.waits) == 1 and 25 <= sleeper.waits[0][0] <= 32  # until the reset, not a guess


def test_graphql_errors_and_bad_credentials_are_clear_and_carry_no_token(fake, tmp_path, sleeper):
    widgets_repo(fake)
    with client_for(fake, tmp_path, sleeper) as client, pytest.raises(GithubError) as missing:
        client.graphql(pulls_query(), {"owner": "acme", "name": "nothing", "first": 5, "after": None})
    assert "Could not resolve to a Repository" in str(missing.value)
    wrong = GithubClient(fake.url, token=TOKEN + "x", sleeper=sleeper)
    with wrong, pytest.raises(GithubError) as refused:
        wrong.get("repos/acme/widgets/issues/1")
    assert refused.value.status == 401 and "Bad credentials" in str(refused.value)
    assert TOKEN not in str(refused.value) and TOKEN not in repr(refused.value)


def test_anonymous_client_uses_no_authorization_and_refuses_graphql(fake, tmp_path, sleeper):
    widgets_repo(fake)
    with GithubClient(fake.url, sleeper=sleeper) as client:
        assert client.get("repos/acme/widgets/issues/1").json()["number"] == 1
        with pytest.raises(GithubError, match="needs a token"):
            client.graphql(pulls_query(), {})
    assert fake.requests[0].authorized is False
    assert fake.quotas[(False, "core")].limit == 60


def test_enterprise_graphql_url_is_derived_from_the_api_url():
    assert graphql_url_for("https://api.github.com") == "https://api.github.com/graphql"
    assert graphql_url_for("https://ghe.example.com/api/v3/") == "https://ghe.example.com/api/graphql"

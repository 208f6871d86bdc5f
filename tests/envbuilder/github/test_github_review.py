"""The optional LLM review, through the agent loop, against a scripted OpenAI-compatible server."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import TOKEN
from scenarios import EXPECTED, widgets_repo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))

from scripted_server import ScriptedServer, reply  # noqa: E402

from envbuilder.filters.github_review import make_reviewer, parse_review  # noqa: E402
from envbuilder.sources.github.client import GithubClient  # noqa: E402
from envbuilder.sources.github.miner import RepositoryMiner  # noqa: E402
from tasksynth.config import RoleConfig  # noqa: E402
from tasksynth.store import open_store  # noqa: E402

GOOD = '{"statement": true, "patch": true, "tests": true, "score": 0.9, "rationale": "Clear bug, focused fix."}'
BAD = ('Here is my review: {"statement": true, "patch": false, "tests": true, "score": 0.2, '
       '"rationale": "The patch does not touch resizing."}')


def test_review_scores_and_rationales_are_stored_and_low_scores_dropped(gh_config, fake, sleeper):
    widgets_repo(fake)

    def script(body):
        return reply(BAD if "Bug 2:" in body["messages"][-1]["content"] else GOOD)

    with ScriptedServer(script) as server:
        gh_config.github.llm_review = True
        gh_config.agents["github_reviewer"] = RoleConfig(base_url=server.base_url, model="scripted", max_retries=0)
        with open_store(gh_config) as store, GithubClient(fake.url, token=TOKEN, sleeper=sleeper) as client:
            miner = RepositoryMiner(client, store, gh_config, reviewer=make_reviewer(gh_config, store=store))
            report = miner.mine("acme/widgets")
            pulls = {r["number"]: r for r in store.query("SELECT * FROM github_pulls")}
            candidates = {r["instance_id"]: r for r in store.query("SELECT instance_id, metadata FROM candidates")}
            discard = store.query("SELECT reason, detail FROM discards WHERE item = 'acme/widgets#102'")[0]
            calls = store.query("SELECT role, status FROM agent_calls")
    # Only the three pairs that passed every heuristic filter were sent to the model.
    assert len(server.requests) == 3 and report.candidates == 2
    assert pulls[101]["review_score"] == 0.9 and pulls[101]["review_rationale"] == "Clear bug, focused fix."
    review = candidates["acme__widgets-101"]["metadata"]["review"]
    assert review == {"score": 0.9, "rationale": "Clear bug, focused fix."}
    assert pulls[102]["reason"] == "llm_review_rejected" and pulls[102]["review_score"] == 0.2
    assert discard == {"reason": "llm_review_rejected", "detail": "The patch does not touch resizing."}
    seen = server.requests[0].messages
    assert seen[0]["role"] == "system" and "You review candidate software-engineering tasks" in seen[0]["content"]
    assert "## Gold patch" in seen[-1]["content"] and "## Test patch" in seen[-1]["content"]
    assert {c["role"] for c in calls} == {"github_reviewer"} and len(calls) == 3  # recorded like every agent call
    assert {n for n, r in EXPECTED.items() if r} <= {n for n, p in pulls.items() if p["review_score"] is None}


def test_an_unreadable_or_failing_review_keeps_the_pair_without_a_score(gh_config):
    assert parse_review("It looks fine to me.", 0.5).score is None
    assert parse_review("It looks fine to me.", 0.5).accept
    assert parse_review("score: 0.3 because tests are weak", 0.5).accept is False
    assert parse_review(GOOD, 0.95).accept is False  # below the configured minimum
    with ScriptedServer([]) as server:  # an exhausted script answers HTTP 500
        gh_config.agents["github_reviewer"] = RoleConfig(base_url=server.base_url, model="scripted", max_retries=0)
        from envbuilder.sources.github.miner import ReviewRequest

        review = make_reviewer(gh_config)(ReviewRequest("acme/widgets", 1, "Bug", "diff", "diff"))
    assert review.accept and review.score is None and "failed" in review.rationale

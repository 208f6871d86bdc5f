"""The search pipeline end to end against the scripted model and a corpus built here: every discard reason
of the funnel, the trail of a kept item, the accounting, the Prefect artifact and the export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from corpus_fixtures import make_corpus  # noqa: E402
from pipeline_script import CASES, DOCUMENTS, EXPECTED_FUNNEL, script, write_config  # noqa: E402
from scripted_server import ScriptedServer  # noqa: E402

from search_synth.funnel import funnel  # noqa: E402
from tasksynth.config import load_config  # noqa: E402
from tasksynth.store import open_store  # noqa: E402


@pytest.fixture
def world(tmp_path, monkeypatch):
    """(config, server): the valley corpus ingested and every role pointing at the scripted server."""
    monkeypatch.chdir(tmp_path)
    with ScriptedServer(script) as server:
        config = load_config(write_config(tmp_path / "tasksynth.toml", tmp_path / "home", server.base_url))
        make_corpus(config, "valley", DOCUMENTS)
        yield config, server


def run_search(config, **params):
    from flows.registry import run_flow

    return run_flow(config, "search", {"entities": 8, "seed": 3, **params})


def test_every_discard_reason_and_one_kept_item(world, tmp_path):
    config, server = world
    summary = run_search(config)

    assert {k: summary["funnel"][k] for k in EXPECTED_FUNNEL} == EXPECTED_FUNNEL
    with open_store(config, read_only=True) as store:
        discards = {r["reason"]: r for r in store.query("SELECT * FROM discards WHERE stage LIKE 'search.%'")}
        questions = store.query("SELECT q.*, e.title FROM search_questions q JOIN search_entities e USING (entity_id)")
        items = store.query("SELECT * FROM search_items")
        calls = store.query("SELECT count(*) AS n, sum(cost_usd) AS cost FROM agent_calls")[0]
        verdicts = store.query("SELECT * FROM search_verdicts")
        candidates = store.query("SELECT * FROM search_candidates")
    expected_reasons = {case for case in CASES.values() if case != "kept"}
    assert set(discards) == expected_reasons
    assert all(d["detail"] for d in discards.values())  # every discard says why
    by_title = {q["title"]: q for q in questions}
    assert by_title["Ordo Venn"]["reason"] == "shortcut" and "alone pins" in by_title["Ordo Venn"]["detail"]
    assert by_title["Marrow"]["reason"] == "not_unique" and "lindholt" in by_title["Marrow"]["detail"]
    assert by_title["Lindholt"]["question"] is None  # the reply had no question; a reason, not a crash

    kept = [i for i in items if i["accepted"]]
    assert len(kept) == 1 and kept[0]["verdict"] == "kept" and kept[0]["answer"] == "Marrow"
    item = kept[0]
    assert [e["doc_id"] for e in item["evidence"]] == ["ordo-venn", "marrow"]
    assert item["logical_form"][0] == ["?monk", "born_in", "?answer"]
    assert item["filter_models"]["answer"] == ["answer-a", "answer-b", "answer-n"]
    assert item["filter_models"]["judge"] == ["grader"] and item["filter_models"]["verify"] == ["verifier"]
    assert item["weak_filter"] is False
    assert {c["answer"] for c in item["candidate_answers"]} == {"Lindholt", "Karsk", None}
    # the whole trail: three candidates, a truth check, three judgements, two second checks (no answer: no check)
    trail = [v for v in verdicts if v["question_id"] == item["question_id"]]
    assert sorted(v["check_name"] for v in trail) == ["judge", "judge", "judge", "second", "second", "truth"]
    assert {v["method"] for v in trail if v["check_name"] == "judge"} == {"judge", "rule"}
    # the two right answers ("Marrow", "marrow.") were decided by exact match, without the grader
    exact = [v for v in verdicts if v["check_name"] == "judge" and v["method"] == "exact"]
    assert len(exact) == 2 and {v["outcome"] for v in exact} == {"correct"}
    assert len(candidates) == 4 * 3  # verified questions x answerers, no answers for the unverified one

    # accounting: every request the server answered is a stored call, and the funnel reports its cost
    assert calls["n"] == len(server.requests)
    report = summary["funnel"]
    assert report["calls"] == calls["n"] and report["tokens"] > 0 and report["cost_usd"] == pytest.approx(calls["cost"])
    assert report["per_kept"]["tokens"] == report["tokens"]

    # a rerun makes no call and writes nothing twice
    before = len(server.requests)
    again = run_search(config)
    assert len(server.requests) == before
    assert {k: again["funnel"][k] for k in EXPECTED_FUNNEL} == EXPECTED_FUNNEL
    with open_store(config, read_only=True) as store:
        assert store.query("SELECT count(*) AS n FROM agent_calls")[0]["n"] == calls["n"]
        assert store.query("SELECT count(*) AS n FROM search_items")[0]["n"] == len(items)


def test_the_funnel_is_a_prefect_artifact_and_the_item_exports(world, tmp_path, tasksynth):
    config, _ = world
    run_search(config)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["search-funnel-valley"])))

    import asyncio

    found = asyncio.run(artifacts())
    assert found and found[-1].type == "table"
    table = found[-1].data if isinstance(found[-1].data, list) else json.loads(found[-1].data)
    assert [row["items"] for row in table[:5]] == list(EXPECTED_FUNNEL.values())

    from tasksynth.export import export_tasks

    with open_store(config, read_only=True) as store:
        result = export_tasks(store, tmp_path / "export", kinds=["search"])
    assert result.counts == {"search": 1}
    row = pq.read_table(tmp_path / "export" / result.shards[0]["path"]).to_pylist()[0]
    environment = json.loads(row["environment"])
    assert environment["corpus"] == "valley" and environment["content_hash"]
    assert environment["tools"] == ["search", "open"]

    from verifiers.rubric import grade_search

    assert grade_search(row, "marrow").score == 1.0
    assert grade_search(row, "Lindholt").correct is None  # no judge: no reward claimed


def test_weak_filter_when_only_weaker_models_ran_the_filters(world):
    config, _ = world
    config.search.strong_models = ["deepseek-v3.2"]
    run_search(config)
    with open_store(config, read_only=True) as store:
        kept = store.query("SELECT weak_filter FROM search_items WHERE accepted")
    assert kept == [{"weak_filter": True}]
    with open_store(config, read_only=True) as store:
        assert funnel(store, "valley")["kept_weak_filter"] == 1


def test_a_dead_endpoint_leaves_its_steps_for_the_rerun(world):
    """The verifier's endpoint fails for good: nothing past the questions is decided, nothing is lost, and
    the rerun (endpoint back) finishes the funnel without asking the question builder again."""
    from scripted_server import error

    config, server = world
    server._script = lambda body: error(503, "overloaded") if body["model"] == "verifier" else script(body)
    first = run_search(config)
    assert first["truth"]["failed"] == 5 and first["funnel"]["kept"] == 0
    assert all("EndpointDown" in e for e in first["truth"]["errors"])
    builder_calls = sum(r.body["model"] == "builder" for r in server.requests)

    server._script = script
    again = run_search(config)
    assert again["questions"]["already_done"] == 8 and again["truth"]["ran"] == 5
    assert sum(r.body["model"] == "builder" for r in server.requests) == builder_calls
    assert {k: again["funnel"][k] for k in EXPECTED_FUNNEL} == EXPECTED_FUNNEL


def test_the_demo_search_run_on_country_facts(tmp_path):
    """The demo's search part: the pycountry facts corpus, the demo's agent endpoint for every search role."""
    from flows.demo import DEMO_CORPUS, demo_agents, demo_search_config, demo_search_corpus
    from flows.search import search_pipeline
    from flows.runtime import prepare_prefect
    from scripted_server import reply
    from tasksynth.config import Config, RoleConfig

    config = Config(home=str(tmp_path / "home"))
    config.flows.retries = 0
    prepare_prefect(config)
    with ScriptedServer(lambda body: reply("I am not sure what to ask.")) as server:
        agent = RoleConfig(base_url=server.base_url, model="demo-agent", max_retries=1, backoff_s=0.01)
        demo_search_corpus(config)
        summary = search_pipeline(config=demo_search_config(demo_agents(config, agent)), corpus=DEMO_CORPUS,
                                  entities=2, seed=0)
    assert {r.body["model"] for r in server.requests} == {"demo-agent"}
    assert summary["funnel"]["entities"] == 2 and summary["funnel"]["kept"] == 0
    assert summary["funnel"]["discards"] == [{"stage": "search.question", "reason": "unparseable_question",
                                              "items": 2}]
    assert {r.body["max_tokens"] for r in server.requests} == {256}  # the demo's small question budget

"""The search pipeline end to end on the real bundled model (SmolLM2-135M through `tasksynth runner serve`)
over a small corpus of the Debian Jargon File (dict-jargon, installed at test time when missing). A 135M
model writes few usable questions: this checks that the run finishes, that every entity ends somewhere in
the funnel with a stored reason, and that the accounting matches the calls made."""

from __future__ import annotations

import pytest

from tasksynth.config import DEFAULT_RUNNER_MODEL, AnswererConfig, Config, RoleConfig
from tasksynth.store import open_store

pytestmark = pytest.mark.model

TINY = {"question_builder": (128, 2), "answerer": (32, 2), "verifier": (32, 2), "grader": (24, 1)}


def test_search_pipeline_on_the_bundled_model(runner_url, tmp_path):  # runner_url: tests/conftest.py
    from flows.registry import run_flow
    from search_synth.corpus import CorpusError, Limited, debian_source, ingest

    config = Config(home=str(tmp_path / "home"))
    config.flows.retries = 0
    for role, (max_tokens, max_turns) in TINY.items():
        config.agents[role] = RoleConfig(base_url=runner_url, model=DEFAULT_RUNNER_MODEL, max_tokens=max_tokens,
                                         max_turns=max_turns, temperature=0.0, timeout_s=300, max_retries=1,
                                         max_wall_s=600, context_window=2048, max_tool_result_chars=1500)
    config.search.answerers = [AnswererConfig(name="search", search=True),
                               AnswererConfig(name="no-search", search=False, max_turns=1)]
    try:
        ingest(config, "jargon", Limited(debian_source(["dict-jargon"]), 300), progress=False)
    except CorpusError as exc:
        pytest.skip(f"dict-jargon is not available here: {exc}")

    summary = run_flow(config, "search", {"corpus": "jargon", "entities": 2, "seed": 1})

    report = summary["funnel"]
    assert report["entities"] == 2
    assert report["entities"] >= report["questions"] >= report["verified"] >= report["all_wrong"] >= report["kept"]
    with open_store(config, read_only=True) as store:
        questions = store.query("SELECT status, reason FROM search_questions")
        discards = store.query("SELECT count(*) AS n FROM discards WHERE stage LIKE 'search.%'")[0]["n"]
        kept = store.query("SELECT weak_filter FROM search_items WHERE accepted")
        calls = store.query("SELECT count(*) AS n, sum(prompt_tokens + completion_tokens) AS tokens FROM agent_calls")[0]
    assert len(questions) == 2 and all(q["status"] == "ok" or q["reason"] for q in questions)
    # every question that did not make it has a discard with its reason (or is still waiting on none)
    assert discards == report["entities"] - report["kept"] - summary["keep"]["pending"]
    assert all(k["weak_filter"] for k in kept)  # only the bundled model ran the filters
    assert report["calls"] == calls["n"] >= report["entities"] and report["tokens"] == calls["tokens"]

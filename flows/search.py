"""Search QA synthesis: corpus -> long-tail entities -> question agent (+search) -> verifier (truth) ->
answer agents x N -> judge and second check -> keep -> search_items; and the import of existing QA data.

    entities   one step per selection (corpus, count, seed)           search_entities, search_entity_picks
    questions  one step per entity                                    search_questions | discards
    truth      one step per question that passed the model-free checks  search_verdicts
    answers    one step per (verified question, answerer configuration)  search_candidates
    judge      one step per candidate (judge, then second check)       search_verdicts
    keep       one step per verified question                          search_items | discards

Every step is `run_steps`, keyed by a content hash of its inputs and the settings that change a model's
output, so a rerun after a crash (or a dead endpoint) resumes: finished agent calls are not made again and
nothing is written twice. The truth check runs before the answer agents so that no answer is paid for on a
question whose ground truth does not hold. The steps live in `search_synth/`; the funnel is published as a
Prefect artifact.
"""

from __future__ import annotations

import threading
from typing import Any

from flows.prefect_flow import flow
from flows.runtime import flow_run, run_steps
from search_synth.answer_agents import answer_question, candidate_key, check_answerers
from search_synth.entities import long_tail_entities
from search_synth.funnel import funnel, funnel_markdown, funnel_table
from search_synth.importing import import_key, import_row, measure_item, read_import_file
from search_synth.keep import decide
from search_synth.logical_form import FactIndex
from search_synth.question_agent import build_question, question_key
from search_synth.records import (record_agents, record_candidate, record_decision, record_discard,
                                  record_question, record_verdicts)
from search_synth.verifier_agent import check_truth, judge_candidate, judge_key, truth_key
from tasksynth.config import Config, load_config
from tasksynth.hashing import content_hash
from tasksynth.store import open_store

ENTITY_SCHEMA = 1
KEEP_SCHEMA = 1


@flow(name="search-pipeline", validate_parameters=False)
def search_pipeline(config: Config | None = None, corpus: str | None = None, entities: int | None = None,
                    seed: int = 0, config_path: str | None = None) -> dict[str, Any]:
    """Synthesise search QA items from `entities` long-tail entities of a corpus; returns the funnel."""
    from search_synth.corpus import corpus_environment, open_corpus
    from search_synth.tools import corpus_tools, search_tools

    config = config or load_config(config_path)
    count = entities or config.search.entities
    check_answerers(config.search.answerers)
    opened = open_corpus(config, corpus)  # entities and facts always come from a local corpus
    info = opened.info
    # the agents search that corpus, or the web when search.backend names a web search API
    tools = corpus_tools(opened) if config.search.backend == "local" else search_tools(config)
    environment = corpus_environment(info)
    params = {"corpus": info.name, "content_hash": info.content_hash, "entities": count, "seed": seed}
    with open_store(config) as store, flow_run(store, "search", params) as summary:
        run_id = summary["run_id"]
        picked = _entities(store, config, opened, count, seed, run_id, summary)
        facts = _LazyFacts(opened)
        questions = _questions(store, config, opened, tools, facts, picked, run_id, summary)
        verified = _truth(store, config, tools, questions, run_id, summary)
        candidates = _answers(store, config, tools, verified, run_id, summary)
        _judge(store, config, tools, verified, candidates, run_id, summary)
        _keep(store, config, info.name, picked, verified, candidates, environment, run_id, summary)
        summary["funnel"] = report = funnel(store, info.name)
        publish_funnel(report, f"search-funnel-{info.name}")
        return summary


def _entities(store, config: Config, corpus, count: int, seed: int, run_id: str,
              summary: dict[str, Any]) -> list[dict[str, Any]]:
    info = corpus.info
    selection = content_hash(ENTITY_SCHEMA, info.content_hash, count, seed, config.search.min_support)

    def record(_, picks) -> None:
        store.insert("search_entities", [p.row(run_id) for p in picks])
        store.insert("search_entity_picks", [{"selection": selection, "entity_id": p.entity_id, "rank": rank}
                                             for rank, p in enumerate(picks)])

    report = run_steps(store, "search.entities", [selection],
                       lambda _: long_tail_entities(corpus, count, seed, min_support=config.search.min_support),
                       key=lambda s: s, record=record, config=config, run_id=run_id)
    summary["entities"] = report.as_dict()
    return store.query("SELECT e.* FROM search_entity_picks p JOIN search_entities e USING (entity_id) "
                       "WHERE p.selection = ? ORDER BY p.rank", [selection])


class _LazyFacts:
    """The corpus's fact index, built once and only when a question needs checking."""

    def __init__(self, corpus) -> None:
        self.corpus = corpus
        self._index: FactIndex | None = None
        self._lock = threading.Lock()

    def get(self) -> FactIndex:
        with self._lock:
            if self._index is None:
                self._index = FactIndex.from_documents(self.corpus.documents())
            return self._index


def _questions(store, config, corpus, tools, facts: _LazyFacts, picked, run_id, summary) -> list[dict[str, Any]]:
    name = corpus.info.name
    report = run_steps(store, "search.question", picked,
                       lambda e: build_question(config, corpus, tools, facts.get(), e),
                       key=lambda e: question_key(config, e),
                       record=lambda e, outcome: record_question(store, name, outcome, run_id),
                       config=config, run_id=run_id)
    summary["questions"] = report.as_dict()
    keys = [question_key(config, e) for e in picked]
    return _rows(store, "search_questions", "question_id", keys, "AND status = 'ok'")


def _truth(store, config, tools, questions, run_id, summary) -> list[dict[str, Any]]:
    report = run_steps(store, "search.truth", questions, lambda q: check_truth(config, tools, q),
                       key=lambda q: truth_key(config, q["question_id"]),
                       record=lambda q, outcome: record_verdicts(store, outcome, run_id),
                       config=config, run_id=run_id)
    summary["truth"] = report.as_dict()
    supported = {r["question_id"] for r in _rows(store, "search_verdicts", "question_id",
                                                  [q["question_id"] for q in questions],
                                                  "AND check_name = 'truth' AND outcome = 'supported'")}
    summary["truth_checked"] = [q["question_id"] for q in questions]
    return [q for q in questions if q["question_id"] in supported]


def _answers(store, config, tools, verified, run_id, summary) -> list[dict[str, Any]]:
    items = [(q, a) for q in verified for a in config.search.answerers]
    report = run_steps(store, "search.answer", items, lambda item: answer_question(config, tools, *item),
                       key=lambda item: candidate_key(config, item[0]["question_id"], item[1]),
                       record=lambda item, outcome: record_candidate(store, outcome, run_id),
                       config=config, run_id=run_id)
    summary["answers"] = report.as_dict()
    keys = [candidate_key(config, q["question_id"], a) for q, a in items]
    return _rows(store, "search_candidates", "candidate_id", keys)


def _judge(store, config, tools, verified, candidates, run_id, summary) -> None:
    by_id = {q["question_id"]: q for q in verified}
    items = [(by_id[c["question_id"]], c) for c in candidates]
    report = run_steps(store, "search.judge", items, lambda item: judge_candidate(config, tools, *item),
                       key=lambda item: judge_key(config, item[1]["candidate_id"]),
                       record=lambda item, outcome: record_verdicts(store, outcome, run_id),
                       config=config, run_id=run_id)
    summary["judge"] = report.as_dict()


def _keep(store, config, corpus_name, picked, verified, candidates, environment, run_id, summary) -> None:
    """Decide every question whose truth check is done (and, when verified, every candidate judged)."""
    entities = {e["entity_id"]: e for e in picked}
    checked = _rows(store, "search_questions", "question_id", summary.get("truth_checked", []))
    verdicts = _rows(store, "search_verdicts", "question_id", [q["question_id"] for q in checked])
    verified_ids = {q["question_id"] for q in verified}
    items = []
    for question in checked:
        qid = question["question_id"]
        mine = [c for c in candidates if c["question_id"] == qid]
        its_verdicts = [v for v in verdicts if v["question_id"] == qid]
        if qid in verified_ids:
            judged = {v["candidate_id"] for v in its_verdicts if v["check_name"] == "judge"}
            if len(mine) < len(config.search.answerers) or any(c["candidate_id"] not in judged for c in mine):
                continue  # a step failed this run; decided on the rerun
        items.append((question, mine, its_verdicts))
    pending = len(checked) - len(items)

    def key(item) -> str:
        question, mine, its_verdicts = item
        return content_hash(KEEP_SCHEMA, question["question_id"], sorted(c["candidate_id"] for c in mine),
                            sorted((v["verdict_id"], v["outcome"]) for v in its_verdicts),
                            sorted(config.search.strong_models))

    def record(item, decision) -> None:
        question = item[0]
        record_decision(store, corpus_name, entities.get(question["entity_id"]) or _entity(store, question),
                        question, item[1], decision, environment, run_id)

    report = run_steps(store, "search.keep", items, lambda item: decide(config, *item), key=key, record=record,
                       config=config, run_id=run_id)
    summary["keep"] = {**report.as_dict(), "pending": pending}


def _entity(store, question) -> dict[str, Any]:
    return store.query("SELECT * FROM search_entities WHERE entity_id = ?", [question["entity_id"]])[0]


def _rows(store, table: str, column: str, keys: list[str], extra: str = "") -> list[dict[str, Any]]:
    if not keys:
        return []
    marks = ", ".join("?" for _ in keys)
    rows = store.query(f"SELECT * FROM {table} WHERE {column} IN ({marks}) {extra} ORDER BY created_at, {column}",
                       list(keys))
    order = {k: i for i, k in enumerate(keys)}
    return sorted(rows, key=lambda r: order.get(r[column], 0))


def publish_funnel(report: dict[str, Any], key: str) -> None:
    """The funnel as Prefect artifacts (a table and a markdown page with the discards), in the flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    safe_key = "".join(c if c.isalnum() or c == "-" else "-" for c in key.lower())
    create_table_artifact(key=safe_key, table=funnel_table(report), description="search QA funnel")
    create_markdown_artifact(key=f"{safe_key}-discards", markdown=funnel_markdown(report),
                             description="search QA funnel and discards by reason")


@flow(name="search-import", validate_parameters=False)
def search_import(config: Config | None = None, path: str = "", corpus: str | None = None,
                  samples: int | None = None, margin: float | None = None,
                  config_path: str | None = None) -> dict[str, Any]:
    """Import a JSONL file of QA items, keeping those where search raises accuracy by `margin`."""
    from search_synth.corpus import corpus_environment, open_corpus
    from search_synth.tools import corpus_tools

    config = config or load_config(config_path)
    samples = samples or config.search.import_samples
    margin = config.search.import_margin if margin is None else margin
    items, problems = read_import_file(path)
    opened = open_corpus(config, corpus)
    tools = corpus_tools(opened)
    environment = corpus_environment(opened.info)
    params = {"path": str(path), "corpus": opened.info.name, "samples": samples, "margin": margin}
    with open_store(config) as store, flow_run(store, "search-import", params) as summary:
        run_id = summary["run_id"]
        summary["bad_lines"] = problems
        kept = []

        def record(item, outcome) -> None:
            record_agents(store, outcome)
            row = import_row(outcome, margin, opened.info.name, environment, run_id)
            store.insert("search_items", [row], on_conflict="replace")
            if not row["accepted"]:
                record_discard(store, "import", opened.info.name, item.item_id, "no_search_gain",
                               f"accuracy with search {outcome.accuracy_with_search:.2f}, without "
                               f"{outcome.accuracy_without_search:.2f}, margin {margin}", run_id)
            else:
                kept.append(item.item_id)

        report = run_steps(store, "search.import", items, lambda item: measure_item(config, tools, item, samples),
                           key=lambda item: import_key(config, item, samples), record=record, config=config,
                           run_id=run_id)
        summary["import"] = report.as_dict()
        ids = [i.item_id for i in items]
        summary["items"] = _rows(store, "search_items", "item_id", ids) if ids else []
        summary["kept"] = sum(1 for r in summary["items"] if r["accepted"])
        for row in summary["items"]:
            row.pop("created_at", None)
        return summary

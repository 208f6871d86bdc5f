"""Writing the pipeline's outputs: only the flow process calls these (the store's one writer), inside the
transaction that finishes the step, so a step's rows, its agents' records and its finished key land
together or not at all. Every insert ignores a row whose key exists: a rerun writes nothing twice."""

from __future__ import annotations

import json
from typing import Any

from agent import write_records
from search_synth.keep import Decision
from verifiers.rubric import default_rubric

STAGE = "search"


def record_agents(store, outcome) -> None:
    write_records(store, outcome.calls, outcome.trajectories)


def record_discard(store, step: str, corpus: str, item: str, reason: str, detail: str | None,
                   run_id: str | None) -> None:
    store.insert("discards", [{"stage": f"{STAGE}.{step}", "source": corpus, "item": item, "repo": None,
                               "reason": reason, "detail": (detail or "")[:2000], "run_id": run_id}])


def record_question(store, corpus: str, outcome, run_id: str | None) -> None:
    record_agents(store, outcome)
    store.insert("search_questions", [outcome.row(run_id)])
    if outcome.status != "ok":
        record_discard(store, "question", corpus, outcome.question_id, outcome.reason, outcome.detail, run_id)


def record_candidate(store, outcome, run_id: str | None) -> None:
    record_agents(store, outcome)
    store.insert("search_candidates", [outcome.row(run_id)])


def record_verdicts(store, outcome, run_id: str | None) -> None:
    record_agents(store, outcome)
    store.insert("search_verdicts", [{**row, "run_id": run_id} for row in outcome.rows])


def record_decision(store, corpus: str, entity: dict[str, Any], question: dict[str, Any],
                    candidates: list[dict[str, Any]], decision: Decision, environment: dict[str, Any],
                    run_id: str | None) -> None:
    """The question's search_items row (accepted when kept) and, when discarded, its discards row."""
    verdict = "kept" if decision.kept else decision.reason
    store.insert("search_items", [{
        "item_id": question["question_id"], "entity": entity["title"], "question": question["question"],
        "answer": question["answer"], "rubric": default_rubric(question["answer"]),
        "evidence": json.dumps(question["evidence"] or []),
        "candidate_answers": json.dumps([{"answerer": c["answerer"], "model": c["model"], "with_search": c["with_search"],
                               "answer": c["answer"]} for c in candidates]),
        "verdict": verdict, "accepted": decision.kept,
        "metadata": {"run_id": run_id, "entity_id": entity["entity_id"], "doc_id": entity["doc_id"],
                     "detail": decision.detail, "environment": environment, "steps": question.get("steps") or []},
        "question_id": question["question_id"], "corpus": corpus, "source": "synth",
        "logical_form": json.dumps(question["logical_form"]), "filter_models": decision.filter_models,
        "weak_filter": decision.weak_filter, "run_id": run_id}], on_conflict="replace")
    if not decision.kept:
        record_discard(store, "keep", corpus, question["question_id"], decision.reason, decision.detail, run_id)

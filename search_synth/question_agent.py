"""The question construction agent (DeepSeek-V3.2 report, search agent: "question construction"; ASearcher's
iterative fuzzing): from a long-tail entity, gather facts with search, then make the question harder step by
step until no single fact gives the answer away:

- blur a fact that points straight at the answer (exact year -> decade, name -> description);
- replace an entity by a sub-question whose answer is that entity;
- add a constraint from a linked entity.

    inputs:  an entity (search_entities row), the corpus (search and open tools), the fact index
    outputs: search_questions(question, answer, evidence [{doc_id, quote}], logical_form, steps, status,
             reason, detail), the agent's agent_calls / trajectories

The reply is parsed tolerantly; checks that need no model run before anything else spends a call:
`unparseable_question` (no JSON object with a question and an answer), `answer_in_question`,
`evidence_not_found` (a quote that is not in the document it cites), `no_logical_form`, and the logical
form's `shortcut` / `not_unique` (search_synth.logical_form).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent import CallRecord, TrajectoryRecord
from search_synth.logical_form import FactIndex, LogicalFormError, check_form, parse_logical_form
from search_synth.replies import first_json_object
from search_synth.roles import QUESTION_BUILDER, role_settings, run_role, settings_key
from tasksynth.config import Config
from tasksynth.hashing import content_hash
from verifiers.answer_match import normalize_answer

QUESTION_SCHEMA = 1  # bump when the message, the parser or the checks change
ENTITY_TEXT_CHARS = 1200  # the opening of the entity's document, shown so a small model has facts at once


@dataclass
class QuestionOutcome:
    question_id: str
    entity_id: str
    status: str  # ok | discarded
    question: str | None = None
    answer: str | None = None
    evidence: list[dict[str, str]] = field(default_factory=list)
    logical_form: list[list[str]] | None = None
    steps: list[str] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None
    model: str = ""
    trajectory_id: str | None = None
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)

    def row(self, run_id: str | None) -> dict[str, Any]:
        return {"question_id": self.question_id, "entity_id": self.entity_id, "question": self.question,
                "answer": self.answer, "evidence": json.dumps(self.evidence),
                "logical_form": json.dumps(self.logical_form), "steps": json.dumps(self.steps), "status": self.status, "reason": self.reason, "detail": self.detail,
                "model": self.model, "trajectory_id": self.trajectory_id, "run_id": run_id}


def question_key(config: Config, entity: dict[str, Any]) -> str:
    settings = role_settings(config, QUESTION_BUILDER)
    return content_hash(QUESTION_SCHEMA, entity["entity_id"], settings_key(config, QUESTION_BUILDER, settings))


def build_question(config: Config, corpus, tools: list, facts: FactIndex, entity: dict[str, Any]) -> QuestionOutcome:
    """Run the question builder on one entity and check what it wrote."""
    question_id = question_key(config, entity)
    page = corpus.open(entity["doc_id"], 0)
    run = run_role(config, QUESTION_BUILDER, construction_message(entity, page.text), tools=tools)
    base = QuestionOutcome(question_id=question_id, entity_id=entity["entity_id"], status="discarded",
                           model=run.model, trajectory_id=run.result.trajectory_id, calls=run.calls,
                           trajectories=run.trajectories)
    if run.result.final_answer is None:
        base.reason, base.detail = "no_question", f"the agent stopped without a reply ({run.result.stop_reason})"
        return base
    return check_reply(base, run.result.final_answer, corpus, facts)


def construction_message(entity: dict[str, Any], text: str) -> str:
    opening = text[:ENTITY_TEXT_CHARS] + (" [...]" if len(text) > ENTITY_TEXT_CHARS else "")
    return (f"Entity: {entity['title']} (document id {entity['doc_id']})\n\n"
            f"Its document begins:\n{opening}\n\n"
            "Search for more facts about it and the entities it links to, then write one hard question "
            "whose answer is a short string, as the JSON object described in your instructions.")


def check_reply(outcome: QuestionOutcome, reply: str, corpus, facts: FactIndex) -> QuestionOutcome:
    """Parse the builder's reply into `outcome` and run the model-free checks; the first failure is the
    discard reason."""
    data = first_json_object(reply)
    question = str(data.get("question") or "").strip() if data else ""
    answer = data.get("answer") if data else None
    answer = str(answer).strip() if isinstance(answer, (str, int, float)) and str(answer).strip() else None
    if not question or not answer:
        outcome.reason = "unparseable_question"
        outcome.detail = f"no JSON object with a question and an answer in the reply: {reply[:300]!r}"
        return outcome
    outcome.question, outcome.answer = question, answer
    outcome.evidence = _evidence(data.get("evidence"))
    outcome.steps = [str(s) for s in data.get("steps") or [] if str(s).strip()][:10]
    if normalize_answer(answer) and f" {normalize_answer(answer)} " in f" {normalize_answer(question)} ":
        outcome.reason, outcome.detail = "answer_in_question", "the question contains its own answer"
        return outcome
    missing = _missing_quotes(outcome.evidence, corpus)
    if not outcome.evidence or missing:
        outcome.reason = "evidence_not_found"
        outcome.detail = ("no evidence was given" if not outcome.evidence
                          else f"not found in the cited document: {missing[0]}")
        return outcome
    try:
        triples = parse_logical_form(data.get("logical_form"))
    except LogicalFormError as exc:
        outcome.reason, outcome.detail = "no_logical_form", str(exc)
        return outcome
    outcome.logical_form = [list(t) for t in triples]
    form = check_form(triples, facts)
    if form.reason:
        outcome.reason, outcome.detail = form.reason, form.detail
        return outcome
    outcome.status, outcome.reason, outcome.detail = "ok", None, form.detail
    return outcome


def _evidence(raw: Any) -> list[dict[str, str]]:
    items = raw if isinstance(raw, list) else []
    evidence = []
    for item in items[:12]:
        if isinstance(item, dict) and item.get("doc_id"):
            quote = item.get("quote") or item.get("fact") or item.get("text") or ""
            evidence.append({"doc_id": str(item["doc_id"]), "quote": str(quote).strip()})
    return evidence


def _missing_quotes(evidence: list[dict[str, str]], corpus) -> list[str]:
    """Quotes that do not occur (normalised) in the whole text of the document they cite."""
    missing = []
    texts: dict[str, str] = {}
    for item in evidence:
        doc_id = item["doc_id"]
        if doc_id not in texts:
            texts[doc_id] = normalize_answer(_whole_text(corpus, doc_id))
        quote = normalize_answer(item["quote"])
        if not quote or quote not in texts[doc_id]:
            missing.append(f"{doc_id}: {item['quote'][:120]!r}")
    return missing


def _whole_text(corpus, doc_id: str) -> str:
    try:
        first = corpus.open(doc_id, 0)
    except Exception:  # noqa: BLE001 - an unknown id cited by a model is missing evidence, not a crash
        return ""
    parts = [first.title, first.text, " ".join(f"{k} {v}" for k, v in (first.attributes or {}).items())]
    for page in range(1, first.pages):
        parts.append(corpus.open(doc_id, page).text)
    return "\n".join(parts)

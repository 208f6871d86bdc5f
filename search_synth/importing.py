"""`tasksynth search import FILE.jsonl`: existing QA data, kept where search helps.

Each line is a JSON object (schema in docs/search_qa.md):

    {"id": "q17", "question": "...", "answer": "Jacques Cousteau" | ["alias", ...],
     "evidence": [{"doc_id": "...", "quote": "..."}], "metadata": {...}}     # id, evidence, metadata optional

An item is answered k times with search and k times without (the `answerer` role, `search.import_samples`
each), every answer graded by `verifiers.answer_match` (exact match, then the grader role). It is kept when
accuracy with search exceeds accuracy without by `search.import_margin`; both accuracies are stored, and a
dropped item is discarded as `no_search_gain`. Bad lines do not stop the import: each is reported with its
line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import CallRecord, TrajectoryRecord
from search_synth.answer_agents import answering_message
from search_synth.replies import short_answer
from search_synth.roles import ANSWERER, GRADER, SearchSynthError, role_settings, run_role, settings_key
from tasksynth.config import Config
from tasksynth.hashing import content_hash
from verifiers.answer_match import aliases, match_answer
from verifiers.rubric import default_rubric

IMPORT_SCHEMA = 1


@dataclass
class ImportItem:
    item_id: str
    line: int
    question: str
    answers: list[str]
    evidence: list[Any] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportOutcome:
    item: ImportItem
    accuracy_with_search: float
    accuracy_without_search: float
    samples: list[dict[str, Any]]
    calls: list[CallRecord] = field(default_factory=list)
    trajectories: list[TrajectoryRecord] = field(default_factory=list)


def read_import_file(path: str | Path) -> tuple[list[ImportItem], list[str]]:
    """(items, problems): every problem names its line number."""
    path = Path(path)
    if not path.is_file():
        raise SearchSynthError(f"no such file: {path}")
    items: list[ImportItem] = []
    problems: list[str] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                problems.append(f"line {number}: not JSON ({exc})")
                continue
            problem = _problem(data)
            if problem:
                problems.append(f"line {number}: {problem}")
                continue
            answers = aliases(data["answer"] if isinstance(data["answer"], (str, list)) else str(data["answer"]))
            item_id = str(data.get("id") or content_hash(data["question"], answers))
            if item_id in seen:
                problems.append(f"line {number}: id {item_id!r} repeats an earlier line")
                continue
            seen.add(item_id)
            items.append(ImportItem(item_id=f"import-{item_id}", line=number, question=data["question"].strip(),
                                    answers=answers, evidence=data.get("evidence") or [],
                                    metadata=data.get("metadata") or {}))
    return items, problems


def _problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    if not isinstance(data.get("question"), str) or not data["question"].strip():
        return "no \"question\" (a non-empty string)"
    answer = data.get("answer")
    if isinstance(answer, list):
        if not answer or not all(isinstance(a, (str, int, float)) and str(a).strip() for a in answer):
            return "\"answer\" must be a non-empty string or a list of them"
    elif not isinstance(answer, (str, int, float)) or not str(answer).strip():
        return "no \"answer\" (a non-empty string or a list of aliases)"
    if "evidence" in data and not isinstance(data["evidence"], list):
        return "\"evidence\" must be a list"
    if "metadata" in data and not isinstance(data["metadata"], dict):
        return "\"metadata\" must be an object"
    return None


def import_key(config: Config, item: ImportItem, samples: int) -> str:
    return content_hash(IMPORT_SCHEMA, item.item_id, item.question, item.answers, samples,
                        settings_key(config, ANSWERER, role_settings(config, ANSWERER)),
                        settings_key(config, GRADER, role_settings(config, GRADER)))


def measure_item(config: Config, tools: list, item: ImportItem, samples: int) -> ImportOutcome:
    """Answer the item `samples` times with search and as often without; grade every answer."""
    records: list = []
    graded: list[dict[str, Any]] = []

    def judge(prompt: str) -> str:
        run = run_role(config, GRADER, prompt)
        records.append(run)
        return run.result.final_answer or ""

    for with_search in (True, False):
        for sample in range(samples):
            run = run_role(config, ANSWERER, answering_message(item.question, with_search),
                           tools=tools if with_search else [])
            records.append(run)
            answer = short_answer(run.result.final_answer)
            match = match_answer(item.question, answer, item.answers, judge=judge)
            graded.append({"with_search": with_search, "sample": sample, "answer": answer,
                           "correct": bool(match.correct), "method": match.method,
                           "trajectory_id": run.result.trajectory_id})
    with_rate = sum(g["correct"] for g in graded if g["with_search"]) / samples
    without_rate = sum(g["correct"] for g in graded if not g["with_search"]) / samples
    return ImportOutcome(item, with_rate, without_rate, graded,
                         calls=[c for r in records for c in r.calls],
                         trajectories=[t for r in records for t in r.trajectories])


def import_row(outcome: ImportOutcome, margin: float, corpus: str | None, environment: dict[str, Any] | None,
               run_id: str | None) -> dict[str, Any]:
    item = outcome.item
    gain = outcome.accuracy_with_search - outcome.accuracy_without_search
    kept = gain >= margin - 1e-9
    return {"item_id": item.item_id, "entity": str(item.metadata.get("entity", "")), "question": item.question,
            "answer": " | ".join(item.answers), "rubric": default_rubric(" | ".join(item.answers)),
            "evidence": json.dumps(item.evidence),
            "candidate_answers": json.dumps(outcome.samples),
            "verdict": "kept" if kept else "no_search_gain", "accepted": kept,
            "metadata": {**item.metadata, "run_id": run_id, "line": item.line, "margin": margin,
                         "environment": environment or {}},
            "corpus": corpus, "source": "import", "accuracy_with_search": outcome.accuracy_with_search,
            "accuracy_without_search": outcome.accuracy_without_search, "run_id": run_id}

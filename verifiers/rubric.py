"""Rubric grading of a search answer from an exported item alone: the reward a trainer computes.

An item's `verifier` column (export kind `search`) holds the reference answer and a rubric: dimensions with
weights that sum to 1. The first dimension is always `correct` (the answer is the reference). A normalised
exact match (`verifiers.answer_match`) scores every dimension in full with no model: the reference itself
is concise and grounded. Otherwise the judge (a generative reward model: any callable from prompt to reply
text) scores each dimension 0 or 1; without a judge the score is 0 and the method says why.

    from verifiers.rubric import grade_search
    grade = grade_search(item, "Jacques Cousteau", judge=my_model)   # item: an exported row, or its verifier
    grade.score, grade.correct, grade.method, grade.dimensions
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from verifiers.answer_match import Judge, aliases, exact_match, json_object_in, normalize_answer, read_verdict

DEFAULT_DIMENSIONS = (
    {"name": "correct", "weight": 0.8, "criterion": "The answer names the same thing as the reference answer."},
    {"name": "grounded", "weight": 0.1,
     "criterion": "The answer adds no claim that contradicts the evidence or hedges between options."},
    {"name": "concise", "weight": 0.1, "criterion": "The answer is short: a name, a number or a date."},
)

RUBRIC_PROMPT = """You grade an answer to a question against a reference answer and a rubric.

Question: {question}
Reference answer: {reference}
Evidence: {evidence}
Answer to grade: {answer}

Rubric (score each item 1 if it holds, else 0):
{items}

Reply with a JSON object and nothing else: {{"scores": {{{example}}}, "reason": "<one sentence>"}}"""



class RubricError(ValueError):
    """An item has no reference answer, or its rubric is malformed."""


@dataclass
class Grade:
    score: float                 # weighted sum of the dimension scores, 0..1
    correct: bool | None         # the `correct` dimension; None when nothing could decide it
    method: str                  # exact | empty | judge | no_judge | unreadable
    dimensions: dict[str, float] = field(default_factory=dict)
    detail: str = ""


def default_rubric(answer: str) -> dict[str, Any]:
    """The rubric stored with a synthesised item."""
    return {"dimensions": [dict(d) for d in DEFAULT_DIMENSIONS], "reference": answer}


def grade_search(item: Mapping[str, Any], answer: str | None, judge: Judge | None = None) -> Grade:
    """Grade `answer` for an item: an exported row (its `verifier` JSON is read), or the verifier dict."""
    verifier = _verifier_of(item)
    reference = verifier.get("answer")
    if not reference:
        raise RubricError("the item has no reference answer")
    dimensions = _dimensions(verifier.get("rubric"))
    question = verifier.get("question") or _question_of(item)
    if not normalize_answer(answer):
        return Grade(0.0, False, "empty", {d["name"]: 0.0 for d in dimensions}, "no answer was given")
    if exact_match(answer, reference):
        return Grade(1.0, True, "exact", {d["name"]: 1.0 for d in dimensions})
    if judge is None:
        return Grade(0.0, None, "no_judge", {d["name"]: 0.0 for d in dimensions},
                     "no exact match and no judge to ask")
    items = "\n".join(f"- {d['name']}: {d.get('criterion', '')}" for d in dimensions)
    reply = judge(RUBRIC_PROMPT.format(
        question=question or "(not given)", reference=" | ".join(aliases(reference)),
        evidence=json.dumps(verifier.get("evidence") or [], ensure_ascii=False)[:2000], answer=answer.strip(),
        items=items, example=", ".join(f'"{d["name"]}": 0 | 1' for d in dimensions)))
    scores = _read_scores(reply, [d["name"] for d in dimensions])
    if scores is None:
        return Grade(0.0, None, "unreadable", {d["name"]: 0.0 for d in dimensions},
                     f"the judge's reply could not be read: {(reply or '')[:200]!r}")
    if not scores.get("correct"):  # a wrong answer earns nothing for style
        scores = {name: 0.0 for name in scores}
    total = sum(d["weight"] * scores[d["name"]] for d in dimensions)
    return Grade(round(total, 6), bool(scores.get("correct")), "judge", scores)


def _verifier_of(item: Mapping[str, Any]) -> dict[str, Any]:
    verifier = item.get("verifier", item)
    if isinstance(verifier, str):
        try:
            verifier = json.loads(verifier)
        except ValueError as exc:
            raise RubricError(f"the item's verifier is not JSON: {exc}") from None
    if not isinstance(verifier, Mapping):
        raise RubricError("the item's verifier must be a JSON object")
    return dict(verifier)


def _question_of(item: Mapping[str, Any]) -> str:
    prompt = item.get("prompt") or []
    users = [m.get("content", "") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    return users[-1] if users else ""


def _dimensions(rubric: Any) -> list[dict[str, Any]]:
    if isinstance(rubric, str):
        try:
            rubric = json.loads(rubric)
        except ValueError as exc:
            raise RubricError(f"the rubric is not JSON: {exc}") from None
    raw = (rubric or {}).get("dimensions") if isinstance(rubric, Mapping) else rubric
    if not raw:
        return [dict(d) for d in DEFAULT_DIMENSIONS]
    dimensions = []
    for d in raw:
        if not isinstance(d, Mapping) or not d.get("name") or not isinstance(d.get("weight", 0), (int, float)):
            raise RubricError(f"a rubric dimension needs a name and a numeric weight, got {d!r}")
        dimensions.append({"name": str(d["name"]), "weight": float(d.get("weight", 0)),
                           "criterion": str(d.get("criterion", ""))})
    if dimensions[0]["name"] != "correct":
        raise RubricError("a rubric's first dimension must be 'correct'")
    total = sum(d["weight"] for d in dimensions)
    if total <= 0:
        raise RubricError("a rubric's weights must sum to more than 0")
    return [{**d, "weight": d["weight"] / total} for d in dimensions]


def _read_scores(reply: str | None, names: list[str]) -> dict[str, float] | None:
    if not reply:
        return None
    value = json_object_in(reply)
    if value is not None:
        scores = value.get("scores", value)
        if isinstance(scores, dict) and "correct" in scores:
            return {n: _score(scores.get(n)) for n in names}
    verdict, _ = read_verdict(reply)  # a judge that only said correct / incorrect
    if verdict is None:
        return None
    return {n: 1.0 if verdict else 0.0 for n in names}


def _score(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return max(0.0, min(1.0, float(value)))
    decided = read_verdict(str(value))[0] if value is not None else None
    return 1.0 if decided else 0.0

"""Grading a search answer from an exported item alone: normalised exact match first, the judge only when
needed, rubric scores, and replies of a judge that cannot be read."""

from __future__ import annotations

import json

import pytest

from verifiers.answer_match import exact_match, match_answer, normalize_answer, read_verdict
from verifiers.rubric import RubricError, default_rubric, grade_search

ITEM = {"prompt": [{"role": "user", "content": "Which port town on the Tesse was the monk born in?"}],
        "verifier": json.dumps({"type": "rubric", "answer": "Marrow | Marrow-on-Tesse",
                                "rubric": default_rubric("Marrow"), "evidence": []})}


@pytest.mark.parametrize("answer, reference", [
    ("The Eiffel Tower.", "eiffel tower"), ("Answer: 1,200", "1200"), ("Zürich", "zurich"),
    ("three", "3"), ("marrow-on-tesse", "Marrow | Marrow-on-Tesse"),
])
def test_normalised_exact_match(answer, reference):
    assert exact_match(answer, reference)


def test_different_answers_and_empty_answers_do_not_match():
    assert not exact_match("Lindholt", "Marrow")
    assert not exact_match("", "Marrow") and normalize_answer(None) == ""


def test_the_judge_is_asked_only_when_exact_match_fails():
    asked = []

    def judge(prompt: str) -> str:
        asked.append(prompt)
        return '{"grade": "correct", "reason": "same town"}'

    assert match_answer("q", "marrow", "Marrow", judge=judge).method == "exact" and not asked
    result = match_answer("q", "the town of Marrow on the Tesse", "Marrow", judge=judge)
    assert result.correct is True and result.method == "judge" and len(asked) == 1
    assert "Reference answer: Marrow" in asked[0]
    assert match_answer("q", "Lindholt", "Marrow").correct is None  # no judge: undecided, not a reward


@pytest.mark.parametrize("reply, verdict", [
    ('```json\n{"grade": "incorrect"}\n```', False), ("Correct - it is the same place.", True),
    ("no.", False), ("the model rambled", None), ("", None),
])
def test_judge_replies_are_read_tolerantly(reply, verdict):
    assert read_verdict(reply)[0] is verdict


def test_grade_search_from_an_exported_row():
    assert grade_search(ITEM, "Marrow-on-Tesse").score == 1.0
    assert grade_search(ITEM, "").method == "empty"
    judged = grade_search(ITEM, "a town by the river", judge=lambda p: '{"scores": {"correct": 1, "grounded": 1, '
                                                                      '"concise": 0}}')
    assert judged.method == "judge" and judged.correct and judged.score == pytest.approx(0.9)
    wrong = grade_search(ITEM, "Lindholt", judge=lambda p: '{"scores": {"correct": 0, "concise": 1}}')
    assert wrong.score == 0.0 and wrong.correct is False  # style earns nothing when the answer is wrong
    assert grade_search(ITEM, "Lindholt", judge=lambda p: "hmm").method == "unreadable"


def test_a_malformed_rubric_is_one_clear_error():
    with pytest.raises(RubricError, match="first dimension must be 'correct'"):
        grade_search({"verifier": {"answer": "x", "rubric": {"dimensions": [{"name": "style", "weight": 1}]}}}, "y")
    with pytest.raises(RubricError, match="no reference answer"):
        grade_search({"verifier": {}}, "y")

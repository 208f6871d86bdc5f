"""The pipeline's model-free parts: logical-form shortcut and uniqueness checks over a corpus's facts,
tolerant reading of model replies, and the keep decision's order of reasons."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_script import DOCUMENTS, GOOD_FORM  # noqa: E402

from search_synth.keep import decide  # noqa: E402
from search_synth.logical_form import FactIndex, LogicalFormError, check_form, parse_logical_form  # noqa: E402
from search_synth.replies import first_json_object, short_answer  # noqa: E402
from tasksynth.config import Config  # noqa: E402

FACTS = FactIndex.from_documents(DOCUMENTS)


def test_a_form_with_one_answer_passes():
    check = check_form(parse_logical_form(GOOD_FORM), FACTS)
    assert check.reason is None and check.evaluated and check.detail == "1 entity satisfies the form"


def test_one_triple_that_pins_the_answer_is_a_shortcut():
    check = check_form(parse_logical_form([["?answer", "founder", "Ordo Venn"], ["?answer", "kind", "abbey"]]), FACTS)
    assert check.reason == "shortcut" and "founder" in check.detail
    assert check_form(parse_logical_form([["?answer", "born_in", "?x"]]), FACTS).reason == "shortcut"


def test_a_form_two_entities_satisfy_is_not_unique():
    check = check_form(parse_logical_form([["?answer", "river", "Tesse"], ["?answer", "kind", "settlement"]]), FACTS)
    assert check.reason == "not_unique" and "lindholt" in check.detail and "marrow" in check.detail


def test_links_are_facts_and_unknown_relations_leave_the_form_unchecked():
    linked = parse_logical_form([["?answer", "link", "Marrow"], ["?answer", "link", "Tesse River"]])
    assert check_form(linked, FACTS).detail == "1 entity satisfies the form"  # only Old Ferry links to both
    unknown = check_form(parse_logical_form([["?answer", "painted_by", "?x"], ["?x", "born", "1900"]]), FACTS)
    assert unknown.reason is None and not unknown.evaluated


@pytest.mark.parametrize("raw", [None, [], [["a", "b"]], [["?x", "r", "y"]], "text"])
def test_malformed_forms_are_rejected_with_a_reason(raw):
    with pytest.raises(LogicalFormError):
        parse_logical_form(raw)


def test_replies_are_read_tolerantly():
    assert first_json_object('Sure!\n```json\n{"question": "q?", "answer": "a",}\n```') == {"question": "q?",
                                                                                          "answer": "a"}
    assert first_json_object("no json here") is None
    assert short_answer("I looked it up.\nAnswer: **Marrow**.") == "Marrow"
    assert short_answer("Answer: I don't know") is None and short_answer("") is None


def _verdict(check, outcome, candidate=None, model="smollm2-135m-dsa"):
    return {"check_name": check, "outcome": outcome, "candidate_id": candidate, "model": model, "reason": "r",
            "verdict_id": f"{check}{candidate}"}


def test_keep_looks_for_reasons_in_order_and_marks_weak_filters():
    config = Config()
    question = {"question_id": "q", "model": "builder"}
    candidates = [{"candidate_id": "a", "answerer": "a", "model": "smollm2-135m-dsa", "with_search": True,
                   "answer": "x"},
                  {"candidate_id": "n", "answerer": "n", "model": "smollm2-135m-dsa", "with_search": False,
                   "answer": "y"}]
    truth = _verdict("truth", "supported", model="smollm2-135m-dsa")
    wrong = [_verdict("judge", "wrong", c) for c in ("a", "n")]
    kept = decide(config, question, candidates, [truth, *wrong])
    assert kept.kept and kept.weak_filter  # only the bundled model ran the filters
    both_right = [_verdict("judge", "correct", c) for c in ("a", "n")]
    assert decide(config, question, candidates, [truth, *both_right]).reason == "answered_without_search"
    assert decide(config, question, candidates, [_verdict("truth", "unsupported"), *both_right]).reason == \
        "truth_unverified"
    undecided = [_verdict("judge", "undecided", "a"), wrong[1]]
    assert decide(config, question, candidates, [truth, *undecided]).reason == "unjudged"
    ambiguous = [*wrong, _verdict("second", "could_be_correct", "a")]
    assert decide(config, question, candidates, [truth, *ambiguous]).reason == "ambiguous"

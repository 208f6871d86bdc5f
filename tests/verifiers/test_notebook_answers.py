"""The code-interpreter answer rules, as a trainer uses them: a gold answer, a format, a model's final text."""

from __future__ import annotations

import pytest

from verifiers.notebook import AnswerFormatError, grade_answer, normalise

NUMBER = {"type": "number", "decimals": 2}


@pytest.mark.parametrize("given", ["43.92", "The mean is 43.92 mm.", "43.9213", "1.2e1 is not it, 43.92", 43.921,
                                   '{"mean": 43.92}', "```json\n43.92\n```"])
def test_a_number_is_right_at_its_precision_however_it_is_written(given):
    if given == "1.2e1 is not it, 43.92":
        assert not grade_answer(NUMBER, 43.9218, given).correct  # the first number in the text counts
    else:
        assert grade_answer(NUMBER, 43.9218, given).correct


def test_a_number_off_by_a_unit_of_the_last_decimal_is_wrong():
    grade = grade_answer(NUMBER, 43.92, "43.93")
    assert not grade.correct and "expected 43.92" in grade.reason
    assert grade_answer({"type": "number", "decimals": 0}, 1234, "1,234 penguins").correct
    assert not grade_answer(NUMBER, 1.0, "no idea").correct


def test_lists_sets_and_text_are_normalised():
    assert grade_answer({"type": "list"}, ["Adelie", "Gentoo"], "adelie, GENTOO").correct
    assert not grade_answer({"type": "list"}, ["Adelie", "Gentoo"], '["Gentoo", "Adelie"]').correct
    assert grade_answer({"type": "set"}, ["Adelie", "Gentoo"], '["Gentoo", "Adelie", "gentoo"]').correct
    assert grade_answer({"type": "list", "decimals": 1}, [1.25, 2.0], "[1.3, 2]").correct is False
    assert grade_answer({"type": "list", "decimals": 1}, [1.26, 2.0], "[1.3, 2]").correct
    assert grade_answer({"type": "text"}, "Biscoe", "  biscoe. ").correct


def test_a_table_in_any_row_order_as_json_or_csv():
    table = {"type": "table", "columns": ["species", "mean_mass"], "decimals": 1}
    gold = [{"species": "Adelie", "mean_mass": 3700.66}, {"species": "Gentoo", "mean_mass": 5076.02}]
    assert grade_answer(table, gold, "species,mean_mass\nGentoo,5076.0\nAdelie,3700.7").correct
    assert grade_answer(table, gold, '{"species": ["Adelie", "Gentoo"], "mean_mass": [3700.7, 5076.0]}').correct
    assert not grade_answer(table, gold, "species,mean_mass\nGentoo,5076.0").correct
    assert not grade_answer({**table, "ordered": True}, gold, [["Gentoo", 5076.0], ["Adelie", 3700.7]]).correct


def test_a_bad_format_is_refused():
    with pytest.raises(AnswerFormatError):
        normalise({"type": "essay"}, "x")
    with pytest.raises(AnswerFormatError):
        normalise({"type": "table"}, [])

"""Reading model-written tools, solutions and verifiers without running them."""

from __future__ import annotations

import pytest
from world_fixtures import SOLUTION, TOOLS, VERIFIER

from general_env.tool_code import (ToolCodeError, check_functions, check_solution, parse_tool_module,
                                   used_tools)


def test_tool_schemas_come_from_the_code_without_running_it():
    module = parse_tool_module(TOOLS)
    assert module.names() == ["search_flights", "book_flight"]
    search = module.tools[0].spec()["function"]
    assert search["description"] == "Find flights between two airports, cheapest first."
    assert search["parameters"]["required"] == ["origin", "destination"]
    assert search["parameters"]["properties"]["max_price"]["type"] == "number"
    assert search["parameters"]["properties"]["origin"]["description"].startswith("IATA code")
    assert "db" not in search["parameters"]["properties"]
    assert module.problems == ["no_docstring: parameter `x` has no type hint"] or \
        module.problems[0].startswith("no_docstring:")


def test_unsupported_annotations_and_syntax_errors_are_reported():
    module = parse_tool_module('def f(db, x: numpy.ndarray):\n    """F."""\n')
    assert module.tools == [] and "unsupported type hint" in module.problems[0]
    with pytest.raises(ToolCodeError, match="does not parse"):
        parse_tool_module("def f(db:\n")


def test_a_good_solution_passes_the_rules():
    assert check_solution(SOLUTION, ["search_flights", "book_flight"]) == []
    assert used_tools(SOLUTION) == ["search_flights", "book_flight"]


@pytest.mark.parametrize("source, problem", [
    ("import sqlite3\ndef solve(tools):\n    return sqlite3.connect('x')", "import of 'sqlite3'"),
    ("def solve(tools):\n    return open('/data/env.sqlite').read()", "`open` is not allowed"),
    ("def solve(tools):\n    return tools.__class__.__mro__", "underscored attribute"),
    ("def solve(tools):\n    return tools.drop_everything()", "not a tool of this environment"),
    ("def solve(tools, db):\n    return db", "exactly one parameter"),
    ("def answer(tools):\n    return 1", "no `def solve(tools):`"),
])
def test_a_solution_that_breaks_the_rules_is_refused(source, problem):
    problems = check_solution(source, ["search_flights", "book_flight"])
    assert any(problem in p for p in problems), problems


def test_verifier_checks_are_found_and_checked():
    assert check_functions(VERIFIER) == (["check_booked_cheapest", "check_answer_is_flight"], [])
    names, problems = check_functions("def check_x(state):\n    return True\n")
    assert names == [] and "exactly (state, answer)" in problems[0]

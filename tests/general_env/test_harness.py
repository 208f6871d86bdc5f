"""The in-sandbox harness run in-process on hand-written code: determinism, solutions, checks."""

from __future__ import annotations

import shutil

import pytest

from world_fixtures import ALTERNATIVE_SOLUTION, SOLUTION, TOOLS, VERIFIER, make_world

from general_env import harness


def _copy(master, tmp_path, name):
    return str(shutil.copy(master, tmp_path / name))


def test_solution_reaches_the_world_only_through_tools_and_leaves_a_deterministic_state(tmp_path):
    master = make_world(tmp_path / "master.sqlite")
    first = harness.run_solution(TOOLS, SOLUTION, _copy(master, tmp_path, "a.sqlite"), seed=3)
    second = harness.run_solution(TOOLS, SOLUTION, _copy(master, tmp_path, "b.sqlite"), seed=3)
    assert first["error"] is None and first["answer"] == 2
    assert [c["name"] for c in first["calls"]] == ["search_flights", "book_flight"]
    assert first["hash"] == second["hash"]  # fixed clock: booked_at is the same in both
    assert first["state"]["bookings"]["rows"] == [[1, 2, "Ada Lovelace", "2025-01-15T09:00:00"]]
    assert not (tmp_path / "a.sqlite").exists()  # the attempt's copy is gone once loaded
    assert master.exists()


def test_an_independent_solution_reaches_the_same_state(tmp_path):
    master = make_world(tmp_path / "master.sqlite")
    one = harness.run_solution(TOOLS, SOLUTION, _copy(master, tmp_path, "a.sqlite"))
    other = harness.run_solution(TOOLS, ALTERNATIVE_SOLUTION, _copy(master, tmp_path, "b.sqlite"))
    assert one["hash"] == other["hash"] and other["answer"] == 2


def test_checks_pass_for_the_solution_and_fail_for_doing_nothing(tmp_path):
    master = make_world(tmp_path / "master.sqlite")
    solved = harness.run_solution(TOOLS, SOLUTION, _copy(master, tmp_path, "a.sqlite"))
    verdict = harness.run_checks(VERIFIER, solved["state"], solved["answer"])
    assert verdict == {"checks": {"check_answer_is_flight": True, "check_booked_cheapest": True}, "errors": {},
                       "passed": True}
    idle = harness.replay(TOOLS, _copy(master, tmp_path, "b.sqlite"), [])
    nothing = harness.run_checks(VERIFIER, idle["state"], None)
    assert nothing["passed"] is False and nothing["checks"]["check_booked_cheapest"] is False


def test_tool_errors_and_escape_attempts_are_results_not_crashes(tmp_path):
    master = make_world(tmp_path / "master.sqlite")
    replayed = harness.replay(TOOLS, _copy(master, tmp_path, "a.sqlite"),
                              [{"name": "book_flight", "arguments": {"flight_id": 2, "passenger": "A"}},
                               {"name": "book_flight", "arguments": {"flight_id": 2, "passenger": "B"}},
                               {"name": "drop_tables", "arguments": {}}])
    assert "result" in replayed["calls"][0]
    assert replayed["calls"][1]["error"] == "ValueError: flight 2 is full"
    assert "no tool named 'drop_tables'" in replayed["calls"][2]["error"]
    sneaky = "def solve(tools):\n    import sqlite3\n    return 1\n"
    escaped = harness.run_solution(TOOLS, sneaky, _copy(master, tmp_path, "b.sqlite"))
    assert escaped["error"]["type"] == "ImportError" and escaped["answer"] is None


def test_a_crashing_check_fails_with_its_reason(tmp_path):
    verdict = harness.run_checks("def check_x(state, answer):\n    return state['missing']\n", {}, None)
    assert verdict["passed"] is False and "KeyError" in verdict["errors"]["check_x"]


def test_sandbox_source_runs_alone(tmp_path):
    namespace: dict = {}
    exec(compile(harness.sandbox_source(), "<harness>", "exec"), namespace)
    master = make_world(tmp_path / "master.sqlite")
    result = namespace["run_solution"](TOOLS, SOLUTION, _copy(master, tmp_path, "a.sqlite"))
    assert result["answer"] == 2 and len(result["hash"]) == 64


@pytest.mark.parametrize("bytecode", ["this Python's", "another Python's"])
def test_the_program_sent_to_the_sandbox_runs_compiled_or_from_its_source(tmp_path, bytecode):
    import importlib.util

    from general_env.execution import sandbox_program

    program = sandbox_program(harness.sandbox_source())
    if bytecode == "another Python's":  # a sandbox whose Python reads another bytecode format compiles the source
        assert repr(importlib.util.MAGIC_NUMBER) in program
        program = program.replace(repr(importlib.util.MAGIC_NUMBER), repr(b"\x00\x00\r\n"))
    namespace: dict = {"__name__": "call"}
    exec(compile(program, "<call>", "exec"), namespace)
    master = make_world(tmp_path / "master.sqlite")
    result = namespace["run_solution"](TOOLS, SOLUTION, _copy(master, tmp_path, "a.sqlite"))
    assert result["answer"] == 2 and result["hash"] == harness.run_solution(
        TOOLS, SOLUTION, _copy(master, tmp_path, "b.sqlite"))["hash"]


def test_tool_calls_draw_the_same_random_numbers_alone_and_in_a_replay(tmp_path):
    tools = "import random\n\n\ndef draw(db) -> list:\n    \"\"\"Two random numbers.\"\"\"\n" \
            "    return [rng.random(), random.random()]\n"
    master = make_world(tmp_path / "master.sqlite")
    replayed = harness.replay(tools, _copy(master, tmp_path, "a.sqlite"), [{"name": "draw", "arguments": {}}] * 2,
                              seed=5)
    alone = [harness.call_tool(tools, _copy(master, tmp_path, f"{i}.sqlite"), "draw", {}, seed=5, call_index=i)
             for i in range(2)]
    assert [c["result"] for c in replayed["calls"]] == [c["result"] for c in alone]
    assert alone[0]["result"] != alone[1]["result"]  # the second call draws other numbers than the first


def test_the_frozen_clock_and_seeded_randomness_are_given_back(tmp_path):
    import datetime
    import random
    import time

    real_datetime, real_time = datetime.datetime, time.time
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    master = make_world(tmp_path / "master.sqlite")
    harness.run_solution(TOOLS, SOLUTION, _copy(master, tmp_path, "a.sqlite"))
    with pytest.raises(SyntaxError):
        harness.replay("def broken(:", _copy(master, tmp_path, "c.sqlite"), [])
    assert datetime.datetime is real_datetime and time.time is real_time
    assert datetime.datetime.now().year >= 2026 and random.random() == expected_next

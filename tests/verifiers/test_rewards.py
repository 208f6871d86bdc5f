"""One reward entry point for every exported kind, fed an exported row and an attempt."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "general_env"))

from world_fixtures import TOOLS, VERIFIER, make_world  # noqa: E402

from general_env import harness  # noqa: E402
from verifiers.rewards import RewardError, reward  # noqa: E402

CODE_ROW = {"verifier": json.dumps({"type": "tests", "fail_to_pass": ["tests/test_a.py::test_fix"],
                                    "pass_to_pass": ["tests/test_a.py::test_old"]})}


def _junit(results: dict[str, str]) -> str:
    cases = "".join(f'<testcase classname="tests.test_a" name="{name}" file="tests/test_a.py">'
                    + ("" if outcome == "passed" else "<failure message='x'/>") + "</testcase>"
                    for name, outcome in results.items())
    return f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>'


def test_code_reward_needs_every_listed_test_to_pass():
    assert reward(CODE_ROW, _junit({"test_fix": "passed", "test_old": "passed"})).reward == 1.0
    broke = reward(CODE_ROW, _junit({"test_fix": "passed", "test_old": "failed"}))
    assert broke.reward == 0.0 and broke.detail["failing"] == ["tests/test_a.py::test_old"]
    missing = reward(CODE_ROW, _junit({"test_fix": "passed"}))
    assert missing.reward == 0.0 and missing.detail["missing"] == ["tests/test_a.py::test_old"]


def test_general_reward_replays_the_trajectory(tmp_path):
    master = make_world(tmp_path / "master.sqlite")
    row = {"verifier": json.dumps({"type": "tool_checks", "source": VERIFIER, "expected_state_hash": None})}
    messages = [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": "1", "type": "function", "function": {
                        "name": "book_flight", "arguments": json.dumps({"flight_id": 2, "passenger": "Ada Lovelace"})}}]},
                {"role": "tool", "tool_call_id": "1", "content": "{}"}, {"role": "assistant", "content": "2"}]
    copy = str(shutil.copy(master, tmp_path / "attempt.sqlite"))
    # the harness in-process here: these are hand-written tools and checks, not a model's
    result = reward(row, messages, run=lambda entry, **kw: getattr(harness, entry)(**kw), db_path=copy,
                    tools_source=TOOLS, clock=harness.DEFAULT_CLOCK)
    assert result.reward == 1.0 and result.kind == "general"
    with pytest.raises(RewardError, match="replaying"):
        reward(row, messages)


def test_unknown_or_missing_verifiers_are_clear_errors():
    with pytest.raises(RewardError, match="unknown verifier type"):
        reward({"verifier": json.dumps({"type": "vibes"})}, "x")
    with pytest.raises(RewardError, match="not JSON"):
        reward({"verifier": "{"}, "x")


def test_search_and_code_interpreter_rewards_from_the_row():
    search = {"verifier": json.dumps({"type": "rubric", "question": "Who?", "answer": "Ada Lovelace",
                                      "rubric": {"dimensions": [{"name": "correct", "weight": 1.0}]}})}
    assert reward(search, "ada lovelace").reward == 1.0
    assert reward(search, "Charles Babbage").reward == 0.0  # no judge: no exact match scores nothing
    notebook = {"verifier": json.dumps({"type": "answer_format", "answer_format": {"type": "number", "decimals": 2},
                                        "answer": 3.14159})}
    assert reward(notebook, "The mean is 3.14").reward == 1.0
    assert reward(notebook, "3.2").reward == 0.0

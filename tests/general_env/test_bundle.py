"""A bundle is self-contained: its grade.py grades a trajectory with nothing of this project installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from world_fixtures import TOOLS, VERIFIER, make_world

from general_env.bundle import Bundle, BundleError, read_bundle, write_bundle
from general_env.tool_code import parse_tool_module
from verifiers.general import normalise_answer, trajectory_calls


def _call(name, arguments, call_id):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


GOOD = [{"role": "user", "content": "Book the cheapest flight from Lisbon to Oslo for Ada Lovelace."},
        {"role": "assistant", "content": None,
         "tool_calls": [_call("search_flights", {"origin": "LIS", "destination": "OSL"}, "c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "[...]"},
        {"role": "assistant", "content": None,
         "tool_calls": [_call("book_flight", {"flight_id": 2, "passenger": "Ada Lovelace"}, "c2")]},
        {"role": "tool", "tool_call_id": "c2", "content": "{...}"},
        {"role": "assistant", "content": "2"}]
IDLE = [GOOD[0], {"role": "assistant", "content": "I booked it."}]


@pytest.fixture
def bundle_dir(tmp_path):
    module = parse_tool_module(TOOLS)
    bundle = Bundle(category="travel planning", tools_source=TOOLS, tools=[t.spec() for t in module.tools],
                    tool_kinds={"search_flights": "read", "book_flight": "write"},
                    database=make_world(tmp_path / "master.sqlite"))
    return write_bundle(bundle, tmp_path / "bundles")


def _grade_alone(bundle_dir, tmp_path, messages):
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"task_id": "t1", "verifier": VERIFIER}))
    trajectory = tmp_path / "trajectory.json"
    trajectory.write_text(json.dumps({"messages": messages}))
    # -I: isolated mode, no PYTHONPATH, no site-packages of ours: the bundle must carry everything
    result = subprocess.run([sys.executable, "-I", str(bundle_dir / "grade.py"), str(task), str(trajectory)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_bundle_grades_trajectories_with_nothing_else_installed(bundle_dir, tmp_path):
    good = _grade_alone(bundle_dir, tmp_path, GOOD)
    assert good["reward"] == 1.0 and good["partial"] == 1.0 and good["calls"] == 2
    idle = _grade_alone(bundle_dir, tmp_path, IDLE)
    assert idle["reward"] == 0.0 and idle["partial"] == 0.0
    # the master database is untouched by either grading
    assert read_bundle(bundle_dir).bundle_id == bundle_dir.name


def test_a_changed_bundle_is_refused(bundle_dir):
    (bundle_dir / "tools.py").write_text(TOOLS + "\n# edited\n")
    with pytest.raises(BundleError, match="does not match"):
        read_bundle(bundle_dir)


def test_trajectory_calls_and_answers():
    calls, answer = trajectory_calls(GOOD)
    assert [c["name"] for c in calls] == ["search_flights", "book_flight"] and answer == 2
    assert normalise_answer('```json\n{"a": 1}\n```') == {"a": 1}
    assert normalise_answer(" 3.50 ") == 3.5 and normalise_answer("Oslo") == "Oslo"

"""Harder levels that add a tool, on the real sandbox against scripted writers: a working tool the harder task
needs is added as a new bundle version (stored, counted in the funnel, graded from that bundle alone); a
tool that crashes discards the level with the reason."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scripted_server import ScriptedServer, reply
from world_fixtures import SOLUTION, TOOLS, VERIFIER, make_world

from general_env.bundle import Bundle, read_bundle, write_bundle
from general_env.environment_building import EnvironmentOutcome
from general_env.funnel import general_funnel
from general_env.records import record_environment, record_task, task_bundle
from general_env.tasks import write_task
from general_env.tool_code import parse_tool_module
from tasksynth.config import RoleConfig

pytestmark = pytest.mark.docker

TOTAL_PRICE = '''
def total_price(db, origin: str, destination: str) -> float:
    """The total price of every flight between two airports.

    Args:
        origin: IATA code of the departure airport.
        destination: IATA code of the arrival airport.
    """
    rows = db.execute("SELECT price FROM flights WHERE origin = ? AND destination = ?",
                      (origin, destination)).fetchall()
    if not rows:
        raise ValueError(f"no flights from {origin} to {destination}")
    return round(sum(r["price"] for r in rows), 2)
'''
CRASHING = '''
def seat_map(db, flight_id: int) -> dict:
    """The seat map of a flight.

    Args:
        flight_id: The flight.
    """
    return {"rows": len(None)}
'''
WITH_TOTAL = "Book the cheapest flight from LIS to OSL for Ada Lovelace and tell me what all LIS-OSL flights cost."
WITH_SEATS = "Book the cheapest flight from LIS to OSL for Ada Lovelace and tell me its seat map."
SOLUTIONS = {WITH_TOTAL: '''
def solve(tools):
    cheapest = tools.search_flights(origin="LIS", destination="OSL")[0]
    tools.book_flight(flight_id=cheapest["id"], passenger="Ada Lovelace")
    return tools.total_price(origin="LIS", destination="OSL")
'''}
TOTAL_VERIFIER = '''
def check_booked(state, answer):
    return any(r[1] == 2 and r[2] == "Ada Lovelace" for r in state["bookings"]["rows"])


def check_total(state, answer):
    return answer == 490.5
'''


def _writers(body):
    role, messages = body["model"], body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if role == "task_writer":
        if "seat map" in system:
            return reply(json.dumps({"task": WITH_SEATS, "answer_format": "JSON", "new_tool": {
                "name": "seat_map", "kind": "read", "code": CRASHING,
                "sample_calls": [{"arguments": {"flight_id": 1}}]}}))
        return reply(json.dumps({"task": WITH_TOTAL, "answer_format": "a number", "new_tool": {
            "name": "total_price", "kind": "read", "code": TOTAL_PRICE,
            "sample_calls": [{"arguments": {"origin": "LIS", "destination": "OSL"}}]}}))
    task = next(m["content"] for m in reversed(messages) if m["role"] == "user").split("Task: ", 1)[1].split("\n")[0]
    code = SOLUTIONS[task] if role == "solution_writer" else TOTAL_VERIFIER
    return reply(f"```python\n{code.strip()}\n```")


def _parent(bundle, prompt):
    return {"task_id": f"parent-{prompt}", "prompt": prompt, "answer_format": "a number", "solution": SOLUTION,
            "verifier": VERIFIER, "bundle_id": bundle.bundle_id}


def test_a_level_adds_the_tool_its_harder_task_needs_and_a_crashing_one_discards_the_level(config, store, tmp_path,
                                                                                        docker_engine):
    module = parse_tool_module(TOOLS)
    first = read_bundle(write_bundle(Bundle("travel planning", TOOLS, [t.spec() for t in module.tools],
                                            {"search_flights": "read", "book_flight": "write"},
                                            make_world(tmp_path / "master.sqlite")), tmp_path / "bundles"))
    record_environment(store, EnvironmentOutcome("env1", "travel planning", "built", bundle=first,
                                                 bundle_path=str(first.database.parent)), None)
    with ScriptedServer(_writers) as server:
        for role in ("task_writer", "solution_writer", "verifier_writer"):
            config.agents[role] = RoleConfig(base_url=server.base_url, model=role, backoff_s=0.01)
        kept = write_task(config, first, "env1", 0, level=2, parent=_parent(first, "Book a flight, total price"))
        crashed = write_task(config, first, "env1", 0, level=2, parent=_parent(first, "Book a flight, seat map"))
    for outcome in (kept, crashed):
        record_task(store, outcome, first.bundle_id, None)

    assert kept.status == "verified", (kept.reason, kept.detail)
    assert kept.reference_answer == 490.5 and kept.tool_addition.status == "added"
    # a new bundle version: the environment's tools and the added one, under a new content hash
    added = task_bundle(store, store.query("SELECT * FROM general_tasks WHERE task_id = ?", [kept.task_id])[0], first)
    assert added.bundle_id == kept.bundle_id != first.bundle_id
    assert [t["function"]["name"] for t in added.tools] == ["search_flights", "book_flight", "total_price"]
    assert added.tool_kinds["total_price"] == "read" and first.tool_kinds.keys() == {"search_flights", "book_flight"}

    assert crashed.status == "discarded" and crashed.reason == "new_tool_sample_call_failed"
    assert "TypeError" in crashed.detail and "seat_map" in crashed.detail
    assert crashed.bundle_id is None  # no bundle version was made for it

    stored = {r["tool"]: r for r in store.query("SELECT * FROM general_level_tools")}
    assert stored["total_price"]["status"] == "added" and stored["total_price"]["bundle_id"] == kept.bundle_id
    assert stored["seat_map"]["status"] == "rejected" and stored["seat_map"]["level"] == 2
    funnel = general_funnel(store)
    assert funnel["environments"]["tools_added_by_levels"] == 1
    assert funnel["environments"]["tools_rejected_at_levels"] == 1
    assert funnel["tools_by_level"] == {"2": {"added": 1, "rejected": 1}}

    # the level's task is graded from its own bundle version alone, the added tool included
    messages = [{"role": "user", "content": WITH_TOTAL}]
    for index, (name, arguments) in enumerate([("search_flights", {"origin": "LIS", "destination": "OSL"}),
                                               ("book_flight", {"flight_id": 2, "passenger": "Ada Lovelace"}),
                                               ("total_price", {"origin": "LIS", "destination": "OSL"})]):
        messages += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{index}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]},
                     {"role": "tool", "tool_call_id": f"c{index}", "content": "..."}]
    messages.append({"role": "assistant", "content": "490.5"})
    (tmp_path / "task.json").write_text(json.dumps({"verifier": kept.verifier}))
    (tmp_path / "trajectory.json").write_text(json.dumps(messages))
    graded = subprocess.run([sys.executable, "-I", str(added.database.parent / "grade.py"), str(tmp_path / "task.json"),
                             str(tmp_path / "trajectory.json")], capture_output=True, text=True, timeout=60)
    assert graded.returncode == 0, graded.stderr
    assert json.loads(graded.stdout)["reward"] == 1.0

"""An attempt graded on the state its own episode left (the pipeline's path) gets the verdict that replaying
its trajectory on a fresh copy of the database (what `tasksynth general grade` does) gives, on the real
sandbox; an episode whose calls are not its trajectory's is graded by replay instead."""

from __future__ import annotations

import json
import shutil

import pytest
from scripted_server import ScriptedServer, reply, tool_call
from world_fixtures import TOOLS, make_world

from general_env import harness
from general_env.attempts import SOLVED, attempt_task, replay_grade
from general_env.bundle import Bundle
from general_env.execution import WorldExecutor
from general_env.tool_code import parse_tool_module
from tasksynth.config import RoleConfig

pytestmark = pytest.mark.docker

# A booking tool that draws its reference from the seeded random source: the episode (one sandbox call per
# tool call) and a replay (all calls in one) must draw the same numbers for their states to hash the same.
REFERENCED_TOOLS = (TOOLS + '''

def book_with_reference(db, flight_id: int, passenger: str) -> dict:
    """Book one seat on a flight and return the booking reference.

    Args:
        flight_id: The flight's id from search_flights.
        passenger: The passenger's full name.
    """
    if db.execute("SELECT 1 FROM flights WHERE id = ?", (flight_id,)).fetchone() is None:
        raise ValueError(f"no flight {flight_id}")
    reference = f"REF-{rng.randint(0, 10**9)}-{random.randint(0, 10**9)}"
    db.execute("INSERT INTO bookings (flight_id, passenger, booked_at) VALUES (?, ?, ?)",
               (flight_id, passenger, reference))
    return {"reference": reference}
''').replace("import json\n", "import json\nimport random\n", 1)
VERIFIER = '''
def check_booked_cheapest(state, answer):
    return any(r[1] == 2 and r[2] == "Ada Lovelace" for r in state["bookings"]["rows"])


def check_answer_is_flight(state, answer):
    return answer == 2
'''
SEARCH = tool_call("search_flights", {"origin": "LIS", "destination": "OSL"})
# task prompt -> the solver's turns
SOLVERS = {
    "good": [SEARCH, tool_call("book_with_reference", {"flight_id": 2, "passenger": "Ada Lovelace"}), "2"],
    "wrong flight": [SEARCH, tool_call("book_with_reference", {"flight_id": 1, "passenger": "Ada Lovelace"}), "1"],
    "right flight, wrong answer": [tool_call("book_with_reference", {"flight_id": 2, "passenger": "Ada Lovelace"}),
                                   "3"],
    "failing call": [tool_call("book_with_reference", {"flight_id": 99, "passenger": "Ada Lovelace"}), "2"],
    # the loop refuses to run a call whose arguments break the schema (a string id), so the episode booked
    # nothing; a replay runs it (SQLite takes "2" for 2) and books: the trajectory must be graded by replay
    "refused call": [SEARCH, tool_call("book_with_reference", {"flight_id": "2", "passenger": "Ada Lovelace"}),
                     "2"],
}


def _solver(body):
    task = next(m["content"] for m in body["messages"] if m["role"] == "user").split("\n", 1)[0]
    turn = SOLVERS[task][sum(m["role"] == "assistant" for m in body["messages"])]
    return reply(turn) if isinstance(turn, str) else reply(tool_calls=[turn])


def test_grading_on_the_episode_agrees_with_replaying_the_trajectory(config, tmp_path, docker_engine):
    module = parse_tool_module(REFERENCED_TOOLS)
    bundle = Bundle("travel planning", REFERENCED_TOOLS, [t.spec() for t in module.tools],
                    {"search_flights": "read", "book_flight": "write", "book_with_reference": "write"},
                    make_world(tmp_path / "master.sqlite"), seed=7)
    # the good trajectory's final state, replayed here: the task's expected state
    reference = harness.replay(bundle.tools_source, str(shutil.copy(bundle.database, tmp_path / "copy.sqlite")),
                               [{"name": "search_flights", "arguments": {"origin": "LIS", "destination": "OSL"}},
                                {"name": "book_with_reference",
                                 "arguments": {"flight_id": 2, "passenger": "Ada Lovelace"}}], seed=7)
    verdicts = {}
    with ScriptedServer(_solver) as server, WorldExecutor(config) as worlds:
        config.agents["solver"] = RoleConfig(base_url=server.base_url, model="solver", backoff_s=0.01)
        for index, prompt in enumerate(SOLVERS):
            task = {"task_id": f"t{index}", "prompt": prompt, "answer_format": "a flight id", "verifier": VERIFIER,
                    "expected_state_hash": reference["hash"]}
            attempt = attempt_task(config, worlds, bundle, task, 0)
            replayed = replay_grade(worlds, bundle, task, json.loads(attempt.trajectories[0].transcript)["messages"])
            verdicts[prompt] = (attempt.outcome, attempt.checks.get("graded_on"))
            assert attempt.reward == replayed.reward, prompt
            assert attempt.partial == replayed.partial, prompt
            assert attempt.checks["checks"] == replayed.checks, prompt
            assert attempt.checks["state_matches"] == replayed.state_matches, prompt
    assert verdicts == {"good": (SOLVED, "episode"), "wrong flight": ("failed", "episode"),
                        "right flight, wrong answer": ("failed", "episode"),
                        "failing call": ("failed", "episode"),
                        "refused call": (SOLVED, "replay")}

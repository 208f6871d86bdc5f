"""A scripted set of agents for the general pipeline's tests: every role answers from a function of the
request, so runs are deterministic whatever order the flow's threads send requests in.

Roles are told apart by the model name each is configured with (the role's name). Tasks are told apart by
their text, which the task writer picks from the task number in its request:

    task 1  "Book the cheapest LIS-OSL flight ..."  a good task: sound solution, verifier, an independent
            second solution reaching the same state; the solver succeeds on every third attempt
    task 2  "DB task"        the solution imports sqlite3                    -> solution_breaks_rules
    task 3  "Never task"     the verifier never accepts                      -> solution_fails_verifier
    task 4  "Idle task"      the verifier accepts doing nothing               -> verifier_accepts_nothing
    task 5  "Runaway task"   the solution loops forever                       -> solution_fails (timeout)
    level 2 of task 1        "... and tell me the seats left"; it adds a tool, `seats_left`, which its
                             solution and the solver use (a new bundle version); kept as well
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from scripted_server import reply, several, tool_call
from world_fixtures import ALTERNATIVE_SOLUTION, SOLUTION, TOOLS, VERIFIER, WORLD_SQL

ROLES = ("tool_writer", "task_writer", "solution_writer", "verifier_writer", "solver")

CRASHING_TOOL = '''

def seat_map(db, flight_id: int) -> dict:
    """The seat map of a flight.

    Args:
        flight_id: The flight.
    """
    return {"rows": len(None)}
'''
# the script the tool writer runs in the sandbox: the same world as the hand-built fixture
MAKE_DB = f'''
import sqlite3
db = sqlite3.connect("env.sqlite")
db.executescript("""{WORLD_SQL}""")
db.commit()
'''
MANIFEST = {"database": "env.sqlite", "tools_file": "tools.py",
            "tool_kinds": {"search_flights": "read", "book_flight": "write", "seat_map": "read"},
            "sample_calls": [{"name": "search_flights", "arguments": {"origin": "LIS", "destination": "OSL"}},
                             {"name": "book_flight", "arguments": {"flight_id": 1, "passenger": "Sam"}},
                             {"name": "seat_map", "arguments": {"flight_id": 1}}],
            "notes": "Three flights between Lisbon and Oslo, and their bookings."}

GOOD = "Book the cheapest flight from LIS to OSL for Ada Lovelace and tell me its id."
HARDER = "Book the cheapest flight from LIS to OSL for Ada Lovelace and tell me how many seats it has left."
TASKS = {1: GOOD, 2: "DB task: book a flight.", 3: "Never task: book a flight.", 4: "Idle task: book a flight.",
         5: "Runaway task: book a flight."}
SEATS_LEFT = '''
def seats_left(db, flight_id: int) -> int:
    """How many seats a flight has left.

    Args:
        flight_id: The flight's id from search_flights.
    """
    row = db.execute("SELECT seats FROM flights WHERE id = ?", (flight_id,)).fetchone()
    if row is None:
        raise ValueError(f"no flight {flight_id}")
    return row["seats"]
'''
NEW_TOOL = {"name": "seats_left", "kind": "read", "code": SEATS_LEFT, "sample_calls": [{"arguments": {"flight_id": 1}}]}
HARDER_SOLUTION = '''
def solve(tools):
    cheapest = tools.search_flights(origin="LIS", destination="OSL")[0]
    tools.book_flight(flight_id=cheapest["id"], passenger="Ada Lovelace")
    return tools.seats_left(flight_id=cheapest["id"])
'''
HARDER_VERIFIER = '''
def check_booked(state, answer):
    return any(r[1] == 2 and r[2] == "Ada Lovelace" for r in state["bookings"]["rows"])


def check_seats_left(state, answer):
    return answer == 0
'''
SOLUTIONS = {
    "DB task": "import sqlite3\n\ndef solve(tools):\n    return sqlite3.connect('env.sqlite')\n",
    "Runaway task": "def solve(tools):\n    while True:\n        pass\n",
}
VERIFIERS = {
    "Never task": "def check_never(state, answer):\n    return False\n",
    "Idle task": "def check_anything(state, answer):\n    return True\n",
}


def _fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


class ScriptedWorld:
    """The script: `server = ScriptedServer(world.answer)`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.solver_starts: dict[str, int] = {}
        self.counts: dict[str, int] = {role: 0 for role in ROLES}

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        role = body["model"]
        with self.lock:
            self.counts[role] += 1
        messages = body["messages"]
        last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        tool_results = sum(m["role"] == "tool" for m in messages)
        return getattr(self, role)(messages, last_user, tool_results)

    def tool_writer(self, messages, last_user, tool_results):
        steps = [tool_call("write_file", {"path": "tools.py", "content": TOOLS + CRASHING_TOOL}, "w1"),
                 tool_call("write_file", {"path": "make_db.py", "content": MAKE_DB}, "w2"),
                 tool_call("bash", {"command": "python3 make_db.py && ls"}, "w3")]
        if tool_results < len(steps):
            return reply(tool_calls=[steps[tool_results]])
        return reply(json.dumps(MANIFEST))

    def task_writer(self, messages, last_user, tool_results):
        if "harder" in last_user:
            return reply(json.dumps({"task": HARDER, "answer_format": "a number", "new_tool": NEW_TOOL}))
        number = int(re.search(r"task number (\d+)", last_user).group(1))
        return reply(json.dumps({"task": TASKS[number], "answer_format": "a number"}))

    def solution_writer(self, messages, last_user, tool_results):
        task = last_user.split("Task: ", 1)[1].split("\n", 1)[0]
        if task == HARDER:
            return reply(_fenced(HARDER_SOLUTION))
        key = task.split(":", 1)[0]
        if key in SOLUTIONS:
            return reply(_fenced(SOLUTIONS[key]))
        return reply(_fenced(ALTERNATIVE_SOLUTION if "independently" in last_user else SOLUTION))

    def verifier_writer(self, messages, last_user, tool_results):
        task = last_user.split("Task: ", 1)[1].split("\n", 1)[0]
        if task == HARDER:
            return reply(_fenced(HARDER_VERIFIER))
        return reply(_fenced(VERIFIERS.get(task.split(":", 1)[0], VERIFIER)))

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        step = self._answer(body)
        if body["model"] == "solver" and body.get("n", 1) > 1:  # first turns of a batch: one choice each
            step = several(step, *(self._answer(body) for _ in range(body["n"] - 1)))
        return step

    def solver(self, messages, last_user, tool_results):
        """Every third attempt of a task solves it; the others answer at once, wrongly."""
        task = next(m["content"] for m in messages if m["role"] == "user")
        if tool_results == 0:
            with self.lock:
                start = self.solver_starts[task] = self.solver_starts.get(task, 0) + 1
            if (start - 1) % 3:
                return reply("7")
            return reply(tool_calls=[tool_call("search_flights", {"origin": "LIS", "destination": "OSL"}, "s1")])
        if tool_results == 1:
            return reply(tool_calls=[tool_call("book_flight", {"flight_id": 2, "passenger": "Ada Lovelace"}, "s2")])
        if "seats" in task and tool_results == 2:
            return reply(tool_calls=[tool_call("seats_left", {"flight_id": 2}, "s3")])
        return reply("0" if "seats" in task else "2")

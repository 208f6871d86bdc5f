"""Scripted agents for the code-interpreter pipeline's tests: every role answers from a function of the
request, so runs are deterministic whatever order the flow's threads send requests in.

Roles are told apart by the model name each is configured with (the role's name), tasks by the question
number in the writer's request. The data is tests' own `sales.csv` (north 55.0, south 48.0, east 40.0 of
revenue):

    task 0  "total revenue of the north region" (number, 1 decimal): a good task; a second solution agrees;
            the solver explores once, then answers right on every other attempt
    task 1  "how many regions"                   the answerer knows it without the data   -> shortcut
    task 2  "average price"                      the second solution weights by units     -> ambiguous
    task 3  "median discount"                    the solution reads a missing column      -> solution_fails
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from scripted_server import reply, several, tool_call

ROLES = ("notebook_task_writer", "notebook_solution_writer", "notebook_answerer", "notebook_solver")
READ = "import pandas as pd\ndf = pd.read_csv('/data/sales/sales.csv')\n"
GOOD = "What is the total revenue (units times price) of the north region?"
TASKS = {
    0: {"question": GOOD, "answer_format": {"type": "number", "decimals": 1},
        "solution": READ + "answer = float((df.units * df.price)[df.region == 'north'].sum())"},
    1: {"question": "How many distinct regions are in the table?", "answer_format": {"type": "number"},
        "solution": READ + "answer = df.region.nunique()"},
    2: {"question": "What is the average price?", "answer_format": {"type": "number", "decimals": 2},
        "solution": READ + "answer = df.price.mean()"},
    3: {"question": "What is the median discount?", "answer_format": {"type": "number", "decimals": 2},
        "solution": READ + "answer = df.discount.median()"},
}
SECOND_SOLUTIONS = {
    GOOD: READ + "north = df[df.region == 'north']\nanswer = sum(u * p for u, p in zip(north.units, north.price))",
    "What is the average price?": READ + "answer = (df.units * df.price).sum() / df.units.sum()",
}


class NotebookWorld:
    """The script: `ScriptedServer(world.answer)`; `counts` says how often each role was asked."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {role: 0 for role in ROLES}
        self.final_answers = 0
        self.tool_results: list[str] = []

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        step = self._answer(body)
        if body.get("n", 1) > 1:  # first turns of a solver batch: one choice each
            step = several(step, *(self._answer(body) for _ in range(body["n"] - 1)))
        return step

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        role = body["model"]
        with self.lock:
            self.counts[role] += 1
        messages = body["messages"]
        last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        tools = [m["content"] for m in messages if m["role"] == "tool"]
        with self.lock:
            self.tool_results += tools[-1:]
        return getattr(self, role)(last_user, tools)

    def notebook_task_writer(self, last_user, tools):
        if not tools:
            return reply(tool_calls=[tool_call("python", {"code": READ + "df.groupby('region').units.sum()"})])
        number = int(re.search(r"question number (\d+)", last_user).group(1))
        return reply(json.dumps(TASKS[number]))

    def notebook_answerer(self, last_user, tools):
        return reply("3" if "distinct regions" in last_user else "I cannot tell without the data.")

    def notebook_solution_writer(self, last_user, tools):
        question = last_user.split("Question: ", 1)[1].split("\n", 1)[0]
        task = next(t for t in TASKS.values() if t["question"] == question)
        return reply(f"```python\n{SECOND_SOLUTIONS.get(question, task['solution'])}\n```")

    def notebook_solver(self, last_user, tools):
        if not tools:
            return reply(tool_calls=[tool_call("python", {"code": READ + "(df.units * df.price).groupby(df.region)"
                                                                        ".sum()"})])
        with self.lock:
            self.final_answers += 1
            right = self.final_answers % 2 == 1
        return reply("The north region's revenue is 55.0" if right else "54")

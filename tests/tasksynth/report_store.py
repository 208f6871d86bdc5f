"""A store with tasks of every kind written straight into its tables (as the flows write them), for the
report's tests and benchmark: `fill(store, code=..., general=...)` at any scale, and `expected_funnels` read
back with plain SQL, independently of the report's own queries."""

from __future__ import annotations

import json
import random
import uuid


def fill(store, *, code: int = 12, general: int = 6, search: int = 0, seed: int = 0) -> None:
    rng = random.Random(seed)
    transcript = store.put_blob(json.dumps({"messages": [{"role": "user", "content": "Write the statement."},
                                                         {"role": "assistant", "content": "Division by zero ..."}]}))
    candidates, instances, tasks, discards, calls, trajectories = [], [], [], [], [], []
    for i in range(code):
        instance = f"calc-{i}"
        verdict = "valid" if i % 3 else "rejected"
        candidates.append({"candidate_id": f"c{i}", "source": "git", "instance_id": instance, "repo": "demo/calc",
                           "base_commit": "abc", "patch": "diff --git a/calc.py b/calc.py\n+    return a / b\n",
                           "test_patch": "diff --git a/t.py b/t.py\n", "problem_statement": f"Bug {i}: divide fails"})
        instances.append({"instance_id": instance, "candidate_id": f"c{i}", "status": "built", "image": "x",
                          "build_seconds": 0.5})
        tasks.append({"instance_id": instance, "candidate_id": f"c{i}", "repo": "demo/calc", "base_commit": "abc",
                      "image": "tasksynth/inst:x", "verdict": verdict,
                      "reason": None if verdict == "valid" else rng.choice(["pass_to_fail", "no_fail_to_pass"]),
                      "fail_to_pass": [f"t.py::test_{j}" for j in range(1 + i % 4)], "pass_to_pass": ["t.py::ok"]})
        if i < 50:
            trajectory = uuid.uuid4().hex
            trajectories.append({"trajectory_id": trajectory, "role": "statement_writer", "transcript": transcript,
                                 "turns": 1, "stop_reason": "answer"})
            store.insert("statement_drafts", [{"candidate_id": f"c{i}", "instance_id": instance, "statement": "x",
                                                "status": "ok", "role": "statement_writer", "model": "m",
                                                "trajectory_id": trajectory}])
    for i in range(max(1, code // 4)):
        discards.append({"stage": "filter", "source": "git", "item": f"commit{i}", "reason":
                         rng.choice(["docs_only", "no_test_changes"])})
    for i in range(max(1, code // 10)):
        calls.append({"call_id": uuid.uuid4().hex, "role": "statement_writer", "endpoint": "http://127.0.0.1:8000/v1",
                      "model": "smollm2-135m-dsa", "prompt_tokens": 400, "completion_tokens": 60, "latency_s": 1.5,
                      "cost_usd": 0.0, "status": "ok"})
    if general:
        store.insert("general_environments", [{"env_id": "env1", "category": "travel planning", "status": "built",
                                               "bundle_id": "b1", "bundle_path": "/nonexistent",
                                               "tools": json.dumps([{"function": {"name": "search"}},
                                                                    {"function": {"name": "book"}}])},
                                              {"env_id": "env2", "category": "travel planning", "status": "discarded",
                                               "reason": "gate_failed", "tools": "[]"}])
        discards.append({"stage": "general.environment", "source": "general", "item": "env2", "reason": "gate_failed"})
    general_tasks = []
    for i in range(general):
        kept = i % 2 == 0
        general_tasks.append({"task_id": f"g{i}", "env_id": "env1", "bundle_id": "b1", "level": 1 + i % 2,
                              "prompt": f"Book trip {i}", "verifier": "def check_x(state, answer):\n    return True\n",
                              "status": "attempted" if i % 3 else "discarded", "c": 3 if kept else 0, "n": 10,
                              "accepted": kept and bool(i % 3)})
    rows = {"candidates": candidates, "code_instances": instances, "code_tasks": tasks, "discards": discards,
            "agent_calls": calls, "trajectories": trajectories, "general_tasks": general_tasks}
    for table, values in rows.items():
        for start in range(0, len(values), 5000):
            store.insert(table, values[start:start + 5000])


def expected_funnels(store) -> dict[str, list[int]]:
    """The funnel counts the page must show, by kind, with plain SQL."""
    one = lambda sql: store.query(sql)[0]["n"]  # noqa: E731
    funnels = {"code": [one("select count(*) n from candidates"),
                        one("select count(*) n from code_instances where status = 'built'"),
                        one("select count(*) n from code_tasks"),
                        one("select count(*) n from code_tasks where verdict = 'valid'")]}
    if one("select count(*) n from general_environments"):
        funnels["general"] = [one("select count(*) n from general_environments"),
                              one("select count(*) n from general_environments where status = 'built'"),
                              one("select count(*) n from general_tasks"),
                              one("select count(*) n from general_tasks where status <> 'discarded'"),
                              one("select count(*) n from general_tasks where accepted")]
    return funnels

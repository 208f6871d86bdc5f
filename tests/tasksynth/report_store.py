"""A store with tasks of every kind written straight into its tables (as the flows write them), for the
report's tests and benchmark: `fill(store, code=..., general=...)` at any scale, and `expected_funnels` read
back with plain SQL, independently of the report's own queries."""

from __future__ import annotations

import json
import random
import uuid


def fill(store, *, code: int = 12, general: int = 6, search: int = 4, seed: int = 0) -> None:
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
        bundle = store.path.parent / "bundles" / "b1"  # exported beside the shards
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "bundle.json").write_text("{}")
        store.insert("general_environments", [{"env_id": "env1", "category": "travel planning", "status": "built",
                                               "bundle_id": "b1", "bundle_path": str(bundle),
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
    entities, questions, verdicts, items = [], [], [], []
    for i in range(search):
        entities.append({"entity_id": f"e{i}", "corpus": "jargon", "doc_id": f"d{i}", "title": f"Entity {i}"})
        ok = i % 2 == 0
        questions.append({"question_id": f"q{i}", "entity_id": f"e{i}", "question": f"Which thing {i}?",
                          "answer": f"thing {i}", "status": "ok" if ok else "discarded",
                          "reason": None if ok else "shortcut"})
        if ok:
            verdicts.append({"verdict_id": f"v{i}", "question_id": f"q{i}", "check_name": "truth",
                             "outcome": "supported", "method": "rule"})
            items.append({"item_id": f"s{i}", "entity": f"Entity {i}", "question": f"Which thing {i}?",
                          "answer": f"thing {i}", "verdict": "kept" if i == 0 else "answered_by_candidate",
                          "accepted": i == 0, "question_id": f"q{i}", "corpus": "jargon", "source": "synth"})
        else:
            discards.append({"stage": "search.question", "source": "jargon", "item": f"e{i}", "reason": "shortcut"})
    rows = {"search_entities": entities, "search_questions": questions, "search_verdicts": verdicts,
            "search_items": items, "candidates": candidates, "code_instances": instances, "code_tasks": tasks, "discards": discards,
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
    if one("select count(*) n from search_entities"):
        funnels["search"] = [one("select count(*) n from search_entities"),
                             one("select count(*) n from search_questions where question is not null"),
                             one("select count(*) n from search_verdicts where check_name = 'truth' "
                                 "and outcome = 'supported'"),
                             0,  # no candidate answers in this store: nothing is "all wrong"
                             one("select count(*) n from search_items where accepted")]
    return funnels

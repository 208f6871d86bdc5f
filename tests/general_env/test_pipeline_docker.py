"""The general pipeline end to end on the real sandbox, against scripted agents (scripted_world.py): every
discard reason, pass@k counted, a bundle graded from the command line alone, SIGKILL and a rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_server import ScriptedServer
from scripted_world import GOOD, HARDER, ROLES, ScriptedWorld

pytestmark = pytest.mark.docker
K = 6  # the scripted solver solves attempts 1, 4: c = 2 of n = 6


def _write_config(folder: Path, server: ScriptedServer, *, k: int = K) -> Path:
    roles = "".join(f'[agents.{role}]\nbase_url = "{server.base_url}"\nmodel = "{role}"\nbackoff_s = 0.01\n'
                    f'timeout_s = 10\nmax_retries = 1\n\n' for role in ROLES)
    path = folder / "tasksynth.toml"
    path.write_text(f"""
[general]
tasks_per_env = 5
levels = 2
k = {k}
attempt_batch = 3
max_revisions = 0
call_timeout_s = 3

{roles}""")
    return path


@pytest.fixture
def world_server():
    world = ScriptedWorld()
    with ScriptedServer(world.answer) as server:
        yield world, server


def _synth(tmp_path, tasksynth, *extra, timeout=600):
    return tasksynth("general", "synth", "--category", "travel planning", "--envs", "1", *extra, cwd=tmp_path,
                     timeout=timeout)


def _store_rows(tmp_path, tasksynth, sql):
    result = tasksynth("sql", "--json", sql, cwd=tmp_path, check=True)
    return json.loads(result.stdout)


def test_the_pipeline_keeps_good_tasks_and_discards_each_bad_one_with_its_reason(home, tmp_path, tasksynth,
                                                                              world_server, docker_engine):
    world, server = world_server
    _write_config(tmp_path, server)
    result = _synth(tmp_path, tasksynth)
    assert result.returncode == 0, result.stderr + result.stdout

    env = _store_rows(tmp_path, tasksynth, "select status, tools, dropped_tools, tool_kinds, bundle_path, bundle_id "
                                           "from general_environments")[0]
    assert env["status"] == "built"
    kept_tools = [t["function"]["name"] for t in _decoded(env["tools"])]
    assert kept_tools == ["search_flights", "book_flight"]
    dropped = {d["tool"]: d["reason"] for d in _decoded(env["dropped_tools"])}
    assert dropped == {"no_docstring": "static", "seat_map": "sample_call_failed"}

    tasks = {t["prompt"].split(":")[0]: t for t in _store_rows(
        tmp_path, tasksynth, "select prompt, level, status, reason, detail, c, n, accepted, estimated, pass_at, "
                             "expected_state_hash, bundle_id, task_id from general_tasks")}
    assert tasks["DB task"]["reason"] == "solution_breaks_rules" and "sqlite3" in tasks["DB task"]["detail"]
    assert tasks["Never task"]["reason"] == "solution_fails_verifier"
    assert tasks["Idle task"]["reason"] == "verifier_accepts_nothing"
    assert tasks["Runaway task"]["reason"] == "solution_fails" and "timeout" in tasks["Runaway task"]["detail"]
    good, harder = tasks[GOOD], tasks[HARDER]
    # an independently written second solution reached the same final state: the state is part of the verdict
    assert good["expected_state_hash"] and len(good["expected_state_hash"]) == 64
    for task in (good, harder):
        assert task["status"] == "attempted" and task["accepted"] is True and task["estimated"] is True
        assert (task["c"], task["n"]) == (2, K)
        pass_at = _decoded(task["pass_at"])
        assert pass_at["pass@1"] == pytest.approx(2 / K) and pass_at[f"pass@{K}"] == 1.0
    assert harder["level"] == 2
    # the harder level added `seats_left`: its task has a bundle version of its own, which its solver used
    # (every solved attempt ran all its calls, the new tool's included, and was graded on its own episode)
    assert harder["bundle_id"] != good["bundle_id"] == env["bundle_id"]
    added = _store_rows(tmp_path, tasksynth, "select tool, level, status, bundle_id from general_level_tools")
    assert added == [{"tool": "seats_left", "level": 2, "status": "added", "bundle_id": harder["bundle_id"]}]
    solved = _store_rows(tmp_path, tasksynth, "select a.checks from general_attempts a join general_tasks t using "
                                              "(task_id) where t.level = 2 and a.outcome = 'solved'")
    assert len(solved) == 2 and all(_decoded(a["checks"])["graded_on"] == "episode" for a in solved)
    shown = json.loads(tasksynth("general", "show", harder["task_id"], cwd=tmp_path, check=True).stdout)
    assert shown["tool_added_by_level"]["tool"] == "seats_left" and shown["bundle_id"] == harder["bundle_id"]

    discards = _store_rows(tmp_path, tasksynth, "select stage, reason from discards where source = 'general' "
                                                "order by reason")
    assert {(d["stage"], d["reason"]) for d in discards} == {
        ("general.task.level1", "solution_breaks_rules"), ("general.task.level1", "solution_fails_verifier"),
        ("general.task.level1", "verifier_accepts_nothing"), ("general.task.level1", "solution_fails")}

    report = tasksynth("general", "report", "--json", cwd=tmp_path, check=True)
    funnel = json.loads(report.stdout)
    assert funnel["kept_tasks"] == 2 and funnel["attempts"] == {"graded": 2 * K, "solved": 4, "errors": 0}
    assert funnel["tasks_by_level"]["1"] == {"written": 5, "verified": 1, "attempted": 1, "kept": 1}
    assert funnel["environments"]["tools_added_by_levels"] == 1

    # a kept task graded from its bundle alone, on the command line: the good trajectory and a lazy one
    bundle = Path(env["bundle_path"])
    task_file = tmp_path / "task.json"
    row = _store_rows(tmp_path, tasksynth, f"select verifier, expected_state_hash from general_tasks "
                                           f"where prompt = '{GOOD}'")[0]
    task_file.write_text(json.dumps(row))
    solved = _trajectory(tmp_path / "solved.json", [("search_flights", {"origin": "LIS", "destination": "OSL"}),
                                                    ("book_flight", {"flight_id": 2, "passenger": "Ada Lovelace"})],
                         "2")
    lazy = _trajectory(tmp_path / "lazy.json", [], "2")
    graded = json.loads(tasksynth("general", "grade", str(bundle), str(solved), "--task", str(task_file),
                                  cwd=tmp_path, check=True).stdout)
    assert graded["reward"] == 1.0 and graded["state_matches"] is True
    graded = json.loads(tasksynth("general", "grade", str(bundle), str(lazy), "--task", str(task_file),
                                  cwd=tmp_path, check=True).stdout)
    assert graded["reward"] == 0.0 and graded["checks"]["check_booked_cheapest"] is False


def _decoded(value):
    return json.loads(value) if isinstance(value, str) else value


def _trajectory(path: Path, calls, answer: str) -> Path:
    messages = [{"role": "user", "content": GOOD}]
    for index, (name, arguments) in enumerate(calls):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{index}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{index}", "content": "..."})
    messages.append({"role": "assistant", "content": answer})
    path.write_text(json.dumps(messages))
    return path


def test_sigkill_mid_run_then_rerun_redoes_nothing_and_duplicates_nothing(home, tmp_path, tasksynth, world_server,
                                                                       docker_engine):
    world, server = world_server
    _write_config(tmp_path, server, k=9)
    exe = Path(sys.executable).parent / "tasksynth"
    child = subprocess.Popen([str(exe), "general", "synth", "--category", "travel planning", "--envs", "1"],
                             cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while world.counts["solver"] < 5 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert world.counts["solver"] >= 5, "the run ended before the attempts began"
    before = dict(world.counts)

    result = _synth(tmp_path, tasksynth)
    assert result.returncode == 0, result.stderr + result.stdout
    # the environment and the tasks were finished before the kill: not made again
    for role in ("tool_writer", "task_writer", "verifier_writer"):
        assert world.counts[role] == before[role], role
    counts = _store_rows(tmp_path, tasksynth, "select (select count(*) from general_environments) envs, "
                                              "(select count(*) from general_tasks) tasks, "
                                              "(select count(*) from general_attempts) attempts, "
                                              "(select count(distinct attempt_id) from general_attempts) distinct_attempts")
    assert counts == [{"envs": 1, "tasks": 6, "attempts": 18, "distinct_attempts": 18}]
    # which attempts succeed depends on the order the solver's requests arrive in; c must match what was stored
    tasks = _store_rows(tmp_path, tasksynth, "select t.c, t.n, (select count(*) from general_attempts a where "
                                             "a.task_id = t.task_id and a.outcome = 'solved') solved "
                                             "from general_tasks t where t.status = 'attempted' order by level")
    assert len(tasks) == 2 and all(r["n"] == 9 and r["c"] == r["solved"] >= 1 for r in tasks)

"""The code-interpreter pipeline end to end on the real sandbox kernel, against scripted agents
(scripted_notebook_world.py), in one run killed mid-way and rerun (one run, not two: each costs a few dozen
kernel starts): a task kept with pass@k counted, a shortcut, an ambiguous and a failing task discarded with
their reasons, the funnel and the export, nothing redone and nothing stored twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scripted_notebook_world import GOOD, ROLES, NotebookWorld
from scripted_server import ScriptedServer

pytestmark = pytest.mark.docker
K = 6  # two batches of attempts (4 + 2); the scripted solver is right on every other final answer
SALES = ("region,month,units,price\nnorth,1,10,2.5\nnorth,2,12,2.5\nsouth,1,7,3.0\nsouth,2,9,3.0\n"
         "east,1,4,4.0\neast,2,6,4.0\n")


def _prepare(folder: Path, server: ScriptedServer) -> Path:
    roles = "".join(f'[agents.{role}]\nbase_url = "{server.base_url}"\nmodel = "{role}"\nbackoff_s = 0.01\n'
                    f'timeout_s = 20\nmax_retries = 1\n\n' for role in ROLES)
    (folder / "tasksynth.toml").write_text(f'[docker]\nmemory = "768m"\n\n{roles}')
    tables = folder / "tables"
    tables.mkdir(exist_ok=True)
    (tables / "sales.csv").write_text(SALES)
    return tables


def _decoded(value):
    return json.loads(value) if isinstance(value, str) else value


def _rows(tmp_path, tasksynth, sql):
    return json.loads(tasksynth("sql", "--json", sql, cwd=tmp_path, check=True).stdout)


@pytest.fixture
def world_server(kernel_image_tag, monkeypatch):
    # The shared machine is loaded: Prefect's ephemeral server may take longer than its default 20 s to start.
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    world = NotebookWorld()
    with ScriptedServer(world.answer) as server:
        yield world, server


def test_a_run_killed_mid_attempts_resumes_keeps_the_good_task_and_discards_each_bad_one(home, tmp_path, tasksynth,
                                                                                        world_server):
    """One run, SIGKILLed while the solver's attempts are under way (every task already written and filtered),
    then rerun: nothing finished is redone or stored twice, and the outcome is the whole pipeline's."""
    world, server = world_server
    tables = _prepare(tmp_path, server)
    exe = Path(sys.executable).parent / "tasksynth"
    command = [str(exe), "notebook", "synth", "--data-dir", str(tables), "--tasks", "4", "--k", str(K)]
    child = subprocess.Popen(command, cwd=tmp_path, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while world.final_answers < 5 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert world.final_answers >= 5, "the run ended before the second batch of attempts began"
    before = dict(world.counts)

    result = tasksynth("notebook", "synth", "--data-dir", str(tables), "--tasks", "4", "--k", str(K), cwd=tmp_path,
                       timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    for role in ("notebook_task_writer", "notebook_solution_writer", "notebook_answerer"):
        assert world.counts[role] == before[role], role  # the tasks were finished before the kill: not redone

    tasks = {t["question"]: t for t in _rows(tmp_path, tasksynth, "select question, status, reason, detail, answer, "
                                                                  "second_answer, c, n, pass_at, data_files, "
                                                                  "solution_notebook from notebook_tasks")}
    good = tasks[GOOD]
    attempts = _rows(tmp_path, tasksynth, "select attempt, outcome, cells, notebook from notebook_attempts "
                                          "order by attempt")
    solved = sum(a["outcome"] == "solved" for a in attempts)
    assert [a["attempt"] for a in attempts] == list(range(K))  # each attempt once
    assert {a["outcome"] for a in attempts} == {"solved", "failed"}
    assert all(a["cells"] == 1 and a["notebook"] for a in attempts)
    assert good["status"] == "kept" and _decoded(good["answer"]) == 55.0
    assert _decoded(good["second_answer"]) == 55.0
    assert (good["c"], good["n"]) == (solved, K)
    assert _decoded(good["pass_at"])["pass@1"] == pytest.approx(solved / K)
    assert list(_decoded(good["data_files"])) == ["sales.csv"]
    assert tasks["How many distinct regions are in the table?"]["reason"] == "shortcut"
    assert tasks["What is the average price?"]["reason"] == "ambiguous"
    failing = tasks["What is the median discount?"]
    assert failing["reason"] == "solution_fails" and "discount" in failing["detail"]
    # the writer's exploration ran in the kernel: its tool result is the notebook's output
    assert any("north" in text and "22" in text for text in world.tool_results)

    funnel = json.loads(tasksynth("notebook", "report", "--json", cwd=tmp_path, check=True).stdout)
    assert funnel["tasks_written"] == 4 and funnel["kept"] == 1 and funnel["passed_filters"] == 1
    assert funnel["attempts"] == {"graded": K, "solved": solved, "errors": 0}
    assert funnel["discards"] == {"shortcut": 1, "ambiguous": 1, "solution_fails": 1}

    out = tmp_path / "export"
    exported = tasksynth("export", str(out), "--kind", "code_interpreter", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr + exported.stdout
    import pyarrow.parquet as pq

    rows = [row for path in sorted(out.rglob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert len(rows) == 1
    from verifiers.notebook import grade_answer

    verifier = json.loads(rows[0]["verifier"])
    assert grade_answer(verifier["answer_format"], verifier["answer"], "55.0").correct
    assert not grade_answer(verifier["answer_format"], verifier["answer"], "54.9").correct
    assert json.loads(rows[0]["environment"])["files_sha256"]["sales.csv"] == _decoded(good["data_files"])["sales.csv"]
    assert (out / "code_interpreter" / "files" / "sales" / "sales.csv").read_text() == SALES

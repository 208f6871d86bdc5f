"""Real Prefect flow runs (on the session's home Prefect server), a SIGKILL in the middle, and a rerun that resumes
and marks the killed run crashed, in the store and on the Prefect server."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tasksynth.store import Store

FLOW = Path(__file__).with_name("resumable_flow.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(home, log, count, *, env_extra=None, **kwargs):
    env = {**os.environ, "TASKSYNTH_HOME": str(home), "EXECUTIONS_LOG": str(log),
           "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(FLOW), str(count)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_flow_run_records_every_step_once(home, tmp_path):
    log = tmp_path / "executions.log"
    child = _run(home, log, 6, env_extra={"STEP_DELAY": "0"})
    output, _ = child.communicate(timeout=300)
    assert child.returncode == 0, output
    with Store(home / "tasksynth.duckdb", read_only=True) as store:
        assert store.query("select count(*) as n, sum(square) as s from squares")[0] == {"n": 6, "s": 55}
        run = store.query("select flow, status, summary from flow_runs")[0]
    assert run["flow"] == "squares" and run["status"] == "completed"
    assert run["summary"]["ran"] == 6


def test_sigkill_then_rerun_resumes_without_redoing_or_duplicating(home, tmp_path):
    log = tmp_path / "executions.log"
    child = _run(home, log, 12, env_extra={"STEP_DELAY": "0.5", "TASKSYNTH_FLOWS__MAX_WORKERS": "2"})
    deadline = time.monotonic() + 240
    done = 0
    for line in child.stdout:  # wait until some, not all, steps are recorded
        if line.startswith("done "):
            done = int(line.split()[1])
            if done >= 4:
                break
        assert time.monotonic() < deadline, "flow made no progress"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with Store(home / "tasksynth.duckdb", read_only=True) as store:
        finished_before = {int(r["n"]) for r in store.query("select n from squares")}
        killed = store.query("select run_id, status from flow_runs")[0]
    assert killed["status"] == "running"  # it never finished
    assert 4 <= len(finished_before) < 12
    assert _prefect_state(killed["run_id"]) == "RUNNING"  # the server cannot know (no heartbeats are sent)

    rerun = _run(home, log, 12, env_extra={"STEP_DELAY": "0"})
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    with Store(home / "tasksynth.duckdb", read_only=True) as store:
        rows = store.query("select n from squares order by n")
        assert [r["n"] for r in rows] == list(range(12))  # all there, none twice (n is the primary key)
        summary = store.query("select summary from flow_runs where status = 'completed'")[0]["summary"]
        statuses = sorted(r["status"] for r in store.query("select status from flow_runs"))
    assert statuses == ["completed", "crashed"]  # the killed run is not left `running` forever
    assert _prefect_state(killed["run_id"]) == "CRASHED"  # nor in the Prefect UI
    assert summary["already_done"] == len(finished_before)
    executions = [int(x) for x in log.read_text().split()]
    rerun_executions = executions[len(executions) - summary["ran"]:]
    assert not set(rerun_executions) & finished_before  # finished work was not redone


def _prefect_state(run_id: str) -> str:
    """The state type the session's home Prefect server shows for this flow run."""
    from flows.prefect_server import read_record

    url = read_record(Path(os.environ["PREFECT_HOME"]).resolve()).url
    with urllib.request.urlopen(f"{url}/flow_runs/{run_id}", timeout=30) as response:
        return json.loads(response.read())["state_type"]


def test_dask_task_runner_on_a_local_cluster(home, tmp_path):
    pytest.importorskip("prefect_dask")
    log = tmp_path / "executions.log"
    child = _run(home, log, 4, env_extra={"STEP_DELAY": "0", "TASKSYNTH_FLOWS__TASK_RUNNER": "dask",
                                          "TASKSYNTH_FLOWS__MAX_WORKERS": "2"})
    output, _ = child.communicate(timeout=300)
    assert child.returncode == 0, output
    with Store(home / "tasksynth.duckdb", read_only=True) as store:
        assert store.query("select count(*) as n from squares")[0]["n"] == 4
    # steps ran in Dask worker processes, not in the flow process
    assert len(set(log.read_text().split())) == 4


def test_runs_of_dead_processes_are_marked_crashed_live_ones_are_not(store):
    from flows.runtime import mark_crashed_runs
    from tasksynth.docker.ownership import process_start_time

    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                            text=True, check=True)
    dead_pid = int(exited.stdout)
    me = os.getpid()
    store.insert("flow_runs", [
        {"run_id": "killed", "flow": "code", "status": "running", "pid": dead_pid, "process_started": "1"},
        {"run_id": "pid_reused", "flow": "code", "status": "running", "pid": me, "process_started": "0"},
        {"run_id": "before_pids", "flow": "code", "status": "running", "pid": None, "process_started": None},
        {"run_id": "alive", "flow": "code", "status": "running", "pid": me, "process_started": process_start_time(me)},
        {"run_id": "finished", "flow": "code", "status": "completed", "pid": dead_pid, "process_started": "1"},
    ])
    assert sorted(mark_crashed_runs(store)) == ["before_pids", "killed", "pid_reused"]
    statuses = {r["run_id"]: r["status"] for r in store.query("select run_id, status from flow_runs")}
    assert statuses == {"killed": "crashed", "pid_reused": "crashed", "before_pids": "crashed", "alive": "running",
                        "finished": "completed"}

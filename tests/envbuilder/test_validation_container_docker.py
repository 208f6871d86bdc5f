"""One validation, one container: the 2R runs of a candidate share a container, yet each starts from a fresh
checkout (nothing a run writes or leaves running reaches the next, a `setsid` daemon included) and a timeout
or an OOM kill lands on the run that had it."""

import os
import stat

import pytest

from envbuilder.samples import Sample, SampleCommit, build_repo
from tasksynth.store import open_store

pytestmark = pytest.mark.docker

LEFTOVERS = '''import os
import subprocess
import sys
from pathlib import Path

MARK = "tasksynth-leftover-process"


def test_no_leftovers():
    """Fails in any run that sees what an earlier run of the same validation wrote or left running."""
    places = (Path("/testbed/leftover.txt"), Path.home() / "leftover.txt", Path("/tmp/leftover.txt"),
              Path("/io/leftover.txt"), Path("/dev/shm/leftover.txt"))
    seen = [p for p in places if p.exists()]
    data = Path("/testbed/data.txt").read_text()
    running = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if MARK in cmdline.read_bytes().decode(errors="replace"):
                running.append(cmdline.parent.name)
        except OSError:
            pass
    for path in places:
        path.write_text("written by an earlier run")
    with open("/testbed/data.txt", "a") as handle:
        handle.write("written by a run\\n")
    # one child in the run's process group, one daemon in a session of its own
    subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(300)  # {MARK}"])
    subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(300)  # {MARK}"], start_new_session=True)
    assert seen == [] and data == "original\\n" and running == []
'''


def isolation_repo(tmp_path):
    """A plain module (no packaging) and three fixes: one whose tests check that runs do not leak into each
    other, one whose gold patch makes the tests hang, one whose gold patch makes them blow the memory limit."""
    commits = [
        SampleCommit("init", {"mod_a.py": "def half(x):\n    return x // 2\n",
                              "mod_b.py": "def double(x):\n    return x + x + 1\n",
                              "mod_c.py": "def triple(x):\n    return x * 2\n",
                              "data.txt": "original\n"}),
        SampleCommit("a: true division", {
            "mod_a.py": "def half(x):\n    return x / 2\n",
            "test_mod_a.py": "from mod_a import half\n\n\ndef test_odd():\n    assert half(3) == 1.5\n",
            "test_isolation.py": LEFTOVERS}),
        SampleCommit("b: double without the extra one", {
            "mod_b.py": "import time\n\n\ndef double(x):\n    time.sleep(600)\n    return x + x\n",
            "test_mod_b.py": "from mod_b import double\n\n\ndef test_double():\n    assert double(2) == 4\n"}),
        SampleCommit("c: triple", {
            "mod_c.py": "def triple(x):\n    blob = 'x' * (900 * 1024 * 1024)\n    return x * 3 if blob else 0\n",
            "test_mod_c.py": "from mod_c import triple\n\n\ndef test_triple():\n    assert triple(2) == 6\n"}),
    ]
    return build_repo(Sample("isolation", "tasksynth/isolation", commits), tmp_path / "isolation")


def _counting_docker(directory, real_docker, calls):
    """A `docker` that appends each container it creates (`docker run` or `docker create`) to `calls`, then runs
    the real one."""
    directory.mkdir()
    shim = directory / "docker"
    shim.write_text(f"""#!/bin/sh
if [ "$1" = run ] || [ "$1" = create ]; then echo "$*" >>{calls}; fi
exec {real_docker} "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return directory


def test_runs_come_in_a_random_order_numbered_within_their_phase():
    import random

    from envbuilder.containers import PhasePlan, run_order

    phases = [PhasePlan("before", ("test.patch",)), PhasePlan("after", ("test.patch", "gold.patch"))]
    orders = set()
    for seed in range(200):
        order = run_order(phases, 2, random.Random(seed))
        assert sorted((r.phase, r.attempt) for r in order) == [("after", 0), ("after", 1), ("before", 0),
                                                               ("before", 1)]
        for phase in ("before", "after"):  # numbered in the order they run
            assert [r.attempt for r in order if r.phase == phase] == [0, 1]
        assert all(r.patches == (("test.patch",) if r.phase == "before" else ("test.patch", "gold.patch"))
                   for r in order)
        orders.add(tuple(r.phase for r in order))
    assert len(orders) == 6  # every arrangement of two before and two after runs happens


def test_runs_share_one_container_but_not_their_state(tmp_path, flow_config, pipeline, monkeypatch):
    import shutil

    config = flow_config(DOCKER__TEST_TIMEOUT_S="6", DOCKER__MEMORY="256m")
    repo = isolation_repo(tmp_path)
    calls = tmp_path / "docker-runs.txt"
    monkeypatch.setenv("PATH", f"{_counting_docker(tmp_path / 'shim', shutil.which('docker'), calls)}"
                               f"{os.pathsep}{os.environ['PATH']}")
    summary = pipeline(config, git=[str(repo.path)], repeat=2)
    assert summary["validate"]["ran"] == 3 and summary["validate"]["failed"] == 0, summary

    with open_store(config) as store:
        tasks = {r["what"].split(":")[0]: r for r in store.query(
            "select c.problem_statement as what, t.* from code_tasks t join candidates c using (instance_id)")}
        runs = store.query("select c.problem_statement as what, r.phase, r.attempt, r.status, r.seconds, r.junit, "
                           "r.log, r.exit_code from test_runs r join candidates c using (instance_id) "
                           "order by what, r.phase desc, r.attempt")
        logs = {(r["what"].split(":")[0], r["phase"], r["attempt"]): store.get_text(r["log"]) if r["log"] else ""
                for r in runs}
    by = {}
    for r in runs:
        by.setdefault(r["what"].split(":")[0], []).append((r["phase"], r["attempt"], r["status"]))

    # one container per validation (not one per run)
    started = [line for line in calls.read_text().splitlines() if "--name tasksynth-run-" in line]
    assert len(started) == 3

    # every run of "a" saw a fresh checkout, $HOME and /tmp, and no process of the run before
    a = tasks["a"]
    assert a["verdict"] == "valid", a["detail"]
    assert a["fail_to_pass"] == ["test_mod_a.py::test_odd"] and a["flaky"] == []
    assert a["pass_to_pass"] == ["test_isolation.py::test_no_leftovers"]
    assert by["a"] == [("before", 0, "ok"), ("before", 1, "ok"), ("after", 0, "ok"), ("after", 1, "ok")]
    a_runs = [r for r in runs if r["what"].startswith("a:")]
    assert all(r["junit"] and r["exit_code"] in (0, 1) and r["seconds"] > 0 for r in a_runs)
    assert [r["exit_code"] for r in a_runs] == [1, 1, 0, 0]

    # the runs happen in a random order; the hang after the gold patch is the first after run's timeout, within
    # the per-run limit, and ends the validation (the before runs that came first stay ok)
    b = tasks["b"]
    assert b["reason"] == "timeout" and "after phase, run 1" in b["detail"] and "longer than 6s" in b["detail"]
    assert ("after", 0, "timeout") in by["b"] and all(s == "ok" for p, _, s in by["b"] if p == "before")
    assert len(by["b"]) <= 3
    hung = next(r for r in runs if r["what"].startswith("b:") and r["status"] == "timeout")
    assert 6 <= hung["seconds"] < 6 + 10 + 5
    assert "before phase" not in logs[("b", "after", 0)]

    # the OOM kill is the after run's that had it; the before runs stay ok
    c = tasks["c"]
    assert c["reason"] == "oom" and "after phase, run 1" in c["detail"] and "256m" in c["detail"]
    assert ("after", 0, "oom") in by["c"] and all(s == "ok" for p, _, s in by["c"] if p == "before")

    from tasksynth.docker.engine import docker

    assert "tasksynth-run-" not in docker("ps", "-a", "--format", "{{.Names}}").stdout

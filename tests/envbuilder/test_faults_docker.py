"""Bad input and faults: each gives a clear reason on its candidate, the rest of the batch goes on, nothing
stored is lost, and a rerun resumes. Real containers with small limits (memory, wall clock)."""

import json
import os
import stat

import pytest

from envbuilder.samples import Sample, SampleCommit, build_repo, load_sample
from tasksynth.store import open_store

pytestmark = pytest.mark.docker

OPS_FIX = load_sample("minicalc").commits[1].files["minicalc/ops.py"]  # the div fix: a real gold patch


def _faulty_commit(name, test_source, extra=None):
    return SampleCommit(f"{name}: fix div", {"minicalc/ops.py": OPS_FIX + f"# {name}\n",
                                             f"tests/test_{name}.py": test_source, **(extra or {})})


def faults_repo(tmp_path):
    """minicalc's first commit, then one commit per fault. Each fault's test file stays in later commits but is
    not run there (only touched tests run); the JUnit-breaking conftest comes last among the runs."""
    conftest = ("def pytest_unconfigure(config):\n    path = getattr(config.option, 'xmlpath', None)\n"
                "    if path:\n        open(path, 'w').write('<testsuites><testsuite name=\"pytest\"><testcase')\n")
    commits = [load_sample("minicalc").commits[0],
               _faulty_commit("hang", "import time\n\ndef test_hang():\n    time.sleep(600)\n"),
               _faulty_commit("oom", "def test_oom():\n    blob = 'x' * (900 * 1024 * 1024)\n    assert blob\n"),
               _faulty_commit("segfault", "import os, signal\n\ndef test_segfault():\n"
                                          "    os.kill(os.getpid(), signal.SIGSEGV)\n"),
               _faulty_commit("junit", "def test_ok():\n    pass\n", {"tests/conftest.py": conftest}),
               # the next candidate's base commit asks for a package that does not exist: its install fails
               SampleCommit("require a package", {"requirements.txt": "tasksynth-no-such-package-anywhere==0.0.1\n"}),
               _faulty_commit("install", "def test_x():\n    pass\n")]
    return build_repo(Sample("faults", "tasksynth/faults", commits), tmp_path / "repos" / "tasksynth" / "faults")


def test_each_fault_has_its_reason_and_the_batch_goes_on(tmp_path, flow_config, pipeline):
    config = flow_config(DOCKER__TEST_TIMEOUT_S="8", DOCKER__MEMORY="256m")
    repo = faults_repo(tmp_path)
    # SWE-bench instances on the same repository: a test patch that does not apply, a patch that writes outside
    fix = json.loads(_swebench_sample().read_text().splitlines()[0])
    outside = fix["patch"].replace("minicalc/ops.py", "../outside.py")
    lines = [{**fix, "instance_id": "swebench-test-patch", "repo": "tasksynth/faults", "base_commit": repo.shas[0],
              "test_patch": fix["test_patch"].replace("tests/test_ops.py", "tests/test_gone.py")},
             {**fix, "instance_id": "swebench-outside", "repo": "tasksynth/faults", "base_commit": repo.shas[0],
              "patch": outside}]
    jsonl = tmp_path / "faults.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))

    summary = pipeline(config, git=[str(repo.path)], swebench=[str(jsonl)], repos_dir=str(tmp_path / "repos"))
    assert summary["build"]["failed"] == 0 and summary["validate"]["failed"] == 0, summary
    with open_store(config) as store:
        rows = store.query("select c.problem_statement as what, c.instance_id, c.source, t.reason, t.detail "
                           "from code_tasks t "
                           "join candidates c using (instance_id)")
        runs = store.query("select instance_id, status, count(*) as n from test_runs group by all")
    reasons = {r["instance_id"] if r["source"] == "swebench" else r["what"].split(":")[0]:
               (r["reason"], r["detail"]) for r in rows}
    assert len(reasons) == 7
    assert reasons["hang"][0] == "timeout" and "longer than 8s" in reasons["hang"][1]
    assert reasons["oom"][0] == "oom" and "256m" in reasons["oom"][1]
    assert reasons["segfault"][0] == "tests_crashed" and "signal 11" in reasons["segfault"][1]
    assert reasons["junit"][0] == "tests_crashed" and "malformed JUnit XML" in reasons["junit"][1]
    assert reasons["install"][0] == "install_failed" and "tasksynth-no-such-package-anywhere" in reasons["install"][1]
    assert reasons["swebench-test-patch"][0] == "patch_does_not_apply"
    assert "the test patch does not apply" in reasons["swebench-test-patch"][1]
    assert reasons["swebench-outside"][0] == "patch_outside_repo" and "../outside.py" in reasons["swebench-outside"][1]
    # a run that cannot be graded is not repeated: one run each, none for the failed build
    assert {(r["instance_id"], r["status"]): r["n"] for r in runs if r["status"] != "ok"} == {
        (i, s): 1 for i, s in [(_id(rows, "hang"), "timeout"), (_id(rows, "oom"), "oom"),
                               (_id(rows, "segfault"), "tests_crashed"), (_id(rows, "junit"), "junit_malformed"),
                               ("swebench-test-patch", "patch_does_not_apply")]}
    # no container is left behind
    from tasksynth.docker.engine import docker

    assert "tasksynth-run-" not in docker("ps", "-a", "--format", "{{.Names}}").stdout


def _id(rows, what):
    return next(r["instance_id"] for r in rows if r["what"].startswith(f"{what}:"))


def _swebench_sample():
    from envbuilder.samples import swebench_sample_path

    return swebench_sample_path()


def _docker_shim(directory, real_docker):
    """A `docker` that works for builds and inspection but reports the engine gone for every container it is
    asked to start (`docker run`, `docker create`): the engine dying after the batch started."""
    directory.mkdir()
    shim = directory / "docker"
    shim.write_text(f"""#!/bin/sh
if [ "$1" = run ] || [ "$1" = create ]; then
  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
  exit 1
fi
exec {real_docker} "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return directory


def test_engine_dying_mid_run_loses_nothing_and_a_rerun_resumes(tmp_path, flow_config, pipeline, monkeypatch):
    import shutil

    config = flow_config()
    sample = load_sample("minicalc")
    repo = build_repo(Sample("minicalc", "tasksynth/minicalc", sample.commits[:3]), tmp_path / "minicalc")
    real = shutil.which("docker")
    monkeypatch.setenv("PATH", f"{_docker_shim(tmp_path / 'shim', real)}{os.pathsep}{os.environ['PATH']}")
    first = pipeline(config, git=[str(repo.path)])
    assert first["build"]["ran"] == 1 and first["validate"]["failed"] == 1
    assert "DockerUnavailable" in first["validate"]["errors"][0] and "stopped answering" in first["validate"]["errors"][0]
    with open_store(config) as store:
        assert store.query("select count(*) as n from code_tasks")[0]["n"] == 0  # no verdict from a dead engine
        assert store.query("select status from code_instances")[0]["status"] == "built"  # the build is kept

    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    second = pipeline(config, git=[str(repo.path)])
    assert second["mine"]["already_done"] == 1 and second["build"]["already_done"] == 1
    assert second["validate"]["ran"] == 1 and second["verdicts"]["valid"] == 1


def test_a_full_disk_during_a_build_is_retried_by_the_rerun(tmp_path, flow_config, pipeline):
    config = flow_config()
    sample = Sample("plain", "tasksynth/plain", [
        SampleCommit("init", {"calc.py": "def half(x):\n    return x // 2\n",
                              "test_calc.py": "from calc import half\n\ndef test_half():\n    assert half(4) == 2\n"}),
        SampleCommit("half: true division", {"calc.py": "def half(x):\n    return x / 2\n",
                                             "test_calc.py": "from calc import half\n\ndef test_half():\n"
                                                             "    assert half(4) == 2\n\ndef test_odd():\n"
                                                             "    assert half(3) == 1.5\n"}),
    ])
    repo = build_repo(sample, tmp_path / "plain")
    recipes = config.home_path / "recipes"
    recipes.mkdir(parents=True)
    # a user recipe whose install step hits a full disk (the message pip prints when it does)
    (recipes / "plain.json").write_text(json.dumps({"python": "3.11", "env_steps": [
        "echo 'ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device' >&2 && exit 1"]}))
    first = pipeline(config, git=[str(repo.path)])
    assert first["build"]["failed"] == 1 and "DiskFull" in first["build"]["errors"][0]
    with open_store(config) as store:
        assert store.query("select count(*) as n from code_instances")[0]["n"] == 0

    (recipes / "plain.json").unlink()  # space freed: the heuristic recipe (a plain module: PYTHONPATH) builds
    second = pipeline(config, git=[str(repo.path)])
    assert second["build"]["ran"] == 1 and second["verdicts"]["valid"] == 1
    with open_store(config) as store:
        env = store.query("select recipe, recipe_origin from environments where status = 'built'")[0]
        task = store.query("select fail_to_pass, pass_to_pass from code_tasks")[0]
    assert env["recipe_origin"] == "heuristic" and env["recipe"]["env"] == {"PYTHONPATH": "/testbed"}
    assert task == {"fail_to_pass": ["test_calc.py::test_odd"], "pass_to_pass": ["test_calc.py::test_half"]}

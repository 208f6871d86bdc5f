"""The shipped sample repository, end to end through the `tasksynth code` commands a user types: real git, real
Docker images in layers, real test runs, the DuckDB store. One test, because each step builds on the last."""

import json

import pytest

from envbuilder.samples import load_sample, swebench_sample_path
from tasksynth.docker.engine import docker
from tasksynth.store import Store

pytestmark = pytest.mark.docker

SWEBENCH_VERDICTS = {"tasksynth__minicalc-1": ("valid", None, "exact"),
                     "tasksynth__minicalc-2": ("valid", None, "subset"),
                     "tasksynth__minicalc-3": ("rejected", "patch_does_not_apply", "disagree")}


def query(home, sql, params=None):
    with Store(home / "tasksynth.duckdb", read_only=True) as store:
        return store.query(sql, params)


def test_sample_repository_mine_build_validate_export(home, tmp_path, tasksynth, base_311):
    repos = home / "repos" / "samples"
    made = tasksynth("code", "sample", cwd=tmp_path, check=True)
    assert "built tasksynth/minicalc" in made.stdout
    repo = repos / "tasksynth" / "minicalc"

    mined = tasksynth("code", "mine", "--git", str(repo), "--swebench", str(swebench_sample_path()),
                      "--repos-dir", str(repos), cwd=tmp_path, check=True)
    assert "new candidates: 8; new discards: 3" in mined.stdout
    again = tasksynth("code", "mine", "--git", str(repo), cwd=tmp_path, check=True)
    assert "new candidates: 0" in again.stdout and "1 unchanged since the last run" in again.stdout

    built = tasksynth("code", "build", cwd=tmp_path, check=True, timeout=900)
    assert "4 valid of 8 candidate(s)" in built.stdout, built.stdout + built.stderr
    assert "agreement with imported FAIL_TO_PASS/PASS_TO_PASS: disagree 1, exact 1, subset 1" in built.stdout

    # every commit of the sample got the verdict its spec expects
    expected = {c.message.splitlines()[0]: c.expect for c in load_sample("minicalc").commits}
    rows = query(home, "select c.problem_statement, c.source, c.instance_id, t.verdict, t.reason, t.agreement, "
                       "t.fail_to_pass, t.pass_to_fail, t.flaky from code_tasks t join candidates c using (instance_id)")
    for row in rows:
        if row["source"] == "git":
            expect = expected[row["problem_statement"].splitlines()[0]]
            assert (row["reason"] or row["verdict"]) == expect, row
        else:
            assert (row["verdict"], row["reason"], row["agreement"]) == SWEBENCH_VERDICTS[row["instance_id"]]
    by_reason = {r["reason"]: r for r in rows}
    assert by_reason["pass_to_fail"]["pass_to_fail"] == ["tests/test_text.py::test_slugify_lowercases"]
    # the simulated race: each run passes a different case, so two cases flipped (1 in 500 runs: the same one)
    flaky = by_reason["flaky"]["flaky"]
    assert len(flaky) == 2 and all(t.startswith("tests/test_stats.py::test_mean[") for t in flaky), flaky

    # layers: one environment shared by all eight, one instance per base commit, runs as the non-root user
    envs = query(home, "select env_id, status, recipe, recipe_origin, build_log from environments")
    assert len(envs) == 1 and envs[0]["status"] == "built" and envs[0]["recipe_origin"] == "heuristic"
    assert query(home, "select count(distinct env_id) as n from code_instances")[0]["n"] == 1
    assert query(home, "select count(distinct image) as n from code_instances")[0]["n"] == 5  # 5 base commits
    image = query(home, "select image from code_tasks where instance_id = 'tasksynth__minicalc-1'")[0]["image"]
    inside = docker("run", "--rm", "--network", "none", image, "bash", "-c",
                    "id -un; stat -c %U /testbed/minicalc/ops.py; git -C /testbed log --format=%s | wc -l; "
                    "python -c 'import minicalc, sys; print(minicalc.__file__, sys.version_info[:2])'",
                    timeout=120).stdout.split()
    assert inside[:3] == ["tester", "tester", "1"]  # non-root, owns the checkout, no history to find the fix in
    assert inside[3] == "/testbed/minicalc/__init__.py" and inside[4:] == ["(3,", "11)"]
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout)
    assert labels["org.tasksynth.managed"] == "true" and labels["org.tasksynth.layer"] == "instance"
    runs = query(home, "select status, count(*) as n from test_runs group by status")
    statuses = {r["status"]: r["n"] for r in runs}
    # 7 x 4 ok, and the candidate whose gold patch does not apply stops at its first "after" run, which comes
    # after 0-2 of its "before" runs (runs come in a random order)
    assert statuses["patch_does_not_apply"] == 1 and 28 <= statuses["ok"] <= 30, statuses
    assert query(home, "select count(*) as n from test_results")[0]["n"] > 50

    # a rerun finds everything done and redoes nothing
    rerun = tasksynth("code", "build", cwd=tmp_path, check=True)
    assert "built 0 (already built 8); validated 0 (already validated 8)" in rerun.stdout

    # validating again with one run per phase cannot see the flake: the verdict changes, and is reported
    flaky_id = by_reason["flaky"]["instance_id"]
    revalidated = tasksynth("code", "validate", flaky_id, "--repeat", "1", cwd=tmp_path, check=True)
    assert f"{flaky_id}: rejected (flaky) -> valid" in revalidated.stdout
    assert query(home, "select count(*) as n from validations where instance_id = ?", [flaky_id])[0]["n"] == 2

    shown = tasksynth("code", "show", "tasksynth__minicalc-3", cwd=tmp_path, check=True)
    assert "the gold patch does not apply" in shown.stdout and "python -m pip install" in shown.stdout

    # the SWE-bench instances round-trip: exported in the same format, with our lists where we agree exactly
    out = tmp_path / "export.jsonl"
    tasksynth("code", "export-swebench", str(out), cwd=tmp_path, check=True)
    exported = {row["instance_id"]: row for row in map(json.loads, out.read_text().splitlines())}
    for line in swebench_sample_path().read_text().splitlines():
        original = json.loads(line)
        mine = exported[original["instance_id"]]
        for key in ("repo", "base_commit", "patch", "test_patch", "problem_statement", "version"):
            assert mine[key] == original[key]
    first = json.loads(swebench_sample_path().read_text().splitlines()[0])
    assert exported["tasksynth__minicalc-1"]["FAIL_TO_PASS"] == json.loads(first["FAIL_TO_PASS"])
    assert exported["tasksynth__minicalc-1"]["PASS_TO_PASS"] == sorted(json.loads(first["PASS_TO_PASS"]))

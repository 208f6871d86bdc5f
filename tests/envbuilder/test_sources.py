"""Mining candidates from a real git history and importing SWE-bench files (no Docker)."""

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from envbuilder.records import record_mined
from envbuilder.repos import DIFF_OPTIONS, FIXED_IDENTITY, git
from envbuilder.samples import Sample, SampleCommit, build_repo, build_sample, swebench_sample_path
from envbuilder.sources.candidate import Candidate
from envbuilder.sources.git_history import Limits, judge_change, mine_history, read_changes
from envbuilder.sources.mining import SourceRequest, mine, request_key
from envbuilder.sources.swebench import import_instances, to_swebench


@pytest.fixture(scope="module")
def minicalc(tmp_path_factory):
    return build_sample("minicalc", tmp_path_factory.mktemp("repos"))


def test_history_gives_candidates_and_discards_with_reasons(minicalc, tmp_path):
    result = mine_history(str(minicalc.path), tmp_path)
    expected = {sha: e for sha, e in minicalc.expected.items()}
    kept = {c.head_commit for c in result.candidates}
    assert kept == {sha for sha, e in expected.items() if not e.startswith("discard:")}
    assert {d.item: f"discard:{d.reason}" for d in result.discards} == \
        {sha: e for sha, e in expected.items() if e.startswith("discard:")}
    fix = next(c for c in result.candidates if c.head_commit == minicalc.shas[1])
    assert fix.base_commit == minicalc.shas[0]
    assert "minicalc/ops.py" in fix.patch and "tests/" not in fix.patch
    assert "tests/test_ops.py" in fix.test_patch and "minicalc/ops.py" not in fix.test_patch
    assert fix.problem_statement.startswith("Fix div: return the true quotient")
    assert fix.repo == "minicalc" and fix.source == "git" and fix.language == "python"


def test_mining_twice_adds_nothing(minicalc, store, config):
    request = SourceRequest("git", str(minicalc.path))
    first = record_mined(store, mine(request, config), "run-1")
    again = record_mined(store, mine(request, config), "run-2")
    assert first == {"candidates": 5, "discards": 3}
    assert again == {"candidates": 0, "discards": 0}
    assert store.query("select count(*) as n from candidates")[0]["n"] == 5


def test_the_mine_step_key_follows_the_repository_state(tmp_path, config):
    sample = Sample("keys", "t/keys", [SampleCommit("init", {"a.py": "A = 1\n"})])
    repo = build_repo(sample, tmp_path / "keys").path
    request = SourceRequest("git", str(repo))
    before = request_key(request, config)
    assert request_key(SourceRequest("git", str(repo)), config) == before  # unchanged: the flow skips it
    (repo / "a.py").write_text("A = 2\n")
    _git(repo, "commit", "-qam", "change")
    assert request_key(request, config) != before  # a new commit: mined again (old candidates are kept)


def _git(repo, *args, date="2024-02-01T00:00:00+00:00"):
    env = {**FIXED_IDENTITY, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args], check=True, capture_output=True,
                   env=env)


def test_a_merged_branch_is_one_candidate_and_its_commits_are_not_mined(tmp_path):
    base = Sample("merges", "t/merges", [
        SampleCommit("init", {"pkg/a.py": "A = 1\n", "tests/test_a.py": "def test_a():\n    pass\n"}),
    ])
    repo = build_repo(base, tmp_path / "merges").path
    _git(repo, "checkout", "-q", "-b", "feature")
    (repo / "pkg/a.py").write_text("A = 2\n")
    _git(repo, "commit", "-qam", "change code")
    (repo / "tests/test_a.py").write_text("def test_a():\n    assert 2\n")
    _git(repo, "commit", "-qam", "change tests")
    _git(repo, "checkout", "-q", "main")
    _git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #7: make A two", "feature")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "empty commit")
    result = mine_history(str(repo), tmp_path)
    assert len(result.candidates) == 1
    merged = result.candidates[0]
    assert merged.problem_statement.startswith("Merge pull request #7") and merged.metadata["merge"] is True
    assert "A = 2" in merged.patch and "assert 2" in merged.test_patch
    assert {d.reason for d in result.discards} == {"root_commit", "empty_change"}


def test_size_limits_and_binary_only_changes_are_discarded(tmp_path):
    sample = Sample("limits", "t/limits", [
        SampleCommit("init", {"pkg/a.py": "A = 1\n", "tests/test_a.py": "def test_a():\n    pass\n"}),
        SampleCommit("big", {"pkg/a.py": "A = 1\n" + "# filler\n" * 5000, "tests/test_a.py": "def test_a():\n    assert 1\n"}),
    ])
    repo = build_repo(sample, tmp_path / "limits").path
    (repo / "logo.png").write_bytes(bytes(range(256)) * 4)
    _git(repo, "add", "logo.png")
    _git(repo, "commit", "-qm", "add a logo")
    reasons = {d.reason for d in mine_history(str(repo), tmp_path, limits=Limits(max_patch_bytes=20_000)).discards}
    assert reasons == {"root_commit", "too_large", "binary_only"}


def test_an_unreadable_source_is_a_discard_not_a_crash(tmp_path, config):
    result = mine(SourceRequest("git", str(tmp_path / "nowhere")), config)
    assert result.candidates == [] and result.discards[0].reason == "source_unavailable"
    assert "no repository" in result.discards[0].detail


def test_swebench_sample_imports_with_its_lists(minicalc, tmp_path):
    repos_dir = minicalc.path.parents[1]
    result = import_instances(swebench_sample_path(), tmp_path, repos_dir=repos_dir, clone=False)
    assert [c.instance_id for c in result.candidates] == ["tasksynth__minicalc-1", "tasksynth__minicalc-2",
                                                          "tasksynth__minicalc-3"]
    first = result.candidates[0]
    assert first.base_commit == minicalc.shas[0]  # the shipped file names SHAs the builder reproduces
    assert first.imported_fail_to_pass == ["tests/test_ops.py::test_div_fraction"]  # decoded from a JSON string
    assert first.repo_url == str(minicalc.path.resolve()) and first.source == "swebench"


def test_swebench_bad_lines_are_discards_with_reasons(minicalc, tmp_path):
    good = json.loads(swebench_sample_path().read_text().splitlines()[0])
    lines = [
        "{not json",
        json.dumps({**good, "instance_id": "no-patch", "patch": ""}),
        json.dumps({**good, "instance_id": "other-repo", "repo": "someone/else"}),
        json.dumps({**good, "instance_id": "lost-commit", "base_commit": "0" * 40}),
        json.dumps({**good, "instance_id": "bad-list", "FAIL_TO_PASS": "[not json"}),
        json.dumps(good),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = import_instances(path, tmp_path, repos_dir=minicalc.path.parents[1], clone=False)
    assert [c.instance_id for c in result.candidates] == [good["instance_id"]]
    assert {d.item: d.reason for d in result.discards} == {
        "mixed.jsonl:1": "malformed_instance", "no-patch": "malformed_instance", "other-repo": "repo_unavailable",
        "lost-commit": "base_commit_missing", "bad-list": "malformed_instance"}


def test_swebench_export_round_trips_the_instance_fields(minicalc, tmp_path, store):
    result = import_instances(swebench_sample_path(), tmp_path, repos_dir=minicalc.path.parents[1], clone=False)
    record_mined(store, result, None)
    original = [json.loads(line) for line in swebench_sample_path().read_text().splitlines()]
    rows = store.query("select * from candidates order by instance_id")
    exported = [to_swebench(row, None) for row in rows]
    for before, after in zip(original, exported):
        for key in ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement", "version",
                    "environment_setup_commit", "hints_text"):
            assert after[key] == before[key], key
        f2p = before["FAIL_TO_PASS"]
        assert after["FAIL_TO_PASS"] == (json.loads(f2p) if isinstance(f2p, str) else f2p)


def test_streaming_reader_gives_each_commit_the_diff_git_diff_gives(tmp_path):
    """The two streaming passes agree with one `git diff BASE SHA` per commit (the previous reader) on a history
    with merges, renames, deletions, binary files, empty commits and non-UTF-8 bytes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from git_history_generator import generate_history

    repo = tmp_path / "history"
    generate_history(repo, first_parent_commits=120, seed=3)
    changes = list(read_changes(repo))
    assert len(changes) == 120
    assert any(len(c.parents) == 2 for c in changes)
    assert any("rename" in c.message.lower() for c in changes) and any("Drop " in c.message for c in changes)
    per_commit = [dataclasses.replace(c, diff=git(repo, "diff", *DIFF_OPTIONS, c.parents[0], c.sha) if c.parents
                                      else "") for c in changes]
    for streamed, separate in zip(changes[1:], per_commit[1:]):
        assert streamed.diff == separate.diff, streamed.message
    mined = mine_history(str(repo), tmp_path)
    before = [judge_change(c, "history", str(repo), Limits()) for c in per_commit]
    assert mined.candidates == [j for j in before if isinstance(j, Candidate)]
    assert mined.discards == [j for j in before if not isinstance(j, Candidate)]
    reasons = Counter(d.reason for d in mined.discards)
    assert set(reasons) >= {"root_commit", "empty_change", "binary_only", "docs_only", "no_test_changes"}
    assert len(mined.candidates) + len(mined.discards) == 120
    newest = mine_history(str(repo), tmp_path, max_commits=10)
    assert [c.source_ref for c in newest.candidates] == [c.sha for c in changes[-10:]
                                                        if c.sha in {m.source_ref for m in newest.candidates}]
    assert len(newest.candidates) + len(newest.discards) == 10
